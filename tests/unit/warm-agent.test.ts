// The transport opens a request's connection before its rate slot (ready()), so the request
// leaves on a connection that is already open: amoCRM sees it when the slot said, not a
// handshake later. A real local HTTP server counts connections and requests.
import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { afterAll, beforeAll, expect, it } from 'vitest';
import { axiosTransport } from '../../lib/amocrm/http.ts';

let server: Server;
let base: string;
const seen: string[] = [];
let connections = 0;

beforeAll(async () => {
  server = createServer((req, res) => {
    seen.push(`request ${req.url}`);
    res.writeHead(204).end();
  });
  server.on('connection', () => {
    connections++;
    seen.push('connection');
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  base = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
});
afterAll(async () => {
  server.closeAllConnections();
  await new Promise((r) => server.close(r));
});

it('opens the connection in ready(), before the slot, and the request then uses it; a kept-alive one is reused without a new one', async () => {
  const transport = axiosTransport(base, 2000);
  await transport.ready!();
  await expect.poll(() => connections).toBe(1); // open, and nothing sent yet
  expect(seen).toEqual(['connection']);

  expect((await transport.send({ method: 'GET', path: '/api/v4/account' })).status).toBe(204);
  expect(seen).toEqual(['connection', 'request /api/v4/account']);

  // The next request finds the kept-alive connection: no new one.
  await transport.ready!();
  expect((await transport.send({ method: 'GET', path: '/api/v4/leads' })).status).toBe(204);
  expect(connections).toBe(1);

  // Three requests on their way to slots at once: each gets its own open connection first.
  await Promise.all([1, 2, 3].map(() => transport.ready!()));
  await expect.poll(() => connections).toBe(3); // the kept-alive one, and two opened now
  await Promise.all(['/a', '/b', '/c'].map((path) => transport.send({ method: 'GET', path })));
  expect(connections).toBe(3);
});

it('a server that cannot be reached: ready() gives up quietly and the request reports the failure', async () => {
  const transport = axiosTransport('http://127.0.0.1:1', 1000);
  await transport.ready!();
  await expect(transport.send({ method: 'GET', path: '/api/v4/account' })).rejects.toMatchObject({ kind: 'retryable', code: 'network' });
});
