// Bad input at amoCRM's hook endpoint (issue 10, "Bad input"): malformed deliveries through
// the real handler and database (PGlite, or PostgreSQL with DATABASE_URL). The promises:
//   - a secret problem (missing, wrong, partial, over-long, other case, the direction off)
//     is a 404 and nothing is recorded;
//   - a wrong method is a 405, nothing recorded;
//   - authentic content the sync cannot use is answered 200 and kept, flagged with a problem
//     that names the issue (so amoCRM never disables the hook over it), or 200 'ignored' when
//     it holds no lead change; usable content is 200 'pending' and applied after the answer;
//   - never a 500, never the secret or a stack trace in an answer or a log line, no
//     prototype pollution, hostile strings stored verbatim and harmless;
//   - and after all of it a valid delivery still moves the mirror.
import qs from 'qs';
import { randomBytes } from 'node:crypto';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { handleCrmEvents } from '../../lib/http/crm-events.ts';
import { applyPendingDeliveries } from '../../lib/mirror/apply.ts';
import type { Runtime } from '../../lib/runtime.ts';
import { createStack, PIPELINE, STAGE, WEBHOOK_SECRET, type Stack } from '../helpers/stack.ts';

const HOOK_SECRET = 'bad-input-hook-secret-4f9a2c7e1b8d3a6f';
const SUBDOMAIN = 'onaiacademy';
const ACCOUNT_ID = 29_000_000;
const STACK_TRACE = /\n\s+at |\bat [^\s]+ \(?[^\s]+:\d+:\d+\)?|node:internal|\w+Error: /;

const enc = encodeURIComponent;
/** A form body from [key, value] pairs, encoded as amoCRM encodes them (brackets too). */
const form = (pairs: [string, string | number][]) => pairs.map(([k, v]) => `${enc(k)}=${enc(String(v))}`).join('&');
const ACCOUNT = form([['account[subdomain]', SUBDOMAIN], ['account[id]', ACCOUNT_ID]]);
/** One lead's status change as amoCRM's full form carries it, as [key, value] pairs. */
const statusPairs = (lead: Record<string, string | number>, i = 0): [string, string | number][] =>
  Object.entries({ pipeline_id: PIPELINE, old_pipeline_id: PIPELINE, ...lead }).map(([k, v]) => [`leads[status][${i}][${k}]`, v]);
const statusHook = (lead: Record<string, string | number>, extra = '') => `${form(statusPairs(lead))}${extra ? `&${extra}` : ''}&${ACCOUNT}`;

type Expected =
  | { status: 404 | 405 | 413 }
  | { status: 200; delivery: 'flagged'; problem: RegExp }
  | { status: 200; delivery: 'ignored' }
  | { status: 200; delivery: 'pending'; then?: () => Promise<void> };

interface Case {
  name: string;
  /** A function when it needs what beforeAll made (the known student's deal). */
  body?: string | (() => string);
  /** The URL's last path segment as sent (default: the secret). null: no segment at all. */
  segment?: string | null;
  /** Netlify passes the :secret route parameter; false: the handler reads the path itself. */
  params?: boolean;
  method?: string;
  headers?: Record<string, string>;
  /** Default: a fresh X-Amocrm-Requestid per case. */
  requestId?: string;
  /** A runtime other than the stack's (the reverse direction switched off). */
  runtime?: () => Runtime;
  expect: Expected;
}

let s: Stack;
/** A known student whose deal the mirror follows; hostile names land on it. */
let target: { userId: string; leadId: number };
let modified = 1_850_000_000;
const nextModified = () => ++modified;
let requestSeq = 0;
let lastBody = '';
const prototypeKeys = Object.getOwnPropertyNames(Object.prototype).sort();

async function knownStudent(email: string) {
  const st = await s.addStudent(email, { leadStatusId: STAGE.lesson1 });
  await s.t.sql(`insert into amocrm.student_leads (user_id, lead_id) values ($1, $2)`, [st.userId, st.leadId]);
  return st;
}
const countDeliveries = async () => Number((await s.t.sql(`select count(*)::int as n from amocrm.crm_deliveries`))[0]!.n);
const dealName = async (leadId: number) => (await s.t.sql(`select name from amocrm.deals where lead_id = $1`, [leadId]))[0]?.name as string | undefined;

const bodyOf = (c: Case) => (typeof c.body === 'function' ? c.body() : (c.body ?? ''));

function request(c: Case): { req: Request; context: { params?: Record<string, string> } } {
  const segment = c.segment === undefined ? HOOK_SECRET : c.segment;
  const url = segment === null ? 'http://localhost/api/amocrm/crm-events' : `http://localhost/api/amocrm/crm-events/${segment}`;
  const method = c.method ?? 'POST';
  const req = new Request(url, {
    method,
    headers: {
      'content-type': 'application/x-www-form-urlencoded', 'user-agent': 'amoCRM-Webhooks/3.0',
      'x-amocrm-requestid': c.requestId ?? `bad-input-${++requestSeq}`, ...c.headers,
    },
    body: method === 'GET' || method === 'HEAD' ? undefined : bodyOf(c),
  });
  // Netlify hands the matched :secret to the function as it appears in the path.
  const params = c.params === false || segment === null || segment === '' ? undefined : { secret: segment };
  return { req, context: params ? { params } : {} };
}

/** Posts one case and checks everything every case promises; returns the delivery row, if any. */
async function deliver(c: Case) {
  const before = await countDeliveries();
  const logFrom = s.log.lines.length;
  const { req, context } = request(c);
  lastBody = await req.clone().text();
  const res = await handleCrmEvents(req, async () => (c.runtime ? c.runtime() : s.rt), context);
  const text = await res.text();
  const logged = s.log.lines.slice(logFrom);

  // Nothing leaks, nothing crashes, nothing is polluted.
  expect(res.status, `${c.name}: ${text.slice(0, 300)}`).not.toBe(500);
  expect(res.status, `${c.name}: ${text.slice(0, 300)}`).toBe(c.expect.status);
  for (const out of [text, ...logged]) {
    expect(out).not.toContain(HOOK_SECRET);
    expect(out).not.toMatch(STACK_TRACE);
  }
  expect(Object.getOwnPropertyNames(Object.prototype).sort()).toEqual(prototypeKeys);
  expect(({} as Record<string, unknown>).polluted).toBeUndefined();
  const answer = JSON.parse(text) as { ok: boolean; status?: string; delivery_id?: number; error?: string };

  const after = await countDeliveries();
  if (c.expect.status !== 200) {
    expect(after, `${c.name}: nothing recorded`).toBe(before);
    expect(answer.ok).toBe(false);
    if (c.expect.status === 404) expect(answer).toEqual({ ok: false, error: 'not found' });
    if (c.expect.status === 405) expect(answer).toMatchObject({ ok: false, allow: 'POST' });
    return undefined;
  }
  expect(after, `${c.name}: recorded once`).toBe(before + 1);
  expect(answer).toMatchObject({ ok: true, status: c.expect.delivery, duplicate: false });
  const [row] = await s.t.sql(`select id, status, problem, body, body_bytes, changes from amocrm.crm_deliveries where id = $1`, [answer.delivery_id]);
  expect(row, c.name).toBeDefined();
  expect(row!.status).toBe(c.expect.delivery);
  const flaggedLines = logged.filter((l) => l.startsWith('⚠️ [AmoCRM] Хук amoCRM сохранён, но не разобран: нужен оператор'));
  if (c.expect.delivery === 'flagged') {
    expect(row!.problem).toMatch(c.expect.problem);
    // One line per outcome, naming the delivery for the operator.
    expect(flaggedLines).toHaveLength(1);
    expect(flaggedLines[0]).toContain(`delivery=${answer.delivery_id}`);
    expect(row!.changes).toEqual([]);
  } else {
    expect(row!.problem).toBeNull();
    expect(flaggedLines).toEqual([]);
  }
  if (c.expect.delivery === 'ignored') expect(row!.changes).toEqual([]);
  if (c.expect.delivery === 'pending') {
    await applyPendingDeliveries(s.rt);
    const [applied] = await s.t.sql(`select status from amocrm.crm_deliveries where id = $1`, [answer.delivery_id]);
    expect(applied!.status).toBe('applied');
    await c.expect.then?.();
  }
  return row;
}

beforeAll(async () => {
  s = await createStack({ env: { AMOCRM_HOOK_SECRET: HOOK_SECRET, AMOCRM_SUBDOMAIN: SUBDOMAIN, AMOCRM_ACCOUNT_ID: String(ACCOUNT_ID) } });
  target = await knownStudent('hostile@bad-input.kz');
});
afterAll(async () => {
  await s?.close();
});

const flagged = (problem: RegExp): Expected => ({ status: 200, delivery: 'flagged', problem });
const ignored: Expected = { status: 200, delivery: 'ignored' };
const valid = () => statusHook({ id: target.leadId, status_id: STAGE.lesson2, old_status_id: STAGE.lesson1, last_modified: nextModified() });

/** The name on the target deal's next status hook, and what the mirror must then hold. */
function hostileName(name: string, stored = name, raw?: (body: string) => string): Pick<Case, 'body' | 'expect'> {
  return {
    body: () => {
      const body = statusHook({ id: target.leadId, status_id: STAGE.lesson2, old_status_id: STAGE.lesson1, last_modified: nextModified(), name });
      return raw ? raw(body) : body;
    },
    expect: {
      status: 200, delivery: 'pending',
      // Stored verbatim (as data, through parameters and jsonb): what the platform renders is its
      // own escaping's business; the tables are all still there.
      then: async () => {
        expect(await dealName(target.leadId)).toBe(stored);
        expect((await s.t.sql(`select to_regclass('amocrm.deals') is not null as present`))[0]!.present).toBe(true);
      },
    },
  };
}

describe('the secret: 404 and nothing recorded', () => {
  const cases: Case[] = [
    { name: 'missing: an empty last segment', segment: '', body: valid, expect: { status: 404 } },
    { name: 'missing: no segment after crm-events', segment: null, body: valid, expect: { status: 404 } },
    { name: 'wrong: another value of the same length', segment: 'x'.repeat(HOOK_SECRET.length), body: valid, expect: { status: 404 } },
    { name: 'partial: all but the last character', segment: HOOK_SECRET.slice(0, -1), body: valid, expect: { status: 404 } },
    { name: 'partial: the first half', segment: HOOK_SECRET.slice(0, HOOK_SECRET.length / 2), body: valid, expect: { status: 404 } },
    { name: 'the secret with one character more', segment: `${HOOK_SECRET}x`, body: valid, expect: { status: 404 } },
    { name: 'over-long: 10 kB starting with the secret', segment: `${HOOK_SECRET}${'a'.repeat(10_240)}`, body: valid, expect: { status: 404 } },
    { name: 'the secret in upper case', segment: HOOK_SECRET.toUpperCase(), body: valid, expect: { status: 404 } },
    { name: 'the lesson webhook\'s secret instead', segment: enc(WEBHOOK_SECRET), body: valid, expect: { status: 404 } },
    { name: 'the secret in the query string, not the path', segment: `?secret=${HOOK_SECRET}`, params: false, body: valid, expect: { status: 404 } },
    { name: 'malformed percent-encoding (Netlify route parameter)', segment: '%E0%A4%A', body: valid, expect: { status: 404 } },
    { name: 'malformed percent-encoding (path read by the handler, no route parameter)', segment: '%E0%A4%A', params: false, body: valid, expect: { status: 404 } },
    { name: 'the secret followed by an encoded NUL', segment: `${HOOK_SECRET}%00`, body: valid, expect: { status: 404 } },
    {
      name: 'the right secret while the reverse direction is off (AMOCRM_HOOK_SECRET unset)', body: valid, expect: { status: 404 },
      runtime: () => ({ ...s.rt, config: { ...s.rt.config, hooks: { subdomain: SUBDOMAIN, accountId: ACCOUNT_ID } } }),
    },
  ];
  it.each(cases)('$name', async (c) => {
    await deliver(c);
  });
});

describe('the method: 405 and nothing recorded', () => {
  const cases: Case[] = [
    { name: 'GET', method: 'GET', expect: { status: 405 } },
    { name: 'PUT', method: 'PUT', body: valid, expect: { status: 405 } },
    { name: 'DELETE', method: 'DELETE', body: valid, expect: { status: 405 } },
    { name: 'GET with a wrong secret (the method is refused first)', method: 'GET', segment: 'nope', expect: { status: 405 } },
  ];
  it.each(cases)('$name', async (c) => {
    await deliver(c);
  });
  it('a 405 names the allowed method in the Allow header, as RFC 9110 requires (it is only in the JSON body)', async () => {
    const { req, context } = request({ name: 'GET', method: 'GET', expect: { status: 405 } });
    const res = await handleCrmEvents(req, async () => s.rt, context);
    expect(res.status).toBe(405);
    expect(res.headers.get('allow')).toBe('POST');
  });
});

describe('another account: kept and flagged', () => {
  const cases: Case[] = [
    { name: 'another subdomain', body: `${form(statusPairs({ id: 5, status_id: 7 }))}&${form([['account[subdomain]', 'otheracademy'], ['account[id]', ACCOUNT_ID]])}`, expect: flagged(/^another account: otheracademy$/) },
    { name: 'another account id', body: `${form(statusPairs({ id: 5, status_id: 7 }))}&${form([['account[subdomain]', SUBDOMAIN], ['account[id]', 1]])}`, expect: flagged(/^another account id: 1$/) },
    { name: 'a subdomain that is not one (a URL with markup)', body: `${form(statusPairs({ id: 5, status_id: 7 }))}&${form([['account[subdomain]', 'evil.example/<b>']])}`, expect: flagged(/^account: subdomain must be an amoCRM subdomain$/) },
    { name: 'an account id above 2^53', body: `${form(statusPairs({ id: 5, status_id: 7 }))}&${form([['account[subdomain]', SUBDOMAIN], ['account[id]', '9007199254740993']])}`, expect: flagged(/^account: id is out of range$/) },
    { name: 'no account at all', body: form(statusPairs({ id: 5, status_id: 7 })), expect: flagged(/^no account\[subdomain\] or account\[id\] in the delivery$/) },
    { name: 'account as a scalar', body: `${form(statusPairs({ id: 5, status_id: 7 }))}&account=${SUBDOMAIN}`, expect: flagged(/^account: /) },
    { name: 'the subdomain twice (duplicate keys)', body: `${statusHook({ id: 5, status_id: 7 })}&${form([['account[subdomain]', SUBDOMAIN]])}`, expect: flagged(/^account: subdomain /) },
    {
      name: 'the subdomain in another case is the same account (DNS ignores case): accepted', body: `${form(statusPairs({ id: 5, status_id: 7 }))}&${form([['account[subdomain]', 'OnaiAcademy'], ['account[id]', ACCOUNT_ID]])}`,
      expect: { status: 200, delivery: 'pending' },
    },
  ];
  it.each(cases)('$name', async (c) => {
    await deliver(c);
  });
});

describe('not a form: kept and flagged, or ignored when it says nothing about deals', () => {
  const multipart = ['--XyZ', 'Content-Disposition: form-data; name="account[subdomain]"', '', SUBDOMAIN, '--XyZ--', ''].join('\r\n');
  const cases: Case[] = [
    { name: 'JSON instead of a form', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ leads: { status: [{ id: 5, status_id: 7 }] }, account: { subdomain: SUBDOMAIN } }), expect: flagged(/got JSON/) },
    { name: 'a JSON array', headers: { 'content-type': 'application/json' }, body: '[{"id":5}]', expect: flagged(/got JSON/) },
    { name: 'multipart/form-data', headers: { 'content-type': 'multipart/form-data; boundary=XyZ' }, body: multipart, expect: flagged(/^no account\[subdomain\] or account\[id\]/) },
    { name: 'XML', headers: { 'content-type': 'text/xml' }, body: `<leads><status><id>5</id></status></leads>`, expect: flagged(/^no account\[subdomain\] or account\[id\]/) },
    { name: 'an empty body', body: '', expect: flagged(/^no account\[subdomain\] or account\[id\]/) },
    { name: 'only whitespace', body: ' \r\n\t ', expect: flagged(/^no account\[subdomain\] or account\[id\]/) },
    { name: 'only the account', body: ACCOUNT, expect: ignored },
    { name: 'contacts only', body: `${form([['contacts[update][0][id]', 77], ['contacts[update][0][name]', 'Ivan']])}&${ACCOUNT}`, expect: ignored },
    { name: 'a lead action the sync does not follow (responsible)', body: `${form([['leads[responsible][0][id]', 5]])}&${ACCOUNT}`, expect: ignored },
    {
      // The content decides, not the label: this is amoCRM's form exactly.
      name: 'amoCRM\'s form labelled text/plain: judged by its content, accepted', headers: { 'content-type': 'text/plain' },
      body: statusHook({ id: 5, status_id: 7 }), expect: { status: 200, delivery: 'pending' },
    },
  ];
  it.each(cases)('$name', async (c) => {
    await deliver(c);
  });
});

describe('broken structure: flagged where a lead cannot be read, ignored where no lead key is left', () => {
  const cases: Case[] = [
    { name: 'broken brackets: leads[status[0][id]=1 (no leads key survives)', body: `leads[status[0][id]=1&${ACCOUNT}`, expect: ignored },
    { name: 'broken brackets: leads]]=1', body: `leads]]=1&${ACCOUNT}`, expect: ignored },
    { name: 'leads as a scalar', body: `leads=1&${ACCOUNT}`, expect: flagged(/^leads: expected leads\[<action>\]\[<n>\]\[<field>\] keys$/) },
    { name: 'leads as a list without an action', body: `${form([['leads[][id]', 5]])}&${ACCOUNT}`, expect: flagged(/^leads: expected leads\[<action>\]/) },
    { name: 'an action as a scalar', body: `${form([['leads[status]', 1]])}&${ACCOUNT}`, expect: flagged(/^expected a list of leads$/) },
    { name: 'a lead as a scalar', body: `${form([['leads[status][0]', 1]])}&${ACCOUNT}`, expect: flagged(/^leads\[status\]\[0\]: /) },
    { name: 'an array where the id belongs: leads[status][0][id][]=1', body: `${form([['leads[status][0][id][]', 1]])}&${ACCOUNT}`, expect: flagged(/^leads\[status\]\[0\]: id /) },
    { name: 'an object where status_id belongs', body: `${form([['leads[status][0][id]', 5], ['leads[status][0][status_id][x]', 7]])}&${ACCOUNT}`, expect: flagged(/^leads\[status\]\[0\]: status_id /) },
    { name: 'duplicate keys: two ids for one lead', body: `${form([['leads[status][0][id]', 5], ['leads[status][0][id]', 6]])}&${ACCOUNT}`, expect: flagged(/^leads\[status\]\[0\]: id /) },
    { name: 'nesting 50 levels deep under the id', body: `leads%5Bstatus%5D%5B0%5D%5Bid%5D${'%5Ba%5D'.repeat(50)}=1&${ACCOUNT}`, expect: flagged(/^leads\[status\]\[0\]: id /) },
    { name: 'a lead without an id', body: `${form([['leads[status][0][status_id]', 7]])}&${ACCOUNT}`, expect: flagged(/^leads\[status\]\[0\]: id /) },
    {
      name: 'a sparse, huge index is still a list: accepted', body: `${form([['leads[status][99999][id]', 5], ['leads[status][99999][status_id]', 7]])}&${ACCOUNT}`,
      expect: { status: 200, delivery: 'pending' },
    },
  ];
  it.each(cases)('$name', async (c) => {
    await deliver(c);
  });
});

describe('ids and times that are not amoCRM\'s: flagged, naming the field', () => {
  const lead = (fields: Record<string, string | number>) => statusHook({ id: 5, status_id: 7, ...fields });
  const cases: Case[] = [
    { name: 'a non-numeric id', body: lead({ id: 'abc' }), expect: flagged(/^leads\[status\]\[0\]: id must be a numeric id$/) },
    { name: 'a negative id', body: lead({ id: -5 }), expect: flagged(/^leads\[status\]\[0\]: id must be a numeric id$/) },
    { name: 'id 0', body: lead({ id: 0 }), expect: flagged(/^leads\[status\]\[0\]: id is out of range$/) },
    { name: 'a fractional id', body: lead({ id: '1.5' }), expect: flagged(/^leads\[status\]\[0\]: id must be a numeric id$/) },
    { name: 'an id in exponent notation', body: lead({ id: '1e3' }), expect: flagged(/^leads\[status\]\[0\]: id must be a numeric id$/) },
    { name: 'an id with a leading space', body: lead({ id: ' 5' }), expect: flagged(/^leads\[status\]\[0\]: id must be a numeric id$/) },
    { name: 'an id above 2^53 (16 digits)', body: lead({ id: '9007199254740993' }), expect: flagged(/^leads\[status\]\[0\]: id is out of range$/) },
    { name: 'a 20-digit id', body: lead({ id: '12345678901234567890' }), expect: flagged(/^leads\[status\]\[0\]: id must be a numeric id$/) },
    { name: 'a non-numeric status_id', body: lead({ status_id: 'won' }), expect: flagged(/^leads\[status\]\[0\]: status_id must be a numeric id$/) },
    { name: 'a negative pipeline_id', body: lead({ pipeline_id: -1 }), expect: flagged(/^leads\[status\]\[0\]: pipeline_id must be a numeric id$/) },
    { name: 'a last_modified that is not unix seconds', body: lead({ last_modified: '2026-01-01' }), expect: flagged(/^leads\[status\]\[0\]: last_modified must be unix seconds$/) },
    { name: 'an updated_at of 12 digits', body: lead({ updated_at: '999999999999' }), expect: flagged(/^leads\[status\]\[0\]: updated_at must be unix seconds$/) },
    { name: 'the second lead bad, the first fine: the whole delivery is flagged', body: `${form([...statusPairs({ id: 5, status_id: 7 }), ...statusPairs({ id: 'x', status_id: 7 }, 1)])}&${ACCOUNT}`, expect: flagged(/^leads\[status\]\[1\]: id must be a numeric id$/) },
    {
      name: 'an unknown pipeline: well-formed, so accepted; applied as not relevant (nothing mirrored)',
      body: statusHook({ id: 7_000_777, status_id: 9_101, pipeline_id: 9_999_999, old_pipeline_id: 9_999_999 }),
      expect: {
        status: 200, delivery: 'pending',
        then: async () => expect(await s.t.sql(`select lead_id from amocrm.deals where lead_id = 7000777`)).toEqual([]),
      },
    },
  ];
  it.each(cases)('$name', async (c) => {
    await deliver(c);
  });
});

describe('size', () => {
  const cases: Case[] = [
    {
      name: 'a 5 MB body (a valid delivery padded in a custom field): kept (truncated) and flagged',
      body: `${statusHook({ id: 5, status_id: 7 })}&${enc('leads[status][0][custom_fields][0][values][0][value]')}=${'A'.repeat(5 * 1024 * 1024)}`,
      expect: flagged(/^body of \d{7} bytes: larger than any amoCRM delivery$/),
    },
    {
      name: '25,000 parameters (beyond the parser\'s limit): flagged by their size',
      body: `${ACCOUNT}&${Array.from({ length: 25_000 }, (_, i) => `${enc(`leads[status][${i}][id]`)}=${i + 1}`).join('&')}`,
      expect: flagged(/^body of \d+ bytes: larger than any amoCRM delivery$/),
    },
    { name: 'a 7 MB body: over Netlify\'s 6 MB request limit, refused with 413', body: `${ACCOUNT}&x=${'B'.repeat(7 * 1024 * 1024)}`, expect: { status: 413 } },
    { name: 'a 10 kB deal name', body: statusHook({ id: 5, status_id: 7, name: 'N'.repeat(10_240) }), expect: flagged(/^leads\[status\]\[0\]: name /) },
  ];
  it.each(cases)('$name', async (c) => {
    const row = await deliver(c);
    if (row && c.name.startsWith('a 5 MB')) {
      expect(Number(row.body_bytes)).toBeGreaterThan(5 * 1024 * 1024);
      expect((row.body as string).length).toBe(256 * 1024); // what is kept of it
    }
  });
});

describe('prototype pollution: keys that would reach Object.prototype are dropped', () => {
  const cases: Case[] = [
    { name: '__proto__[polluted]=1', body: `__proto__[polluted]=1&${ACCOUNT}`, expect: ignored },
    { name: 'constructor[prototype][polluted]=1', body: `constructor[prototype][polluted]=1&${ACCOUNT}`, expect: ignored },
    { name: 'leads[__proto__][polluted]=1', body: `leads[__proto__][polluted]=1&${ACCOUNT}`, expect: ignored },
    { name: 'leads[status][__proto__][id]=5', body: `leads[status][__proto__][id]=5&${ACCOUNT}`, expect: ignored },
    { name: 'leads[status][0][__proto__][id]=5: the lead has no id', body: `leads[status][0][__proto__][id]=5&leads[status][0][status_id]=7&${ACCOUNT}`, expect: flagged(/^leads\[status\]\[0\]: id /) },
    { name: 'account[__proto__][subdomain]: no account is left', body: `account[__proto__][subdomain]=${SUBDOMAIN}&${form(statusPairs({ id: 5, status_id: 7 }))}`, expect: flagged(/^no account\[subdomain\] or account\[id\]/) },
    { name: 'leads[hasOwnProperty]=1', body: `leads[hasOwnProperty]=1&${ACCOUNT}`, expect: ignored },
  ];
  it.each(cases)('$name', async (c) => {
    await deliver(c);
  });
});

describe('hostile strings: accepted, stored verbatim as data, harmless', () => {
  const controls = Array.from({ length: 31 }, (_, i) => String.fromCharCode(i + 1)).join('') + '\x7f';
  const cases: Case[] = [
    { name: 'markup in the name', ...hostileName('<script>alert(document.cookie)</script><img src=x onerror=alert(1)>') },
    { name: 'SQL quotes in the name', ...hostileName(`'); drop table amocrm.deals; -- " OR 1=1 --`) },
    { name: 'every control character but NUL in the name', ...hostileName(`a${controls}z`) },
    { name: 'bidirectional overrides and zero-width marks in the name', ...hostileName('\u202eevil\u202c \u200f\u200b\ufeffname') },
    { name: 'a 9,000-character name: accepted, the mirror keeps 500', ...hostileName('L'.repeat(9_000), 'L'.repeat(500)) },
    {
      // Sent raw (not encoded again): the parser cannot decode them and keeps the text.
      name: 'percent sequences that are not UTF-8 stay as they came',
      ...hostileName('x%C3%28y%ED%A0%80z', 'x%C3%28y%ED%A0%80z', (body) => body.replace(enc('x%C3%28y%ED%A0%80z'), 'x%C3%28y%ED%A0%80z')),
    },
    {
      name: 'markup and SQL in custom fields: the delivery is applied, the body kept verbatim for the operator',
      body: () => statusHook({ id: target.leadId, status_id: STAGE.lesson2, old_status_id: STAGE.lesson1, last_modified: nextModified() }, form([
        ['leads[status][0][custom_fields][0][id]', 501], ['leads[status][0][custom_fields][0][name]', `"><script>x</script>`],
        ['leads[status][0][custom_fields][0][values][0][value]', `'; drop table amocrm.deals; --`],
      ])),
      expect: { status: 200, delivery: 'pending' },
    },
    { name: 'a hostile X-Amocrm-Requestid', headers: { 'x-amocrm-requestid': `'); delete from amocrm.crm_deliveries; --<script>` }, body: ACCOUNT, expect: ignored },
  ];
  it.each(cases)('$name', async (c) => {
    const row = await deliver(c);
    expect(row!.body).toBe(lastBody); // kept as it came
  });
});

describe('NUL and oversized headers: still answered 200 (amoCRM would retry a 5xx and count it against the hook)', () => {
  const cases: Case[] = [
    { name: 'an encoded NUL (%00) in the name', body: statusHook({ id: 5, status_id: 7, name: 'a\u0000b' }), expect: flagged(/name/) },
    { name: 'a raw NUL byte in the body', body: `${statusHook({ id: 5, status_id: 7 })}&x=a\u0000b`, expect: flagged(/NUL|control|body/) },
    { name: 'a 10 kB X-Amocrm-Requestid', headers: { 'x-amocrm-requestid': randomBytes(5_120).toString('hex') }, body: ACCOUNT, expect: ignored },
  ];
  it.each(cases)('$name', async (c) => {
    await deliver(c);
  });
});

describe('after all of it', () => {
  it('a valid delivery is recorded pending and applied: the student\'s deal shows the new stage', async () => {
    const st = await knownStudent('after-all@bad-input.kz');
    const body = statusHook({ id: st.leadId, status_id: STAGE.paid, old_status_id: STAGE.lesson1, last_modified: nextModified(), modified_user_id: 777 });
    const row = await deliver({ name: 'valid', body, expect: { status: 200, delivery: 'pending' } });
    expect(row!.changes).toEqual([expect.objectContaining({ lead_id: st.leadId, action: 'status', status_id: STAGE.paid, pipeline_id: PIPELINE })]);
    expect(await s.t.db.rpc('amocrm_student_deal', { p_user_id: st.userId })).toMatchObject({
      user_id: st.userId, lead_id: st.leadId, mirrored: true, pipeline_id: PIPELINE, status_id: STAGE.paid, closed: null, deleted: false, modified_by: 777,
    });
    // And no answer in this file was a 500: every case asserted its exact status.
    expect(s.log.lines.filter((l) => l.startsWith('❌'))).toEqual([]);
  });
});
