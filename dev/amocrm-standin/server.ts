// The stand-in's HTTP server (node:http, bound to 127.0.0.1): reads each request, hands it
// to the handler, and answers after the latency the limits pick — or holds the socket
// (timeout) or destroys it (reset). close() drops held sockets, so it never waits 60 s.
import http from 'node:http';
import type { AddressInfo, Socket } from 'node:net';

import type { Reply } from './types.ts';

export const MAX_BODY = 1024 * 1024;
const TIMEOUT_HOLD_MS = 60_000;

export interface Incoming { method: string; url: URL; path: string; headers: http.IncomingHttpHeaders }
export interface ServerHooks {
  /** Called as the request arrives (before its body): returns what to do once the body is read. */
  arrive(req: Incoming): (body: Buffer, tooLarge: boolean) => Reply;
  delay(): number;
}

function send(res: http.ServerResponse, reply: Extract<Reply, { status: number }>) {
  const headers: Record<string, string> = {};
  let payload: string | undefined;
  if (reply.status !== 204 && reply.status !== 304 && reply.body !== undefined) {
    if (typeof reply.body === 'string') {
      payload = reply.body;
      headers['content-type'] = 'text/html; charset=utf-8';
    } else {
      payload = JSON.stringify(reply.body);
      headers['content-type'] = reply.status >= 400 ? 'application/problem+json' : 'application/hal+json';
    }
  }
  for (const [k, v] of Object.entries(reply.headers ?? {})) headers[k.toLowerCase()] = v;
  if (payload !== undefined) headers['content-length'] = String(Buffer.byteLength(payload));
  res.writeHead(reply.status, headers);
  res.end(payload);
}

export async function listen(port: number, hooks: ServerHooks): Promise<{ url: string; close(): Promise<void> }> {
  const sockets = new Set<Socket>();
  const timers = new Set<NodeJS.Timeout>();
  let closed = false;

  const later = (ms: number, fn: () => void) => {
    const t = setTimeout(() => {
      timers.delete(t);
      fn();
    }, ms);
    t.unref();
    timers.add(t);
  };

  const deliver = (req: http.IncomingMessage, res: http.ServerResponse, reply: Reply) => {
    if (closed) return;
    if (!('kind' in reply)) send(res, reply);
    else if (reply.kind === 'reset') req.socket.destroy();
    else later(TIMEOUT_HOLD_MS, () => req.socket.destroy()); // timeout: hold, then drop
  };

  const server = http.createServer((req, res) => {
    const method = (req.method ?? 'GET').toUpperCase();
    const url = new URL(`http://127.0.0.1${(req.url ?? '/').startsWith('/') ? '' : '/'}${req.url ?? ''}`);
    const path = url.pathname.length > 1 ? url.pathname.replace(/\/+$/, '') : url.pathname;
    const respond = hooks.arrive({ method, url, path, headers: req.headers });

    const chunks: Buffer[] = [];
    let size = 0;
    let tooLarge = Number(req.headers['content-length'] ?? 0) > MAX_BODY;
    req.on('data', (chunk: Buffer) => {
      size += chunk.length;
      if (size > MAX_BODY) tooLarge = true;
      if (!tooLarge) chunks.push(chunk);
    });
    req.on('error', () => undefined);
    res.on('error', () => undefined);
    req.on('end', () => {
      if (closed) return;
      const reply = respond(tooLarge ? Buffer.alloc(0) : Buffer.concat(chunks), tooLarge);
      const delay = hooks.delay();
      if (delay > 0) later(delay, () => deliver(req, res, reply));
      else deliver(req, res, reply);
    });
  });
  server.on('connection', (socket) => {
    sockets.add(socket);
    socket.on('close', () => sockets.delete(socket));
  });
  server.on('clientError', (_err, socket) => socket.destroy());

  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(port, '127.0.0.1', () => {
      server.off('error', reject);
      resolve();
    });
  });

  return {
    url: `http://127.0.0.1:${(server.address() as AddressInfo).port}`,
    async close() {
      if (closed) return;
      closed = true;
      for (const t of timers) clearTimeout(t);
      timers.clear();
      for (const s of sockets) s.destroy();
      sockets.clear();
      await new Promise<void>((resolve) => server.close(() => resolve()));
    },
  };
}
