// A local stand-in for the one part of Supabase's Data API (PostgREST) the functions use:
// `POST /rest/v1/rpc/<fn>` with the named arguments as a JSON object, answered with the
// function's JSON result, or with PostgREST's error body `{code, message, details, hint}`
// and the HTTP status PostgREST gives that SQLSTATE (docs.postgrest.org, "Errors"). Calls
// go through the project's Db port, so PGlite or PostgreSQL sits behind it, and supabase-js
// in a packaged function talks to it exactly as to a Supabase project. Only node:http, bound
// to 127.0.0.1 on a random port.
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import { DbError, type Db } from '../lib/db/port.ts';
import { errorText } from '../lib/log.ts';

export interface PostgrestStandin {
  url: string; // SUPABASE_URL for the functions
  /** Every rpc call answered, in order. */
  calls: { fn: string; status: number }[];
  close(): Promise<void>;
}

interface PostgrestError { code: string; message: string; details: string | null; hint: string | null }

const RPC_PATH = /^\/rest\/v1\/rpc\/([a-z_][a-z0-9_]*)$/;
const MAX_BODY = 1024 * 1024;

/** PostgREST's SQLSTATE → HTTP status table; anything not listed is 400. */
export function statusForSqlState(code: string | undefined): number {
  if (!code) return 503; // no SQLSTATE: the database was not reached (PostgREST's PGRST000)
  const exact: Record<string, number> = { '23503': 409, '23505': 409, '25006': 405, '42883': 404, '42P01': 404, '42501': 403, P0001: 400 };
  if (code in exact) return exact[code]!;
  const byClass: [string, number][] = [
    ['08', 503], ['09', 500], ['0L', 403], ['0P', 403], ['25', 500], ['28', 403], ['2D', 500], ['38', 500], ['39', 500],
    ['3B', 500], ['40', 500], ['53', 503], ['54', 413], ['55', 500], ['57', 500], ['58', 500], ['F0', 500], ['HV', 500],
    ['P0', 500], ['XX', 500],
  ];
  return byClass.find(([prefix]) => code.startsWith(prefix))?.[1] ?? 400;
}

export async function startPostgrestStandin(db: Db): Promise<PostgrestStandin> {
  const calls: PostgrestStandin['calls'] = [];
  const server = http.createServer((req, res) => {
    const answer = (status: number, body: unknown) => {
      res.writeHead(status, { 'content-type': 'application/json; charset=utf-8' });
      res.end(JSON.stringify(body));
    };
    const fail = (status: number, error: PostgrestError) => answer(status, error);
    const chunks: Buffer[] = [];
    let size = 0;
    req.on('data', (chunk: Buffer) => {
      size += chunk.length;
      if (size <= MAX_BODY) chunks.push(chunk);
    });
    req.on('end', async () => {
      const path = new URL(req.url ?? '/', 'http://localhost').pathname;
      const fn = RPC_PATH.exec(path)?.[1];
      // Supabase's gateway refuses a request without the project's key before PostgREST sees it.
      if (!req.headers.apikey) return answer(401, { message: 'No API key found in request', hint: 'No `apikey` request header or url param was found.' });
      if (!fn) return fail(404, { code: 'PGRST125', message: 'Invalid path specified in request URL', details: null, hint: `this stand-in serves POST /rest/v1/rpc/<function> only, not ${path}` });
      if (req.method !== 'POST') return fail(405, { code: 'PGRST101', message: 'Only POST is supported by this stand-in for function calls', details: null, hint: null });
      const profile = req.headers['content-profile'];
      if (profile && profile !== 'public') return fail(406, { code: 'PGRST106', message: 'Invalid schema: ' + profile, details: null, hint: 'Only the following schemas are exposed: public' });
      if (size > MAX_BODY) return fail(413, { code: 'PGRST102', message: 'Request body too large', details: null, hint: null });

      let args: unknown;
      try {
        const text = Buffer.concat(chunks).toString('utf8');
        args = text === '' ? {} : JSON.parse(text);
      } catch {
        return fail(400, { code: 'PGRST102', message: 'Empty or invalid json', details: null, hint: null });
      }
      if (typeof args !== 'object' || args === null || Array.isArray(args)) {
        return fail(400, { code: 'PGRST102', message: 'Function arguments must be a JSON object of named arguments', details: null, hint: null });
      }

      try {
        const result = await db.rpc(fn, args as Record<string, unknown>);
        calls.push({ fn, status: 200 });
        answer(200, result ?? null);
      } catch (err) {
        const code = err instanceof DbError ? err.code : undefined;
        const status = statusForSqlState(code);
        calls.push({ fn, status });
        // DbError prefixes "database call <fn> failed: "; PostgREST forwards PostgreSQL's own message.
        const message = errorText(err).replace(/^database call \S+ failed: /, '');
        fail(status, { code: code ?? 'PGRST000', message, details: null, hint: null });
      }
    });
  });
  await new Promise<void>((resolve, reject) => server.once('error', reject).listen(0, '127.0.0.1', resolve));
  const { port } = server.address() as AddressInfo;
  return {
    url: `http://127.0.0.1:${port}`,
    calls,
    close: () => new Promise<void>((resolve) => {
      server.close(() => resolve());
      server.closeAllConnections();
    }),
  };
}
