// Screenshots of the console's main views for the README (docs/console-*.png), taken in
// Debian's headless Chromium over a week of demo data: students completing lessons through
// the real path (trigger → pg_net → webhook → amoCRM stand-in), a few with no contact or no
// deal, deals won and lost through amoCRM's hooks, then the week spread over seven days.
//   npx tsx tests/browser/screenshots.ts
import { mkdirSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { STANDIN_ACCOUNT } from '../../dev/amocrm-standin/index.ts';
import { createSyncStack, LOCAL_LAYOUT, LOCAL_SECRETS } from '../../dev/stack/index.ts';
import { memoryLogger } from '../../lib/log.ts';
import { launchChromium, waitFor } from './chromium.ts';

const docs = join(dirname(fileURLToPath(import.meta.url)), '..', '..', 'docs');
const NAMES = ['aida', 'bota', 'dana', 'erlan', 'farida', 'gulnar', 'daniyar', 'zhanna', 'timur', 'saule', 'nurlan', 'aruzhan',
  'asel', 'madina', 'kairat', 'dias', 'alina', 'miras', 'tomiris', 'yerlan', 'kamila', 'arman', 'dariga', 'ilyas', 'zarina',
  'sanzhar', 'aigerim', 'bekzat', 'laura', 'olzhas'];

async function main() {
  const stack = await createSyncStack({
    log: memoryLogger(),
    // No account block on repeated 429s here: pictures, not a rate test (the tests keep it on).
    standin: { latencyMs: [20, 60], blockAfterViolations: 0 },
    env: { AMOCRM_HOOK_SECRET: LOCAL_SECRETS.hookSecret, AMOCRM_SUBDOMAIN: STANDIN_ACCOUNT.subdomain, AMOCRM_ACCOUNT_ID: String(STANDIN_ACCOUNT.id) },
  });
  const browser = await launchChromium();
  try {
    await stack.database.sql(`update amocrm.system_settings set value = 'false' where key = 'lookahead_enabled'`);
    const served = await stack.serve();
    stack.amo.subscribe(`${served.url}/api/amocrm/crm-events/${LOCAL_SECRETS.hookSecret}`, ['status_lead', 'update_lead', 'delete_lead', 'restore_lead']);
    // Waits for the webhooks, then runs the scheduled function (as Netlify would every two
    // minutes) until nothing is left waiting: events a burst deferred are its work.
    let lastSweep = 0;
    const settle = async () => {
      await served.settle(120_000);
      await waitFor('the outbox to settle', async () => {
        const [row] = await stack.database.sql(`select count(*)::int as n from amocrm.sync_events where status in ('pending', 'processing')`);
        if (row!.n === 0) return true;
        if (Date.now() - lastSweep > 1000) {
          lastSweep = Date.now();
          await fetch(`${served.url}/.netlify/functions/amocrm-sweep`, { method: 'POST' });
        }
        return false;
      }, 120_000);
      const [blocked] = await stack.database.sql(`select count(*)::int as n from amocrm.sync_events where last_error_code = 'account_blocked'`);
      if (blocked!.n) throw new Error(`the stand-in blocked the account after ${stack.amo.counts().tooMany} answers 429: the demo would show a blocked account`);
    };
    /** Completions in small groups, as students commit over a day, not as one burst. */
    const completeAll = async (userIds: string[], lesson: number) => {
      for (let i = 0; i < userIds.length; i += 5) {
        for (const id of userIds.slice(i, i + 5)) await stack.complete(id, lesson);
        await settle();
      }
    };

    // 30 students with deals; fewer of them reach each next lesson, as in a real funnel.
    const students = [];
    for (const [i, name] of NAMES.entries()) {
      const ahead = i % 13 === 5; // a deal a manager already moved past lesson 1
      students.push(await stack.addStudent(`${name}@student.kz`, ahead ? { leadStatusId: LOCAL_LAYOUT.stages.lesson3 } : {}));
    }
    const withoutContact = [];
    for (const email of ['no.contact@student.kz', 'typo@studnet.kz', '"><img src=x onerror=alert(1)>@x.kz']) {
      const [u] = await stack.database.sql('insert into auth.users (email) values ($1) returning id', [email]);
      withoutContact.push(u!.id as string);
    }
    const otherPipeline = await stack.addStudent('partner@student.kz', { leads: [{ statusId: LOCAL_LAYOUT.stages.otherPipelineStage, pipelineId: LOCAL_LAYOUT.otherPipelineId }] });

    await completeAll([...students.map((s) => s.userId), ...withoutContact, otherPipeline.userId], 67);
    await completeAll(students.slice(0, 18).map((s) => s.userId), 68);
    await completeAll(students.slice(0, 11).map((s) => s.userId), 69);

    // amoCRM's side: managers close some deals; their hooks reach the platform.
    for (const s of students.slice(0, 4)) stack.amo.managerWin(s.leadId);
    stack.amo.managerLose(students[5]!.leadId);
    await stack.amo.hooksSettled();
    await waitFor('won and lost deals to reach amocrm.deal_changes', async () =>
      (await stack.database.sql(`select count(*)::int as n from amocrm.deal_changes where kind in ('won', 'lost')`))[0]!.n >= 5, 60_000);

    // What a week also holds: an event parked on an unpaid account, one whose retries ran out.
    await stack.database.sql(`update amocrm.sync_events set status = 'parked', last_error_code = 'payment_required',
        last_error = 'amoCRM answered 402 Payment Required: the account subscription has ended', retryable = null
      where id = (select id from amocrm.sync_events where lesson_id = 69 and status = 'done' order by id desc limit 1)`);
    await stack.database.sql(`update amocrm.sync_events set status = 'dead', attempts = 8, last_error_code = 'server_error',
        last_error = 'amoCRM answered 502 Bad Gateway', retryable = true
      where id = (select id from amocrm.sync_events where lesson_id = 68 and status = 'done' order by id desc limit 1)`);

    // The week: each student's events moved back by the same random number of hours (order kept).
    await stack.database.sql(`with shift as (select user_id, (random() * 160)::int * interval '1 hour' as back
                                               from amocrm.sync_events group by user_id),
      moved as (update amocrm.sync_events e set created_at = e.created_at - s.back, updated_at = e.updated_at - s.back,
                  done_at = e.done_at - s.back, next_attempt_at = e.next_attempt_at - s.back
                from shift s where s.user_id = e.user_id returning e.id, s.back)
      update amocrm.event_attempts a set at = a.at - m.back from moved m where m.id = a.event_id`);
    await stack.database.sql(`update amocrm.deal_changes set changed_at = changed_at - (random() * 48)::int * interval '1 hour'`);

    const context = await browser.newContext({
      httpCredentials: { username: 'ops', password: LOCAL_SECRETS.replayToken },
      viewport: { width: 1200, height: 800 }, locale: 'ru-RU', timezoneId: 'Asia/Almaty',
    });
    const page = await context.newPage();
    const base = `${served.url}/api/amocrm/console`;
    const [failed] = await stack.database.sql(`select id::int from amocrm.sync_events where last_error_code = 'contact_not_found' order by id limit 1`);
    const shots: [string, string][] = [
      ['console-funnel.png', `${base}?refresh=0`],
      ['console-health.png', `${base}/health?period=7d&refresh=0`],
      ['console-events.png', `${base}/events?status=failed&refresh=0`],
      ['console-event.png', `${base}/events/${failed!.id}?refresh=0`],
      ['console-student.png', `${base}/student?q=${encodeURIComponent(`${NAMES[0]}@student.kz`)}&refresh=0`],
    ];
    mkdirSync(docs, { recursive: true });
    for (const [file, url] of shots) {
      const res = await page.goto(url);
      if (res?.status() !== 200) throw new Error(`${url} answered ${res?.status()}`);
      await page.screenshot({ path: join(docs, file), fullPage: true });
      console.log(`✅ docs/${file}`);
    }
    // The replay's dry run, as the operator sees it before confirming.
    await page.goto(`${base}/events?status=failed&refresh=0`);
    for (const box of (await page.locator('input[name=ids]').all()).slice(0, 2)) await box.check();
    await page.locator('[data-action=replay-selected]').click();
    await page.locator('[data-metric=would-replay]').waitFor();
    await page.screenshot({ path: join(docs, 'console-replay.png'), fullPage: true });
    console.log('✅ docs/console-replay.png');
  } finally {
    await browser.close();
    await stack.close();
  }
}

main().then(() => process.exit(0), (err) => {
  console.error(`❌ screenshots not taken: ${(err as Error)?.message ?? err}`);
  process.exit(1);
});
