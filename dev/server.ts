// Serves the real Netlify function modules on localhost, routed by their `config.path`
// as Netlify routes them. Scheduled functions can be triggered with POST /.netlify/functions/<name>.
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import { readdirSync } from 'node:fs';
import { basename, dirname, join } from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';

type Handler = (req: Request, context: unknown) => Promise<Response> | Response;
interface FunctionModule { name: string; handler: Handler; paths: string[]; schedule?: string }

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

async function write(res: ServerResponse, response: Response) {
  res.writeHead(response.status, Object.fromEntries(response.headers));
  res.end(Buffer.from(await response.arrayBuffer()));
}

export async function startFunctionServer(port: number, host = '127.0.0.1'): Promise<{ server: Server; url: string; functions: FunctionModule[] }> {
  const functions = await loadFunctions();
  const server = createServer(async (req, res) => {
    try {
      const origin = `http://${req.headers.host ?? host}`;
      const path = new URL(req.url ?? '/', origin).pathname;
      const fn = functions.find((f) => f.paths.includes(path) || path === `/.netlify/functions/${f.name}`);
      if (!fn) return write(res, Response.json({ ok: false, error: `no function at ${path}`, functions: functions.flatMap((f) => f.paths) }, { status: 404 }));
      const request = await toRequest(req, origin);
      if (fn.name.endsWith('-background')) {
        // As Netlify runs background functions: the caller gets 202 at once, the work goes on.
        await write(res, new Response(null, { status: 202 }));
        void Promise.resolve(fn.handler(request, { requestId: `local-${Date.now()}` })).catch((err) =>
          console.error(`[local] ${fn.name} failed: ${String((err as Error)?.message ?? err)}`));
        return;
      }
      await write(res, await fn.handler(request, { requestId: `local-${Date.now()}` }));
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
