// Serves the real Netlify function modules on localhost, routed by their `config.path`
// as Netlify routes them. Scheduled functions can be triggered with POST /.netlify/functions/<name>.
// Each invocation's wall time is held against Netlify's time limit for its kind (a ⚠️
// line when over) and reported to `onRun`, which the benchmark sums as function time.
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import { readdirSync } from 'node:fs';
import { basename, dirname, join } from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';
import { errorText } from '../lib/log.ts';

type Handler = (req: Request, context: unknown) => Promise<Response> | Response;
interface FunctionModule { name: string; handler: Handler; paths: string[]; schedule?: string }

export type FunctionKind = 'synchronous' | 'background' | 'scheduled';
/** Netlify stops a function after this long (docs.netlify.com/build/functions/configuration). */
export const NETLIFY_TIME_LIMIT_MS: Record<FunctionKind, number> = { synchronous: 60_000, background: 15 * 60_000, scheduled: 30_000 };

/** One invocation as Netlify would bill it: the handler's wall time, start to settle. */
export interface FunctionRun {
  name: string;
  kind: FunctionKind;
  /** performance.now() at the request's arrival and at the handler's end. */
  startedAt: number;
  endedAt: number;
  ms: number;
  /** The handler's status (a background function's caller got 202 long before); 500 if it threw. */
  status: number;
  /** Longer than Netlify allows this kind: in production it would have been stopped. */
  overLimit: boolean;
}

export interface FunctionServerOptions {
  /** Called when a handler starts, and once when it settles (the benchmark sums function time). */
  onStart?: (name: string, kind: FunctionKind) => void;
  onRun?: (run: FunctionRun) => void;
}

const kindOf = (fn: FunctionModule): FunctionKind =>
  fn.name.endsWith('-background') ? 'background' : fn.schedule ? 'scheduled' : 'synchronous';

const functionsDir = join(dirname(fileURLToPath(import.meta.url)), '..', 'functions');

export async function loadFunctions(): Promise<FunctionModule[]> {
  const files = readdirSync(functionsDir).filter((f) => /\.(ts|mts)$/.test(f));
  return Promise.all(files.map(async (file) => {
    const mod = await import(pathToFileURL(join(functionsDir, file)).href);
    const name = basename(file).replace(/\.(ts|mts)$/, '');
    const path = mod.config?.path;
    return { name, handler: mod.default, paths: path ? [path].flat() : [], schedule: mod.config?.schedule };
  }));
}

async function toRequest(req: IncomingMessage, origin: string): Promise<Request> {
  const chunks: Buffer[] = [];
  for await (const chunk of req) chunks.push(chunk as Buffer);
  const headers = new Headers();
  for (const [k, v] of Object.entries(req.headers)) if (typeof v === 'string') headers.set(k, v);
  const body = chunks.length && req.method !== 'GET' && req.method !== 'HEAD' ? Buffer.concat(chunks) : undefined;
  return new Request(new URL(req.url ?? '/', origin), { method: req.method, headers, body });
}

function safeDecode(segment: string): string {
  try {
    return decodeURIComponent(segment);
  } catch {
    return segment;
  }
}

/** Netlify's path patterns: literal segments and `:name` parameters. */
function matchPath(pattern: string, path: string): Record<string, string> | undefined {
  const want = pattern.split('/');
  const got = path.split('/');
  if (want.length !== got.length) return undefined;
  const params: Record<string, string> = {};
  for (let i = 0; i < want.length; i++) {
    if (want[i]!.startsWith(':')) params[want[i]!.slice(1)] = safeDecode(got[i]!);
    else if (want[i] !== got[i]) return undefined;
  }
  return params;
}

function route(functions: FunctionModule[], path: string): { fn: FunctionModule; params: Record<string, string> } | undefined {
  for (const fn of functions) {
    if (path === `/.netlify/functions/${fn.name}`) return { fn, params: {} };
    for (const pattern of fn.paths) {
      const params = matchPath(pattern, path);
      if (params) return { fn, params };
    }
  }
  return undefined;
}

/** The part of Netlify's context the functions use: params, and waitUntil for work after the answer. */
function contextFor(params: Record<string, string>, after: Promise<unknown>[]) {
  return { requestId: `local-${Date.now()}`, params, waitUntil: (p: Promise<unknown>) => { after.push(p); } };
}

async function write(res: ServerResponse, response: Response) {
  res.writeHead(response.status, Object.fromEntries(response.headers));
  res.end(Buffer.from(await response.arrayBuffer()));
}

export async function startFunctionServer(
  port: number, host = '127.0.0.1', options: FunctionServerOptions = {},
): Promise<{ server: Server; url: string; functions: FunctionModule[] }> {
  const functions = await loadFunctions();
  /** Runs the handler and reports its wall time; over Netlify's limit is one ⚠️ line. */
  async function run(fn: FunctionModule, request: Request, startedAt: number, context: unknown): Promise<Response> {
    let status = 500;
    options.onStart?.(fn.name, kindOf(fn));
    try {
      const response = await fn.handler(request, context);
      status = response.status;
      return response;
    } finally {
      const endedAt = performance.now();
      const kind = kindOf(fn);
      const overLimit = endedAt - startedAt > NETLIFY_TIME_LIMIT_MS[kind];
      if (overLimit) {
        console.error(`[local] ⚠️ ${fn.name} ran ${((endedAt - startedAt) / 1000).toFixed(1)} s: over Netlify's ${NETLIFY_TIME_LIMIT_MS[kind] / 1000} s for a ${kind} function, production would have stopped it`);
      }
      options.onRun?.({ name: fn.name, kind, startedAt, endedAt, ms: endedAt - startedAt, status, overLimit });
    }
  }
  const server = createServer(async (req, res) => {
    const startedAt = performance.now();
    try {
      const origin = `http://${req.headers.host ?? host}`;
      const path = new URL(req.url ?? '/', origin).pathname;
      const found = route(functions, path);
      if (!found) return write(res, Response.json({ ok: false, error: `no function at ${path}`, functions: functions.flatMap((f) => f.paths) }, { status: 404 }));
      const request = await toRequest(req, origin);
      const after: Promise<unknown>[] = [];
      const { fn, params } = found;
      const context = contextFor(params, after);
      if (kindOf(fn) === 'background') {
        // As Netlify runs background functions: the caller gets 202 at once, the work goes on.
        await write(res, new Response(null, { status: 202 }));
        void run(fn, request, startedAt, context).catch((err) =>
          console.error(`[local] ${fn.name} failed: ${errorText(err)}`));
        return;
      }
      await write(res, await run(fn, request, startedAt, context));
      // Work the function handed to waitUntil runs on after the answer, as on Netlify.
      for (const settled of await Promise.allSettled(after)) {
        if (settled.status === 'rejected') console.error(`[local] ${fn.name}: work after the answer failed: ${String((settled.reason as Error)?.message ?? settled.reason)}`);
      }
    } catch (err) {
      res.writeHead(500, { 'content-type': 'application/json' });
      res.end(JSON.stringify({ ok: false, error: String((err as Error).message) }));
    }
  });
  await new Promise<void>((resolve, reject) => server.once('error', reject).listen(port, host, resolve));
  const address = server.address();
  const actualPort = typeof address === 'object' && address ? address.port : port;
  return { server, url: `http://${host}:${actualPort}`, functions };
}
