// Connections to amoCRM opened before a rate slot is taken. amoCRM counts a request when
// it arrives. On a new connection a request arrives a TCP (and TLS) handshake after it
// left, and the next one, sent a slot later on a warm connection, can arrive right behind
// it: two requests in one slot's gap, and a 429 at the limit. So a request that would need
// a new connection has it opened first (ready()), outside its slot; the agent hands that
// connection to the request (createConnection) instead of dialling then.
import http from 'node:http';
import https from 'node:https';
import net from 'node:net';
import tls from 'node:tls';

/** A spare connection nobody used is closed after this long (amoCRM would close it anyway). */
const SPARE_IDLE_MS = 10_000;
/** A connection not open by then is left to the request itself (which reports the failure). */
const OPEN_TIMEOUT_MS = 1_000;
/**
 * How long a connection stays promised to a request on its way to a slot (the limiter
 * reserves at most 1 s ahead); a request that never comes (no slot) frees it after that.
 */
const PROMISE_MS = 1_500;

export interface WarmAgent {
  agent: http.Agent;
  /** Resolves once a connection is ready for this caller's request (kept-alive, or opened now). */
  ready(): Promise<void>;
  /** The request promised a connection by ready() is being sent now. */
  sending(): void;
}

type Spare = { socket: net.Socket; timer: NodeJS.Timeout };
interface Target { host: string; port: number; secure: boolean }

export function warmAgent(baseUrl: string): WarmAgent {
  const url = new URL(baseUrl);
  const secure = url.protocol === 'https:';
  const target: Target = { host: url.hostname, port: Number(url.port || (secure ? 443 : 80)), secure };
  const agent = secure ? new https.Agent({ keepAlive: true }) : new http.Agent({ keepAlive: true });
  const spare: Spare[] = [];
  // Connections promised to requests on their way to a slot (their expiry times, in order):
  // each such request has its own, kept-alive or opened for it.
  const promised: number[] = [];

  const dial = (options: http.ClientRequestArgs, callback?: (err: Error | null, stream: import('node:stream').Duplex) => void) =>
    (secure ? https.Agent.prototype : http.Agent.prototype).createConnection.call(agent, options, callback);
  agent.createConnection = (options, callback) => {
    while (spare.length) {
      const { socket, timer } = spare.shift()!;
      clearTimeout(timer);
      if (!socket.destroyed && socket.writable) return socket.ref();
    }
    return dial(options, callback);
  };

  const idleSockets = () => Object.values(agent.freeSockets).reduce((n, list) => n + (list?.length ?? 0), 0);

  return {
    agent,
    async ready() {
      const now = Date.now();
      while (promised.length && promised[0]! < now) promised.shift();
      if (idleSockets() + spare.length <= promised.length) await openSpare(target, spare);
      promised.push(Date.now() + PROMISE_MS);
    },
    sending() {
      promised.shift();
    },
  };
}

/**
 * Opens a connection ahead of a request and keeps it in `spare` for SPARE_IDLE_MS; resolves
 * either way.
 */
function openSpare({ host, port, secure }: Target, spare: Spare[]): Promise<void> {
  return new Promise((resolve) => {
    const socket: net.Socket = secure
      ? tls.connect({ host, port, servername: net.isIP(host) ? undefined : host, ALPNProtocols: ['http/1.1'] })
      : net.connect({ host, port });
    const done = () => {
      socket.on('error', () => socket.destroy()); // a spare that breaks is simply not used
      const timer = setTimeout(() => {
        const i = spare.findIndex((s) => s.socket === socket);
        if (i >= 0) spare.splice(i, 1);
        socket.destroy();
      }, SPARE_IDLE_MS);
      timer.unref();
      socket.unref();
      spare.push({ socket, timer });
      resolve();
    };
    // A connection that cannot be opened now is the request's to report: it dials itself.
    const failed = () => { socket.destroy(); resolve(); };
    socket.once(secure ? 'secureConnect' : 'connect', () => { clearTimeout(giveUp); done(); });
    socket.once('error', () => { clearTimeout(giveUp); failed(); });
    const giveUp = setTimeout(failed, OPEN_TIMEOUT_MS);
  });
}
