// The operator console in a real browser: Debian's headless Chromium (playwright-core)
// against the real function modules on the local function server, over a database (PGlite,
// or PostgreSQL with DATABASE_URL) whose events were made by students completing lessons
// (trigger → pg_net → webhook → amoCRM stand-in). Figures on the pages are compared with
// counts made here in plain SQL, never with the console's own code.
import type { Browser, BrowserContext, Page } from 'playwright-core';
import { afterAll, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { createSyncStack, LOCAL_LAYOUT, LOCAL_SECRETS, type Served, type Stack } from '../../dev/stack/index.ts';
import { memoryLogger } from '../../lib/log.ts';
import { launchChromium, waitFor } from './chromium.ts';

const HOSTILE_EMAIL = '"><img src=x onerror=alert(1)>@x.kz';
const HOSTILE_REASON = '<script>alert(2)</script><svg onload=alert(3)>';
const STAGES = LOCAL_LAYOUT.stages;

let stack: Stack;
let served: Served;
let browser: Browser;
let ctx: BrowserContext;
let page: Page;
const log = memoryLogger();
const dialogs: string[] = [];
const cspViolations: string[] = [];
let consoleUrl: string;
/** The period every funnel assertion uses, given to the page and to the SQL alike. */
let from: string;
let to: string;

const people: Record<string, { userId: string; leadId?: number }> = {};

async function noContactStudent(email: string): Promise<string> {
  const [u] = await stack.database.sql('insert into auth.users (email) values ($1) returning id', [email]);
  return u!.id as string;
}

/** Every webhook delivered and every event finished (done, skipped, failed…), however slow the machine. */
async function settled(): Promise<void> {
  await served.settle(60_000);
  await waitFor('events to leave pending/processing', async () => {
    const [row] = await stack.database.sql(`select count(*)::int as n from amocrm.sync_events where status in ('pending', 'processing')`);
    return row!.n === 0;
  });
}

const eventOf = async (userId: string, lesson: number) =>
  (await stack.database.sql('select id::int, status, lead_id::int from amocrm.sync_events where user_id = $1 and lesson_id = $2', [userId, lesson]))[0]!;

async function open(path: string): Promise<void> {
  const res = await page.goto(`${consoleUrl}${path}`);
  expect(res?.status(), `${path} answered ${res?.status()}`).toBe(200);
}

const values = (selector: string) => page.locator(selector).evaluateAll((els) => els.map((e) => Number(e.getAttribute('data-value'))));

beforeAll(async () => {
  browser = await launchChromium();
  stack = await createSyncStack({ databaseUrl: process.env.DATABASE_URL || undefined, log });
  await stack.database.sql(`update amocrm.system_settings set value = 'false' where key = 'lookahead_enabled'`);
  served = await stack.serve();
  consoleUrl = `${served.url}/api/amocrm/console`;
  from = new Date(Date.now() - 3_600_000).toISOString();

  // Students who complete lessons and whose deals move: 67 for three, 68 for two, 69 for one.
  for (const [name, lessons] of [['aida', [67, 68, 69]], ['bota', [67, 68]], ['dana', [67]]] as const) {
    const st = await stack.addStudent(`${name}@student.kz`);
    people[name] = st;
    for (const lesson of lessons) {
      await stack.complete(st.userId, lesson);
      await settled();
    }
  }
  // A deal already past lesson 1: skipped, not moved back.
  const ahead = await stack.addStudent('erlan@student.kz', { leadStatusId: STAGES.lesson3 });
  people.erlan = ahead;
  await stack.complete(ahead.userId, 67);
  // No contact in amoCRM with these e-mails: contact_not_found (the hostile one among them).
  for (const name of ['farida', 'gulnar']) {
    people[name] = { userId: await noContactStudent(`${name}@student.kz`) };
    await stack.complete(people[name]!.userId, 67);
  }
  people.hostile = { userId: await noContactStudent(HOSTILE_EMAIL) };
  await stack.complete(people.hostile.userId, 67);
  // Kamila's event is the one the resume test parks and resumes: the others keep theirs.
  people.kamila = { userId: await noContactStudent('kamila@student.kz') };
  await stack.complete(people.kamila.userId, 67);
  await settled();
  // A hostile reason too, as an amoCRM message could carry one.
  await stack.database.sql(`update amocrm.sync_events set last_error = $2 where user_id = $1`, [people.hostile.userId, HOSTILE_REASON]);
  // amoCRM's side: one deal won, one lost (as the hooks record them in amocrm.deal_changes).
  await stack.database.sql(`insert into amocrm.deal_changes (lead_id, user_id, kind, status_id, changed_at, source)
    values ($1, $2, 'won', 142, now(), 'hook'), ($3, $4, 'lost', 143, now(), 'hook')`,
  [people.aida!.leadId, people.aida!.userId, people.bota!.leadId, people.bota!.userId]);
  to = new Date(Date.now() + 3_600_000).toISOString();

  ctx = await browser.newContext({ httpCredentials: { username: 'ops', password: LOCAL_SECRETS.replayToken } });
  page = await ctx.newPage();
  page.on('dialog', (d) => { dialogs.push(d.message()); void d.dismiss(); });
  page.on('console', (m) => { if (/Content Security Policy/i.test(m.text())) cspViolations.push(m.text()); });
}, 180_000);

afterAll(async () => {
  await browser?.close();
  await stack?.close();
});

// Generous per-test limits: on a loaded CI machine a page and its replay can take seconds.
describe('the console in Chromium', { timeout: 90_000 }, () => {
  // Whatever the test before did, nothing is still on its way when the next one starts.
  beforeEach(async () => { await served.settle(60_000); });

  it('the funnel shows the database figures for the period: completions, moves, won and lost, conversion, where students are stuck', async () => {
    await open(`?from=${encodeURIComponent(from)}&to=${encodeURIComponent(to)}&refresh=0`);
    const counts = await stack.database.sql(`select stage_number::int as stage, count(*)::int as completed,
        count(*) filter (where status = 'done')::int as moved
      from amocrm.sync_events where created_at >= $1 and created_at < $2 group by 1 order by 1`, [from, to]);
    const [closed] = await stack.database.sql(`select count(*) filter (where kind = 'won')::int as won, count(*) filter (where kind = 'lost')::int as lost
      from amocrm.deal_changes where changed_at >= $1 and changed_at < $2`, [from, to]);
    expect(counts.map((c) => c.completed)).toEqual([8, 2, 1]); // the arrangement above, so the figures below are not all zero

    expect(await values('table[data-table=funnel] tr[data-step=completed] td[data-value]')).toEqual(counts.map((c) => c.completed));
    expect(await values('table[data-table=funnel] tr[data-step=moved] td[data-value]')).toEqual(counts.map((c) => c.moved));
    expect(await values('table[data-table=funnel] tr[data-step=won] td[data-value]')).toEqual([closed!.won]);
    expect(Number(await page.locator('[data-metric=lost]').getAttribute('data-value'))).toBe(closed!.lost);
    // Conversion from "completed 67" to "deal on stage 1", as a share of the SQL counts.
    const conversion = await page.locator('table[data-table=funnel] tr[data-step=moved][data-stage="1"] td[data-conversion]').textContent();
    expect(conversion).toBe(`${Math.round((counts[0]!.moved / counts[0]!.completed) * 100)}%`);

    const stuck = await stack.database.sql(`select stage_number::int, status, last_error_code as code, count(*)::int as n
      from amocrm.sync_events where created_at >= $1 and created_at < $2 and status <> 'done' group by 1, 2, 3`, [from, to]);
    expect(stuck.length).toBeGreaterThan(0);
    for (const s of stuck) {
      const cell = page.locator(`table[data-table=stuck] tr[data-stuck="${s.stage_number}:${s.status}:${s.code ?? ''}"] td[data-value]`);
      expect(Number(await cell.getAttribute('data-value')), `${s.status}/${s.code}`).toBe(s.n);
    }
    await expect.poll(() => page.locator('table[data-table=stuck]').textContent()).toContain('В amoCRM нет контакта с точным e-mail');
  });

  it('the page script runs under the CSP (times are localized), nothing is refused, and answers are not cached', async () => {
    const res = await page.goto(`${consoleUrl}/health?refresh=0`);
    const headers = res!.headers();
    expect(headers['cache-control']).toBe('no-store');
    expect(headers['content-security-policy']).toMatch(/default-src 'none'; script-src 'nonce-[^']+'; style-src 'nonce-/);
    expect(await page.locator('svg[role=img] rect').count()).toBeGreaterThan(0); // the chart has bars
    // The inline script keeps the server's UTC text as a tooltip when it shows local time.
    await page.locator('header time[title]').waitFor();
    expect(cspViolations).toEqual([]);
  });

  it('filters: status, lesson, e-mail prefix and paging keep to the database', async () => {
    await open('/events?refresh=0');
    await page.locator('form#filters select[name=status]').selectOption('failed');
    await Promise.all([page.waitForURL(/status=failed/), page.locator('form#filters button[type=submit]').click()]);
    const failed = await stack.database.sql(`select id::int from amocrm.sync_events where status = 'failed' order by id desc`);
    expect(await page.locator('table[data-table=events] tbody tr').evaluateAll((rows) => rows.map((r) => Number(r.getAttribute('data-event'))))).toEqual(failed.map((f) => f.id));
    expect(new Set(await page.locator('table[data-table=events] tbody tr').evaluateAll((rows) => rows.map((r) => r.getAttribute('data-status'))))).toEqual(new Set(['failed']));

    await page.locator('form#filters select[name=status]').selectOption('');
    await page.locator('form#filters input[name=lesson]').fill('68');
    await Promise.all([page.waitForURL(/lesson=68/), page.locator('form#filters button[type=submit]').click()]);
    const lesson68 = await stack.database.sql(`select id::int from amocrm.sync_events where lesson_id = 68 order by id desc`);
    expect(await page.locator('table[data-table=events] tbody tr').evaluateAll((rows) => rows.map((r) => Number(r.getAttribute('data-event'))))).toEqual(lesson68.map((e) => e.id));

    await page.locator('form#filters input[name=lesson]').fill('');
    await page.locator('form#filters input[name=q]').fill('bota@');
    await Promise.all([page.waitForURL(/q=bota/), page.locator('form#filters button[type=submit]').click()]);
    const bota = await stack.database.sql(`select id::int from amocrm.sync_events where email like 'bota@%' order by id desc`);
    expect(await page.locator('table[data-table=events] tbody tr').evaluateAll((rows) => rows.map((r) => Number(r.getAttribute('data-event'))))).toEqual(bota.map((e) => e.id));

    // Paging by cursor: two at a time, newest first, each page older than the last, none twice.
    await open('/events?limit=2&refresh=0');
    const seen: number[] = [];
    for (;;) {
      seen.push(...await page.locator('table[data-table=events] tbody tr').evaluateAll((rows) => rows.map((r) => Number(r.getAttribute('data-event')))));
      const next = page.locator('a[data-pager=next]');
      if (!await next.count()) break;
      await Promise.all([page.waitForURL(/before=/), next.click()]);
    }
    const all = await stack.database.sql(`select id::int from amocrm.sync_events order by id desc`);
    expect(seen).toEqual(all.map((e) => e.id));
  });

  it('the student search shows one student\'s lessons, attempts and deal with its amoCRM link', async () => {
    await open('/student?refresh=0');
    await page.locator('input[name=q]').fill('BOTA@student.kz');
    await Promise.all([page.waitForURL(/student\?q=/), page.locator('form[role=search] button').click()]);
    const events = await stack.database.sql(`select id::int from amocrm.sync_events where user_id = $1 order by id`, [people.bota!.userId]);
    expect(await page.locator('h2[data-field=email]').textContent()).toBe('bota@student.kz');
    expect(await page.locator('table[data-table=events] tbody tr').evaluateAll((rows) => rows.map((r) => Number(r.getAttribute('data-event'))))).toEqual(events.map((e) => e.id));
    const [attempts] = await stack.database.sql(`select count(*)::int as n from amocrm.event_attempts a join amocrm.sync_events e on e.id = a.event_id where e.user_id = $1`, [people.bota!.userId]);
    expect(await page.locator('ol[data-list=attempts] li').count()).toBe(attempts!.n);
    expect(await page.locator(`a[data-deal="${people.bota!.leadId}"]`).first().getAttribute('href'))
      .toBe(`${stack.runtime.config.amocrm.baseUrl}/leads/detail/${people.bota!.leadId}`);

    await open(`/student?q=${encodeURIComponent('nobody@student.kz')}&refresh=0`).catch(() => undefined);
    expect(await page.locator('[data-empty=student]').textContent()).toMatch(/не найден/);
  });

  it('a replay from the list: the dry run moves nothing, the confirmation moves the deal in amoCRM', async () => {
    // The operator fixes the cause: farida's contact and deal now exist in amoCRM.
    const leadId = 99_000_001;
    stack.amo.addLead({ id: leadId, name: 'Tripwire: farida', pipelineId: LOCAL_LAYOUT.pipelineId, statusId: STAGES.incoming, updatedAt: Math.floor(Date.now() / 1000) });
    stack.amo.addContact({ id: 99_100_001, name: 'farida', emails: ['farida@student.kz'], leadIds: [leadId] });
    const event = await eventOf(people.farida!.userId, 67);
    expect(event.status).toBe('failed');
    const logFrom = log.lines.length; // this test's own log lines

    await open('/events?status=failed&refresh=0');
    await page.locator(`input[name=ids][value="${event.id}"]`).check();
    await page.locator('[data-action=replay-selected]').click();
    await page.locator('[data-metric=would-replay]').waitFor();
    expect(await page.locator('[data-metric=would-replay]').getAttribute('data-value')).toBe('1');
    expect(await page.locator(`table[data-table=replay] tr[data-event="${event.id}"]`).getAttribute('data-outcome')).toBe('would_replay');
    expect(stack.amo.lead(leadId)!.statusId).toBe(STAGES.incoming); // a dry run sends nothing
    expect((await eventOf(people.farida!.userId, 67)).status).toBe('failed');

    await page.locator('[data-action=confirm-replay]').click();
    await page.locator('[data-metric=replayed]').waitFor();
    expect(await page.locator(`table[data-table=replay] tr[data-event="${event.id}"]`).getAttribute('data-outcome')).toBe('done');
    expect(stack.amo.lead(leadId)!.statusId).toBe(STAGES.lesson1);
    expect(await eventOf(people.farida!.userId, 67)).toMatchObject({ status: 'done', lead_id: leadId });
    expect(log.lines.slice(logFrom).filter((l) => l.includes('Консоль:'))).toEqual([
      expect.stringMatching(/^ℹ️ \[AmoCRM\] Консоль: пробный повтор selected=1 would_replay=1 .*user=ops/),
      expect.stringMatching(/^✅ \[AmoCRM\] Консоль: события повторены selected=1 replayed=1 outcomes=done:1 .*user=ops/),
    ]);
  });

  it('a replay from the event page, with its attempts and what to do', async () => {
    const leadId = 99_000_002;
    stack.amo.addLead({ id: leadId, name: 'Tripwire: gulnar', pipelineId: LOCAL_LAYOUT.pipelineId, statusId: STAGES.incoming, updatedAt: Math.floor(Date.now() / 1000) });
    stack.amo.addContact({ id: 99_100_002, name: 'gulnar', emails: ['gulnar@student.kz'], leadIds: [leadId] });
    const event = await eventOf(people.gulnar!.userId, 67);
    await open(`/events/${event.id}?refresh=0`);
    expect(await page.locator('[data-field=advice]').textContent()).toMatch(/Добавьте e-mail в контакт, затем повторите/);
    expect(await page.locator('ol[data-list=attempts] li').count()).toBe(1);
    await page.locator('[data-action=replay-event]').click();
    await page.locator('[data-action=confirm-replay]').click();
    await page.locator('[data-metric=replayed]').waitFor();
    expect(await page.locator(`table[data-table=replay] tr[data-event="${event.id}"]`).getAttribute('data-outcome')).toBe('done');
    expect(stack.amo.lead(leadId)!.statusId).toBe(STAGES.lesson1);
    await open(`/events/${event.id}?refresh=0`);
    expect(await page.locator('ol[data-list=attempts] li').count()).toBe(2);
    expect(await page.locator(`a[data-deal="${leadId}"]`).first().getAttribute('href')).toBe(`${stack.runtime.config.amocrm.baseUrl}/leads/detail/${leadId}`);
  });

  it('a hostile e-mail and reason render as text: no dialog, no element injected', async () => {
    const event = await eventOf(people.hostile!.userId, 67);
    for (const path of ['/events?refresh=0', `/events/${event.id}?refresh=0`, `/student?q=${encodeURIComponent(people.hostile!.userId)}&refresh=0`]) {
      await open(path);
      const emails = await page.locator('[data-field=email]').allTextContents();
      expect(emails.some((t) => t.includes(HOSTILE_EMAIL)), path).toBe(true);
      expect((await page.locator('[data-field=reason]').allTextContents()).some((t) => t.includes(HOSTILE_REASON)), path).toBe(true);
      expect(await page.locator('img').count(), path).toBe(0);
      expect(await page.locator("main script, [onload], [onerror]").count(), path).toBe(0);
    }
    expect(dialogs).toEqual([]);
    expect(cspViolations).toEqual([]);
  });

  it('auto-refresh reloads the page with its filters', async () => {
    await open('/events?status=failed&refresh=5');
    await page.evaluate(() => { (window as unknown as { marker: number }).marker = 1; });
    await page.waitForEvent('load', { timeout: 30_000 });
    expect(page.url()).toMatch(/status=failed/);
    expect(await page.locator('form#filters select[name=status]').inputValue()).toBe('failed');
    expect(await page.evaluate(() => (window as unknown as { marker?: number }).marker)).toBeUndefined();
  });

  it('an action posted from another site is refused (same-origin check) and logged', async () => {
    await stack.database.sql(`update amocrm.sync_events set status = 'parked', last_error_code = 'payment_required' where user_id = $1`, [people.kamila!.userId]);
    // A page on another origin whose form posts to the console: the browser attaches the
    // operator's Basic credentials, as it would for a forged request.
    const elsewhere = await ctx.newPage();
    await elsewhere.goto(`data:text/html,${encodeURIComponent(`<form method="post" action="${consoleUrl}/resume"><button>go</button></form>`)}`);
    const [res] = await Promise.all([elsewhere.waitForResponse(`${consoleUrl}/resume`), elsewhere.locator('button').click()]);
    await elsewhere.close();
    expect(res.status()).toBe(403);
    expect((await eventOf(people.kamila!.userId, 67)).status).toBe('parked');
    expect(log.lines.at(-1)).toMatch(/^⚠️ \[AmoCRM\] Консоль: действие отклонено action=resume reason=.*(Sec-Fetch-Site: cross-site|Origin: null)/);

    // From the console's own page it works.
    await open('/health?refresh=0');
    await page.locator('[data-action=resume]').click();
    await page.locator('[data-metric=resumed]').waitFor();
    expect(await page.locator('[data-metric=resumed]').getAttribute('data-value')).toBe('1');
    await waitFor('the resumed event to leave parked', async () => (await eventOf(people.kamila!.userId, 67)).status !== 'parked');
  });

  it('each view has a JSON twin for scripts (Bearer, ?format=json or no text/html in Accept)', async () => {
    const bearer = { authorization: `Bearer ${LOCAL_SECRETS.replayToken}` };
    const event = await eventOf(people.bota!.userId, 68);
    for (const path of ['', '/health', '/events?status=done', `/events/${event.id}`, '/student?q=bota%40student.kz']) {
      const res = await fetch(`${consoleUrl}${path}`, { headers: bearer });
      expect([path, res.status, res.headers.get('content-type'), res.headers.get('cache-control')]).toEqual([path, 200, 'application/json; charset=utf-8', 'no-store']);
      expect(await res.json()).toMatchObject({ ok: true });
    }
    const funnel = await (await fetch(`${consoleUrl}?format=json&from=${encodeURIComponent(from)}&to=${encodeURIComponent(to)}`, { headers: bearer })).json();
    const [won] = await stack.database.sql(`select count(*)::int as n from amocrm.deal_changes where kind = 'won' and changed_at >= $1 and changed_at < $2`, [from, to]);
    expect(funnel.won).toBe(won!.n);
    const list = await (await fetch(`${consoleUrl}/events?status=done&format=json`, { headers: bearer })).json();
    const done = await stack.database.sql(`select id::int from amocrm.sync_events where status = 'done' order by id desc limit 50`);
    expect(list.items.map((i: { id: number }) => i.id)).toEqual(done.map((d) => d.id));
  });

  it('an unauthenticated visit gets the Basic challenge, a wrong password too', async () => {
    // Without credentials Chromium is challenged and, having none to give, stops
    // (ERR_INVALID_AUTH_CREDENTIALS, where a person would see the login dialog).
    const anonymous = await browser.newContext();
    try {
      const visit = await anonymous.newPage();
      const [challenge, navigation] = await Promise.all([
        visit.waitForResponse(`${consoleUrl}/events`),
        visit.goto(`${consoleUrl}/events`).then(() => 'loaded', (err: Error) => err.message),
      ]);
      expect(navigation).toMatch(/ERR_INVALID_AUTH_CREDENTIALS/);
      expect(challenge.status()).toBe(401);
      expect(challenge.headers()['www-authenticate']).toMatch(/^Basic realm=/);
      expect(challenge.headers()['cache-control']).toBe('no-store');
    } finally {
      await anonymous.close();
    }
    // A wrong password: the browser shows the 401 answer, which holds no data.
    const wrong = await browser.newContext({ httpCredentials: { username: 'ops', password: 'wrong-password-123' } });
    try {
      const res = await (await wrong.newPage()).goto(`${consoleUrl}/events`);
      expect(res!.status()).toBe(401);
      expect(res!.headers()['www-authenticate']).toMatch(/^Basic realm=/);
      expect(await res!.text()).toMatch(/sign in with HTTP Basic auth/);
      expect(await res!.text()).not.toContain('@student.kz');
    } finally {
      await wrong.close();
    }
  });
});
