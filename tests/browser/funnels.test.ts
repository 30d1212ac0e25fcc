// Editing funnels from the console in headless Chromium, against the real function modules
// over a database (PGlite, or PostgreSQL with DATABASE_URL) and the amoCRM stand-in: the
// funnels in force with their lesson titles and stage names; a change checked, then saved
// with who saved it; a refused change (a check, a broken text, an edit of an older version,
// a post from another site) leaving the configuration in the database as it was; a rollback
// from the history; the funnel page and the student's story showing the funnels. What the
// page says is compared with the database read here in plain SQL.
import type { Browser, BrowserContext, Page } from 'playwright-core';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createSyncStack, LOCAL_LAYOUT, LOCAL_SECRETS, type Served, type Stack } from '../../dev/stack/index.ts';
import { setFunnels } from '../../lib/db/funnels.ts';
import type { Funnel } from '../../lib/funnels/model.ts';
import { memoryLogger } from '../../lib/log.ts';
import { launchChromium } from './chromium.ts';

const STAGES = LOCAL_LAYOUT.stages;
const COURSE_PIPELINE = 7_000_003;

const tripwire = (): Funnel => ({
  key: 'tripwire', name: 'Tripwire', pipelineId: LOCAL_LAYOUT.pipelineId,
  steps: [{ lessons: [67], stageId: STAGES.lesson1 }, { lessons: [68], stageId: STAGES.lesson2 }, { lessons: [69], stageId: STAGES.lesson3 }],
});
const course = (): Funnel => ({
  key: 'course', name: 'Основной курс', pipelineId: COURSE_PIPELINE,
  steps: [{ lessons: [66, 67], stageId: 90_011, note: true }, { lessons: [70], stageId: 90_012, task: { text: 'Позвонить: прошёл бонус', dueMinutes: 45 } }],
});

let stack: Stack;
let served: Served;
let browser: Browser;
let ctx: BrowserContext;
let page: Page;
let consoleUrl: string;
const log = memoryLogger();

/** The versions and the funnels in force, read in plain SQL. */
async function stored() {
  const rows = await stack.database.sql('select version, funnels, changed_by, note from amocrm.funnel_versions order by version desc');
  return { version: rows.length ? Number(rows[0]!.version) : 0, funnels: rows[0]?.funnels as Funnel[] | undefined, rows };
}

/** A known configuration saved directly, so a test starts from it whatever ran before. */
async function start(funnels: Funnel[]) {
  const result = await setFunnels(stack.db, { funnels, changedBy: 'test', expectedVersion: (await stored()).version });
  expect(result.saved).toBe(true);
  return stored();
}

async function openFunnels(): Promise<void> {
  const res = await page.goto(`${consoleUrl}/funnels`);
  expect(res?.status()).toBe(200);
}

/** Types `funnels` into the edit box and presses a button; resolves on the page it leads to. */
async function submit(funnels: unknown, action: 'check-funnels' | 'save-funnels'): Promise<number> {
  await page.locator('#funnels-json').fill(typeof funnels === 'string' ? funnels : JSON.stringify({ funnels }, null, 2));
  const [res] = await Promise.all([page.waitForResponse((r) => r.url() === `${consoleUrl}/funnels` && r.request().method() === 'POST'), page.locator(`[data-action=${action}]`).click()]);
  await page.waitForLoadState();
  return res.status();
}

const problems = () => page.locator('[data-problem]').allTextContents();

beforeAll(async () => {
  browser = await launchChromium();
  stack = await createSyncStack({ databaseUrl: process.env.DATABASE_URL || undefined, log });
  await stack.database.sql(`update amocrm.system_settings set value = 'false' where key = 'lookahead_enabled'`);
  stack.amo.addPipeline({
    id: COURSE_PIPELINE, name: 'Курс',
    statuses: [{ id: 90_001, name: 'Записался', sort: 10 }, { id: 90_011, name: 'Прошёл вводный', sort: 20 }, { id: 90_012, name: 'Прошёл бонус', sort: 30 }],
  });
  served = await stack.serve();
  consoleUrl = `${served.url}/api/amocrm/console`;
  ctx = await browser.newContext({ httpCredentials: { username: 'ops', password: LOCAL_SECRETS.replayToken } });
  page = await ctx.newPage();
}, 180_000);

afterAll(async () => {
  await browser?.close();
  await stack?.close();
});

describe('funnels in the console', { timeout: 90_000 }, () => {
  it('the funnels in force, with lesson titles and stage names; the help explains funnels, notes and tasks', async () => {
    await start([tripwire(), course()]);
    await openFunnels();
    const step = (key: string, n: number, field: string) => page.locator(`[data-funnel=${key}] tr[data-step="${n}"] [data-field=${field}]`).textContent();
    expect(await step('tripwire', 2, 'lessons')).toBe('68 «Урок 2. Первый ассистент»');
    expect(await step('tripwire', 2, 'stage')).toBe(`${STAGES.lesson2} «Урок 2 пройден»`);
    expect(await step('course', 1, 'lessons')).toBe('66 «Вводный урок», 67 «Урок 1. Что умеет AI»');
    expect(await page.locator('[data-funnel=course] tr[data-step="2"] [data-extra=task]').textContent()).toBe('задача: Позвонить: прошёл бонус (срок 45 мин)');
    expect(await page.locator('[data-funnel=course] tr[data-step="1"] [data-extra=note]').count()).toBe(1);
    const help = await page.locator('[data-help=funnels]').textContent();
    for (const word of ['Воронка', 'Заметка', 'Задача', 'только вперёд', 'npm run amocrm -- funnels']) expect(help).toContain(word);
    // The edit box starts from what is in force.
    expect(JSON.parse(await page.locator('#funnels-json').inputValue())).toEqual({ funnels: [tripwire(), course()] });
  });

  it('check, then save: checking saves nothing; saving makes the next version, by the operator, with the note', async () => {
    const before = await start([tripwire()]);
    await openFunnels();
    expect(await submit([tripwire(), course()], 'check-funnels')).toBe(200);
    await page.locator('[data-outcome=checked]').waitFor();
    expect(await stored()).toEqual(before);

    await page.locator('input[name=note]').fill('второй курс');
    expect(await submit([tripwire(), course()], 'save-funnels')).toBe(200);
    expect(await page.locator('[data-outcome=saved]').getAttribute('data-version')).toBe(String(before.version + 1));
    const after = await stored();
    expect(after.version).toBe(before.version + 1);
    expect(after.funnels).toEqual([tripwire(), course()]);
    expect(after.rows[0]).toMatchObject({ changed_by: 'консоль: ops', note: 'второй курс' });
    expect(log.lines.at(-1)).toMatch(new RegExp(`^✅ \\[AmoCRM\\] Консоль: воронки сохранены version=${after.version} funnels=tripwire,course user=ops from_version=${before.version}$`));
    // The page now shows the new version in force.
    expect(await page.locator('[data-funnel=course]').count()).toBe(1);
  });

  it('a change that fails the checks is refused with every problem, the text kept, the configuration as it was', async () => {
    const before = await start([tripwire()]);
    await openFunnels();
    const broken = tripwire();
    broken.steps[1]!.stageId = STAGES.otherPipelineStage;
    broken.steps[2]!.stageId = 142;
    const text = JSON.stringify({ funnels: [broken] });
    expect(await submit(text, 'save-funnels')).toBe(422);
    const shown = await problems();
    expect(shown).toHaveLength(2);
    expect(shown[0]).toMatch(new RegExp(`^воронка «tripwire», шаг 2: этап ${STAGES.otherPipelineStage} из другой воронки amoCRM: ${LOCAL_LAYOUT.otherPipelineId} «Партнёры» → выберите этап`));
    expect(shown[1]).toMatch(/^воронка «tripwire», шаг 3: этап 142 — системный «успешно реализовано»/);
    expect(await page.locator('#funnels-json').inputValue()).toBe(text);
    expect(await stored()).toEqual(before);
    expect(log.lines.at(-1)).toMatch(/^⚠️ \[AmoCRM\] Консоль: воронки не сохранены: проверки не пройдены problems=2 user=ops/);

    expect(await submit('{"funnels": [', 'save-funnels')).toBe(422);
    expect((await problems())[0]).toMatch(/^not JSON: /);
    expect(await stored()).toEqual(before);
  });

  it('an edit of an older version than the one in force is refused, and the newer one stays', async () => {
    const before = await start([tripwire()]);
    await openFunnels(); // the page holds version `before.version`
    const theirs = await start([tripwire(), course()]);
    expect(await submit([course()], 'save-funnels')).toBe(409);
    expect(await page.locator('[data-outcome=stale]').textContent()).toContain(`пока вы правили версию ${before.version}, версию ${theirs.version} сохранил(а) test`);
    expect(await stored()).toEqual(theirs);
  });

  it('a rollback from the history brings an earlier version back as a new one', async () => {
    const old = await start([tripwire(), course()]);
    const newer = await start([tripwire()]);
    await openFunnels();
    await Promise.all([page.waitForResponse(`${consoleUrl}/funnels/rollback`), page.locator(`[data-action=rollback][data-version="${old.version}"]`).click()]);
    await page.locator('[data-outcome=saved]').waitFor();
    const after = await stored();
    expect(after.version).toBe(newer.version + 1);
    expect(after.funnels).toEqual(old.funnels);
    expect(after.rows[0]).toMatchObject({ changed_by: 'консоль: ops' });
    expect(await page.locator(`table[data-table=funnel-history] tr[data-version="${after.version}"]`).count()).toBe(1);
  });

  it('a save or rollback posted from another site is refused (same-origin check), nothing saved', async () => {
    const before = await start([tripwire()]);
    const elsewhere = await ctx.newPage();
    const form = `<form method="post" action="${consoleUrl}/funnels"><input name="version" value="${before.version}"><input name="step" value="save">`
      + `<textarea name="funnels">${JSON.stringify({ funnels: [course()] }).replace(/</g, '&lt;')}</textarea><button>go</button></form>`;
    await elsewhere.goto(`data:text/html,${encodeURIComponent(form)}`);
    const [res] = await Promise.all([elsewhere.waitForResponse(`${consoleUrl}/funnels`), elsewhere.locator('button').click()]);
    await elsewhere.close();
    expect(res.status()).toBe(403);
    expect(await stored()).toEqual(before);
    expect(log.lines.at(-1)).toMatch(/^⚠️ \[AmoCRM\] Консоль: действие отклонено action=funnels reason=/);
  });

  it('scripts: the same actions as JSON with the Bearer token (a refusal is 422 with the problems, a stale version 409)', async () => {
    const before = await start([tripwire()]);
    const post = (path: string, body: unknown) => fetch(`${consoleUrl}${path}`, {
      method: 'POST', body: JSON.stringify(body),
      headers: { authorization: `Bearer ${LOCAL_SECRETS.replayToken}`, 'content-type': 'application/json', accept: 'application/json' },
    });
    const broken = course();
    broken.steps[1]!.lessons = [70, 4040];
    const refused = await post('/funnels', { funnels: [tripwire(), broken], expectedVersion: before.version, save: true });
    expect(refused.status).toBe(422);
    expect(await refused.json()).toMatchObject({ ok: false, saved: false, problems: [{ funnel: 'course', step: 2, problem: 'урока 4040 нет в public.lessons' }] });
    expect(await stored()).toEqual(before);

    const checked = await post('/funnels', { funnels: [tripwire(), course()], expectedVersion: before.version });
    expect(await checked.json()).toMatchObject({ ok: true, saved: false, checked: true, problems: [] });
    expect(await stored()).toEqual(before);

    const saved = await post('/funnels', { funnels: [tripwire(), course()], expectedVersion: before.version, save: true, note: 'из скрипта' });
    expect(await saved.json()).toMatchObject({ ok: true, saved: true, version: before.version + 1 });
    expect((await stored()).rows[0]).toMatchObject({ changed_by: 'консоль: bearer', note: 'из скрипта' });

    const stale = await post('/funnels', { funnels: [tripwire()], expectedVersion: before.version, save: true });
    expect(stale.status).toBe(409);
    expect(await stale.json()).toMatchObject({ ok: false, reason: 'stale', current_version: before.version + 1 });

    const back = await post('/funnels/rollback', { version: before.version });
    expect(await back.json()).toMatchObject({ ok: true, saved: true, version: before.version + 2 });
    expect((await stored()).funnels).toEqual(before.funnels);
  });

  it('the funnel page lists the configured funnels; the student\'s story shows the funnels the student is in', async () => {
    await start([tripwire(), course()]);
    const res = await page.goto(`${consoleUrl}?refresh=0`);
    expect(res?.status()).toBe(200);
    expect(await page.locator('[data-funnel]').evaluateAll((els) => els.map((e) => e.getAttribute('data-funnel')))).toEqual(['tripwire', 'course']);
    expect(await page.locator('[data-funnel=tripwire] tr[data-step="3"] [data-field=stage]').textContent()).toBe(`${STAGES.lesson3} «Урок 3 пройден»`);

    const student = await stack.addStudent(`funnels.${Date.now()}@student.kz`);
    await stack.complete(student.userId, 67);
    const lessons = await stack.database.sql('select distinct lesson_id::int from amocrm.sync_events where user_id = $1', [student.userId]);
    expect(lessons.map((l) => l.lesson_id)).toEqual([67]);
    await page.goto(`${consoleUrl}/student?q=${student.userId}&refresh=0`);
    const rows = page.locator('table[data-table=student-funnels] tr[data-student-funnel]');
    expect(await rows.evaluateAll((els) => els.map((e) => `${e.getAttribute('data-student-funnel')}:${e.getAttribute('data-step')}`))).toEqual(['tripwire:1', 'course:1']);
    await served.settle(60_000);
  });
});
