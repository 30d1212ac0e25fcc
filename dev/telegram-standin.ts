// A local stand-in of the Telegram Bot API, for alerts (lib/alerts/telegram.ts): `npm start`
// and the tests point AMOCRM_ALERT_TELEGRAM_API at it. POST /bot<token>/sendMessage
// {chat_id, text} records the message and answers as the Bot API does
// ({ok:true,result:{message_id,…}}); a token other than the one it was started with answers
// 401 {ok:false,error_code:401,description:"Unauthorized"}. `failing` makes every send fail
// with 500 (a channel that is down).
import http from 'node:http';
import type { AddressInfo } from 'node:net';

export const STANDIN_BOT_TOKEN = '123456789:standin-bot-token-abcdefghijklmnopqrst';

export interface TelegramMessage { chatId: string; text: string; messageId: number; at: number }

export interface TelegramStandin {
  url: string;
  token: string;
  messages: TelegramMessage[];
  /** Every request (sent or refused), with its answer's status. */
  requests: { status: number }[];
  failing: boolean;
  close(): Promise<void>;
}

export async function startTelegramStandin(options: { token?: string; port?: number } = {}): Promise<TelegramStandin> {
  const token = options.token ?? STANDIN_BOT_TOKEN;
  let nextId = 1;
  const state = { messages: [] as TelegramMessage[], requests: [] as { status: number }[], failing: false };
  const server = http.createServer((req, res) => {
    const chunks: Buffer[] = [];
    req.on('data', (c: Buffer) => chunks.push(c));
    req.on('end', () => {
      const answer = (status: number, body: unknown) => {
        state.requests.push({ status });
        res.writeHead(status, { 'content-type': 'application/json' }).end(JSON.stringify(body));
      };
      const m = /^\/bot([^/]+)\/sendMessage$/.exec(req.url ?? '');
      if (req.method !== 'POST' || !m) return answer(404, { ok: false, error_code: 404, description: 'Not Found' });
      if (decodeURIComponent(m[1]!) !== token) return answer(401, { ok: false, error_code: 401, description: 'Unauthorized' });
      if (state.failing) return answer(500, { ok: false, error_code: 500, description: 'Internal Server Error' });
      let body: { chat_id?: unknown; text?: unknown };
      try { body = JSON.parse(Buffer.concat(chunks).toString('utf8')); } catch { return answer(400, { ok: false, error_code: 400, description: 'Bad Request: invalid JSON' }); }
      if (body.chat_id === undefined || typeof body.text !== 'string' || !body.text) {
        return answer(400, { ok: false, error_code: 400, description: 'Bad Request: chat_id and text are required' });
      }
      const msg = { chatId: String(body.chat_id), text: body.text, messageId: nextId++, at: Date.now() };
      state.messages.push(msg);
      answer(200, { ok: true, result: { message_id: msg.messageId, date: Math.floor(msg.at / 1000), chat: { id: body.chat_id }, text: msg.text } });
    });
  });
  await new Promise<void>((resolve) => server.listen(options.port ?? 0, '127.0.0.1', resolve));
  const { port } = server.address() as AddressInfo;
  return Object.assign(state, {
    url: `http://127.0.0.1:${port}`,
    token,
    close: () => new Promise<void>((resolve) => { server.closeAllConnections(); server.close(() => resolve()); }),
  });
}
