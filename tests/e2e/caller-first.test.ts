// A misconfigured deploy checks who is calling before it says what it lacks. Each endpoint
// authenticates its caller with its own secret only (the webhook signature with
// AMOCRM_WEBHOOK_SECRET for lesson-completed and the drainer, the path secret
// AMOCRM_HOOK_SECRET for amoCRM's hook, the operator token AMOCRM_REPLAY_TOKEN for replay,
// status and the console). So, with another variable missing:
//   - a caller that fails that check gets exactly the answer a configured deploy gives it
//     (401 / 404), never the list of missing variables;
//   - a caller that passes it gets the 503 that names them;
//   - where the endpoint's own secret is missing or malformed, every caller gets a bare 503;
//   - the log always gets the full list, in one ❌ line.
// The handlers are called as Netlify calls them: with runtimeFromEnv over process.env.
import { afterAll, afterEach, beforeAll, beforeEach, describe, expect, it, vi, type MockInstance } from 'vitest';
import { handleConsole } from '../../lib/http/console/routes.ts';
import { handleCrmEvents } from '../../lib/http/crm-events.ts';
import { handleDrain } from '../../lib/http/drain-background.ts';
import type { RuntimeSource } from '../../lib/http/handler.ts';
import { handleLessonCompleted } from '../../lib/http/lesson-completed.ts';
import { handleReplay } from '../../lib/http/replay.ts';
import { handleStatus } from '../../lib/http/status.ts';
import { runtimeFromEnv } from '../../lib/runtime.ts';
import { sign } from '../../lib/lesson-webhook/verify.ts';
import { createStack, dbWebhookBody, REPLAY_TOKEN, WEBHOOK_SECRET, type Stack } from '../helpers/stack.ts';

const HOOK_SECRET = 'caller-first-hook-secret-0c4f7a9e2b';
const NAMES = /AMOCRM_|SUPABASE_|URL\b/;

let s: Stack;
/** The stack's complete environment: what a configured deploy has (the database aside). */
let full: Record<string, string>;
let logged: MockInstance<typeof console.log>;
const savedEnv = { ...process.env };

beforeAll(async () => {
  s = await createStack({ env: { AMOCRM_HOOK_SECRET: HOOK_SECRET, AMOCRM_SUBDOMAIN: 'onaiacademy' } });
  full = { ...s.env };
});
afterAll(async () => {
  await s?.close();
});
beforeEach(() => {
  logged = vi.spyOn(console, 'log').mockImplementation(() => undefined);
});
afterEach(() => {
  logged.mockRestore();
  for (const key of Object.keys(process.env)) if (!(key in savedEnv)) delete process.env[key];
  Object.assign(process.env, savedEnv);
});

/** Sets process.env to `env` (only it), as a deploy's function environment. */
function deployEnv(env: Record<string, string | undefined>) {
  for (const key of Object.keys(process.env)) delete process.env[key];
  for (const [k, v] of Object.entries(env)) if (v !== undefined) process.env[k] = v;
}
/** The complete environment without `drop`, and with `set`. */
const broken = (drop: string[], set: Record<string, string> = {}) =>
  Object.fromEntries(Object.entries({ ...full, ...set }).filter(([k]) => !drop.includes(k)));
const logLines = () => logged.mock.calls.map((c) => String(c[0]));

type Call = (req: Request, runtime: RuntimeSource) => Promise<Response>;
interface Probe { name: string; handler: Call; request: () => Request }

const lessonBody = JSON.stringify(dbWebhookBody('00000000-0000-4000-8000-000000000001', 67));
const signed = (url: string, body: string, secret = WEBHOOK_SECRET) => {
  const id = `evt_caller_${Math.random().toString(36).slice(2)}`;
  const ts = String(Math.floor(Date.now() / 1000));
  return new Request(url, { method: 'POST', headers: { 'content-type': 'application/json', 'webhook-id': id, 'webhook-timestamp': ts, 'webhook-signature': sign(secret, id, ts, body) }, body });
};
const LESSON = 'http://localhost/api/amocrm/lesson-completed';
const DRAIN = 'http://localhost/.netlify/functions/amocrm-drain-background';
const hookRequest = (secret: string) => new Request(`http://localhost/api/amocrm/crm-events/${secret}`, {
  method: 'POST', headers: { 'content-type': 'application/x-www-form-urlencoded' }, body: 'account%5Bsubdomain%5D=onaiacademy',
});
const crmEvents = (secret: string): Call => (req, runtime) => handleCrmEvents(req, runtime, { params: { secret } });
const operatorGet = (url: string, headers: Record<string, string> = {}) => new Request(url, { headers });
const operatorPost = (url: string, headers: Record<string, string> = {}) =>
  new Request(url, { method: 'POST', headers: { 'content-type': 'application/json', ...headers }, body: '{"status":"failed","dryRun":true}' });

/** Callers that fail the endpoint's own check. */
const strangers: Probe[] = [
  { name: 'lesson-completed, unsigned', handler: handleLessonCompleted, request: () => new Request(LESSON, { method: 'POST', headers: { 'content-type': 'application/json' }, body: lessonBody }) },
  { name: 'lesson-completed, signed with another secret', handler: handleLessonCompleted, request: () => signed(LESSON, lessonBody, 'whsec_b3RoZXItc2VjcmV0LW9mLTI0LWJ5dGVzISE=') },
  { name: 'lesson-completed, a wrong x-webhook-secret', handler: handleLessonCompleted, request: () => new Request(LESSON, { method: 'POST', headers: { 'content-type': 'application/json', 'x-webhook-secret': 'nope-nope-nope-nope' }, body: lessonBody }) },
  { name: 'drain, unsigned', handler: handleDrain, request: () => new Request(DRAIN, { method: 'POST', body: '' }) },
  { name: 'crm-events, a wrong path secret', handler: crmEvents('x'.repeat(HOOK_SECRET.length)), request: () => hookRequest('x'.repeat(HOOK_SECRET.length)) },
  { name: 'status, no token', handler: handleStatus, request: () => operatorGet('http://localhost/api/amocrm/status') },
  { name: 'status, a wrong Bearer token', handler: handleStatus, request: () => operatorGet('http://localhost/api/amocrm/status', { authorization: 'Bearer wrong-token-wrong-token' }) },
  { name: 'status in a browser, no credentials', handler: handleStatus, request: () => operatorGet('http://localhost/api/amocrm/status', { accept: 'text/html' }) },
  { name: 'replay, no token', handler: handleReplay, request: () => operatorPost('http://localhost/api/amocrm/replay') },
  { name: 'console, no token', handler: handleConsole, request: () => operatorGet('http://localhost/api/amocrm/console/health', { accept: 'text/html' }) },
];

/** Callers that pass it. */
const insiders: Probe[] = [
  { name: 'lesson-completed, signed', handler: handleLessonCompleted, request: () => signed(LESSON, lessonBody) },
  { name: 'lesson-completed, x-webhook-secret', handler: handleLessonCompleted, request: () => new Request(LESSON, { method: 'POST', headers: { 'content-type': 'application/json', 'x-webhook-secret': WEBHOOK_SECRET }, body: lessonBody }) },
  { name: 'drain, signed', handler: handleDrain, request: () => signed(DRAIN, '') },
  { name: 'crm-events, the path secret', handler: crmEvents(HOOK_SECRET), request: () => hookRequest(HOOK_SECRET) },
  { name: 'status, the Bearer token', handler: handleStatus, request: () => operatorGet('http://localhost/api/amocrm/status', { authorization: `Bearer ${REPLAY_TOKEN}` }) },
  { name: 'replay, the Bearer token', handler: handleReplay, request: () => operatorPost('http://localhost/api/amocrm/replay', { authorization: `Bearer ${REPLAY_TOKEN}` }) },
  { name: 'console, Basic auth', handler: handleConsole, request: () => operatorGet('http://localhost/api/amocrm/console/health', { accept: 'text/html', authorization: `Basic ${Buffer.from(`op:${REPLAY_TOKEN}`).toString('base64')}` }) },
];

async function answer(res: Response) {
  return { status: res.status, body: await res.text(), challenge: res.headers.get('www-authenticate') };
}

describe('another variable missing (AMOCRM_PIPELINE_ID; no Supabase either)', () => {
  const env = () => broken(['AMOCRM_PIPELINE_ID']);

  it.each(strangers)('$name: the answer a configured deploy gives, nothing named; the log has the full list', async (p) => {
    const configured = await answer(await p.handler(p.request(), async () => s.rt));
    deployEnv(env());
    const misconfigured = await answer(await p.handler(p.request(), runtimeFromEnv));
    expect([401, 404]).toContain(misconfigured.status);
    expect(misconfigured).toEqual(configured);
    expect(misconfigured.body).not.toMatch(/AMOCRM_PIPELINE_ID|SUPABASE_URL|not configured/);
    const failures = logLines().filter((l) => l.startsWith('❌'));
    expect(failures).toHaveLength(1);
    expect(failures[0]).toContain('AMOCRM_PIPELINE_ID');
    expect(failures[0]).toContain('SUPABASE_URL');
  });

  it.each(insiders)('$name: 503 naming every missing variable', async (p) => {
    deployEnv(env());
    const res = await answer(await p.handler(p.request(), runtimeFromEnv));
    expect(res.status).toBe(503);
    expect(res.body).toContain('AMOCRM_PIPELINE_ID');
    expect(res.body).toContain('SUPABASE_URL');
    expect(logLines().filter((l) => l.startsWith('❌'))).toEqual([expect.stringContaining('AMOCRM_PIPELINE_ID')]);
  });
});

describe('the endpoint\'s own secret missing or malformed: a bare 503 for every caller, the list in the log', () => {
  const cases: { name: string; env: () => Record<string, string>; probes: Probe[]; variable: string }[] = [
    {
      name: 'AMOCRM_WEBHOOK_SECRET missing', variable: 'AMOCRM_WEBHOOK_SECRET', env: () => broken(['AMOCRM_WEBHOOK_SECRET']),
      probes: [...strangers, ...insiders].filter((p) => /^(lesson-completed|drain)/.test(p.name)),
    },
    {
      name: 'AMOCRM_WEBHOOK_SECRET too short', variable: 'AMOCRM_WEBHOOK_SECRET', env: () => broken([], { AMOCRM_WEBHOOK_SECRET: 'short' }),
      probes: [...strangers, ...insiders].filter((p) => /^lesson-completed/.test(p.name)),
    },
    {
      name: 'AMOCRM_REPLAY_TOKEN missing (and AMOCRM_PIPELINE_ID)', variable: 'AMOCRM_PIPELINE_ID', env: () => broken(['AMOCRM_REPLAY_TOKEN', 'AMOCRM_PIPELINE_ID']),
      probes: [...strangers, ...insiders].filter((p) => /^(status|replay|console)/.test(p.name)),
    },
    {
      name: 'AMOCRM_HOOK_SECRET malformed', variable: 'AMOCRM_HOOK_SECRET', env: () => broken([], { AMOCRM_HOOK_SECRET: 'too short' }),
      probes: [...strangers, ...insiders].filter((p) => /^crm-events/.test(p.name)),
    },
  ];
  for (const c of cases) {
    it.each(c.probes)(`${c.name}: $name`, async (p) => {
      deployEnv(c.env());
      const res = await answer(await p.handler(p.request(), runtimeFromEnv));
      expect(res.status).toBe(503);
      expect(res.body).not.toMatch(NAMES);
      expect(JSON.parse(res.body)).toEqual({ ok: false, error: expect.stringMatching(/not configured/) });
      const failures = logLines().filter((l) => l.startsWith('❌'));
      expect(failures).toHaveLength(1);
      expect(failures[0]).toContain(c.variable);
    });
  }

  it('AMOCRM_HOOK_SECRET unset (the reverse direction off): 404, as a configured deploy answers', async () => {
    deployEnv(broken(['AMOCRM_HOOK_SECRET', 'AMOCRM_PIPELINE_ID']));
    const res = await answer(await crmEvents(HOOK_SECRET)(hookRequest(HOOK_SECRET), runtimeFromEnv));
    expect(res).toMatchObject({ status: 404, body: JSON.stringify({ ok: false, error: 'not found' }) });
  });
});

describe('a configured deploy without AMOCRM_REPLAY_TOKEN', () => {
  it('the operator endpoints answer a bare 503 and log what to set', async () => {
    const rt = { ...s.rt, config: { ...s.rt.config, replayToken: undefined } };
    const logFrom = s.log.lines.length;
    const probes = [...strangers, ...insiders].filter((x) => /^(status|replay|console)/.test(x.name));
    for (const p of probes) {
      const res = await answer(await p.handler(p.request(), async () => rt));
      expect([p.name, res.status]).toEqual([p.name, 503]);
      expect(res.body).not.toMatch(NAMES);
    }
    expect(s.log.lines.slice(logFrom).filter((l) => l.startsWith('❌') && l.includes('AMOCRM_REPLAY_TOKEN'))).toHaveLength(probes.length);
  });
});
