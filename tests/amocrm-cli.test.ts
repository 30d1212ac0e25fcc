// `npm run amocrm -- <command>` over the embedded stack: pipelines with the configured
// stages marked, find-deal explaining an over-matching search, exchange-code storing the
// first pair and resuming parked events, refresh rotating once, store-long-lived; and no
// printed line ever carries a token. The CLI itself: every way it can go wrong ends with
// one ❌ line and an exit code, never a stack trace. `webhooks list|subscribe|unsubscribe`
// manages amoCRM's hook for this deployment and never prints AMOCRM_HOOK_SECRET (nor anyone
// else's secret in another hook's URL).
import { readdirSync, readFileSync, statSync } from 'node:fs';
import { createServer, type Server } from 'node:net';
import { join, relative } from 'node:path';
import { afterAll, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { LOCAL, startEmbedded, type Embedded } from '../dev/embedded.ts';
import { startPostgrestStandin, type PostgrestStandin } from '../dev/postgrest-standin.ts';
import type { CommandContext, CommandResult } from '../lib/ops/command.ts';
import { findDealCommand } from '../lib/ops/find-deal-command.ts';
import { pipelinesCommand } from '../lib/ops/pipelines.ts';
import { exchangeCodeCommand, refreshCommand, storeLongLivedCommand } from '../lib/ops/token-commands.ts';
import { maskDestination, webhooksCommand } from '../lib/ops/hook-subscriptions.ts';
import { memoryLogger } from '../lib/log.ts';
import { CRASH_TRACE, emptyDirectory, lastLine, root, runScript, type CliRun } from './helpers/cli.ts';
import { createStack, STAGE, type Stack } from './helpers/stack.ts';

const TOKEN_SHAPED = /standin-(?:at|rt)-[0-9a-f]+|standin-client-secret|eyJ[A-Za-z0-9_-]{8,}/;
const runCli = (args: string[], options: Parameters<typeof runScript>[2] = {}) => runScript('scripts/amocrm.ts', args, options);

/** Ended on purpose: the exit code, the last line of the stream it belongs to, no stack trace anywhere. */
function expectCleanEnd(run: CliRun, code: number, stream: 'stdout' | 'stderr', last: RegExp) {
  expect(`${run.stdout}\n${run.stderr}`).not.toMatch(CRASH_TRACE);
  expect(lastLine(run[stream])).toMatch(last);
  expect(run.code).toBe(code);
}

/** The JWT's own `exp` (seconds), read here without the code under test. */
const jwtExp = (token: string) => JSON.parse(Buffer.from(token.split('.')[1]!, 'base64url').toString('utf8')).exp as number;

describe('npm run amocrm', () => {
  let app: Embedded;
  let ctx: CommandContext;
  /** Every token value the database has held during the test (and the client secret). */
  const seen = new Set<string>();

  const storedTokens = async () => {
    const { rows } = await app.pg.query<{ kind: string; at: string; rt: string | null; version: string; expires_at: string | null }>(
      `select value->>'kind' as kind, value->>'access_token' as at, value->>'refresh_token' as rt, version::text, value->>'expires_at' as expires_at
         from amocrm.system_settings where key = 'amocrm_tokens'`);
    const row = rows[0]!;
    seen.add(row.at);
    if (row.rt) seen.add(row.rt);
    return { ...row, version: Number(row.version) };
  };
  /** No line carries a token value, the client secret or anything token-shaped. */
  const expectClean = async (result: CommandResult) => {
    await storedTokens();
    const text = result.lines.join('\n');
    expect(text.length).toBeGreaterThan(0);
    for (const value of seen) expect(text).not.toContain(value);
    expect(text).not.toMatch(TOKEN_SHAPED);
  };

  beforeAll(async () => {
    app = await startEmbedded({ log: memoryLogger(), latencyMs: [0, 0] });
    ctx = { db: app.db, env: app.env };
    seen.add(app.env.AMOCRM_CLIENT_SECRET!);
    await storedTokens();
  });
  afterAll(async () => {
    await app?.close();
  });

  it('pipelines: every pipeline and stage with its id, the configured ones marked', async () => {
    const result = await pipelinesCommand(ctx);
    expect(result.exitCode).toBe(0);
    const { lines } = result;
    expect(lines).toContain(`pipeline ${LOCAL.pipelineId}  'Tripwire'   ← AMOCRM_PIPELINE_ID`);
    expect(lines).toContain(`pipeline ${LOCAL.otherPipelineId}  'Партнёры'`);
    expect(lines.find((l) => l.includes(String(LOCAL.stages.lesson2)))).toMatch(/^ {2}70012 +Урок 2 пройден {3}← AMOCRM_STAGE_LESSON_2$/);
    expect(lines.find((l) => l.includes(String(LOCAL.stages.otherPipelineStage)))).toMatch(/^ {2}80001 +Новый партнёр$/);
    expect(lines.filter((l) => l.includes('← AMOCRM_STAGE_LESSON_'))).toHaveLength(3);
    expect(lines.at(-1)).toBe('✅ configured: pipeline \'Tripwire\' (7000001), stages 70011, 70012, 70013');
    await expectClean(result);
  });

  it('pipelines works before the stage ids are known (that is what it is for)', async () => {
    const env = { ...app.env, AMOCRM_PIPELINE_ID: '', AMOCRM_STAGE_LESSON_1: '', AMOCRM_STAGE_LESSON_2: '', AMOCRM_STAGE_LESSON_3: '' };
    const result = await pipelinesCommand({ db: app.db, env });
    expect(result.exitCode).toBe(0);
    expect(result.lines.some((l) => l.includes('←'))).toBe(false);
    expect(result.lines).toContain(`  ${String(LOCAL.stages.lesson1).padEnd(10)} Урок 1 пройден`);
    expect(result.lines.at(-1)).toMatch(/^Save the funnels with these ids \(npm run amocrm -- funnels set <file.json>\), or, while none is saved, set AMOCRM_PIPELINE_ID/);
    // ...but not without the OAuth settings: a refresh with made-up credentials would break the chain.
    const noOauth = await pipelinesCommand({ db: app.db, env: { ...env, AMOCRM_CLIENT_SECRET: '' } });
    expect(noOauth.exitCode).toBe(1);
    expect(noOauth.lines).toEqual([expect.stringMatching(/^❌ AMOCRM_CLIENT_SECRET: /)]);
  });

  it('find-deal explains an over-matching search: the exact contact is used, the look-alike ignored', async () => {
    const maria = await app.addStudent('maria@cli.kz');
    const decoy = await app.addStudent('anna.maria@cli.kz.example'); // contains maria@cli.kz
    const result = await findDealCommand(ctx, '  Maria@CLI.kz ');
    expect(result.exitCode).toBe(0);
    expect(result.chosenLeadId).toBe(maria.leadId);
    expect(result.exactContactIds).toEqual([maria.contactId]);
    expect(result.ignoredContactIds).toEqual([decoy.contactId]);
    const text = result.lines.join('\n');
    expect(text).toContain('contact search returned 2 contact(s)');
    expect(text).toContain(`✓ contact ${maria.contactId} 'maria' <maria@cli.kz>: exact e-mail match, deals ${maria.leadId}`);
    expect(text).toContain(`✗ contact ${decoy.contactId} 'anna.maria' <anna.maria@cli.kz.example>: ignored, over-matched (no e-mail equal to maria@cli.kz)`);
    expect(text).toMatch(new RegExp(`→ deal ${maria.leadId} 'Tripwire: maria@cli\\.kz': pipeline 7000001 'Tripwire', stage 70001 'Новая заявка'`));
    expect(text).not.toContain(`deal ${decoy.leadId}`);
    expect(result.lines.at(-1)).toBe(`✅ chosen deal ${maria.leadId} 'Tripwire: maria@cli.kz' (contact ${maria.contactId}): the only deal of the matching contact in the pipeline`);
    await expectClean(result);

    // The look-alike's own address finds only the look-alike.
    const other = await findDealCommand(ctx, 'anna.maria@cli.kz.example');
    expect(other.chosenLeadId).toBe(decoy.leadId);
    expect(other.ignoredContactIds).toEqual([]);
  });

  it('find-deal says why there is none: no exact contact, or no deal in the pipeline', async () => {
    const nobody = await findDealCommand(ctx, 'nobody@cli.kz');
    expect(nobody.exitCode).toBe(1);
    expect(nobody.chosenLeadId).toBeUndefined();
    expect(nobody.lines.at(-1)).toMatch(/^❌ no deal: no contact holds exactly nobody@cli\.kz/);

    const partner = await app.addStudent('partner@cli.kz');
    app.amo.setLeadStatus(partner.leadId, LOCAL.stages.otherPipelineStage); // moved to the other pipeline
    const moved = await findDealCommand(ctx, 'partner@cli.kz');
    expect(moved.exitCode).toBe(1);
    expect(moved.lines.join('\n')).toContain(`✗ deal ${partner.leadId} 'Tripwire: partner@cli.kz': pipeline 7000002 'Партнёры', stage 80001 'Новый партнёр'`);
    expect(moved.lines.at(-1)).toBe(`❌ no deal: contact(s) ${partner.contactId} have no deal in pipeline 7000001 → create the deal in the Tripwire pipeline`);

    expect((await findDealCommand(ctx, 'not-an-email')).exitCode).toBe(2);
  });

  it('exchange-code stores the first pair, resumes parked events, and the code is single use', async () => {
    const student = await app.addStudent('parked@cli.kz');
    const recorded = await app.db.rpc<{ event_id: number }>('amocrm_record_event', { p_user_id: student.userId, p_lesson_id: 67 });
    await app.pg.query(`update amocrm.sync_events set status = 'parked', last_error_code = 'needs_reauth' where id = $1`, [recorded.event_id]);
    await app.pg.query(`update amocrm.system_settings set value = value || '{"auth_state":"needs_reauth"}'::jsonb where key = 'amocrm_tokens'`);
    const before = await storedTokens();

    const code = app.amo.issueAuthCode();
    const result = await exchangeCodeCommand(ctx, code);
    expect(result.lines.join('\n')).not.toMatch(/❌|⚠️/);
    expect(result.exitCode).toBe(0);
    expect(result.resumedEvents).toBe(1);
    const after = await storedTokens();
    expect(after.version).toBe(before.version + 1);
    expect(after.at).not.toBe(before.at);
    expect(after.rt).not.toBe(before.rt);
    const state = await app.pg.query<{ s: string }>(`select value->>'auth_state' as s from amocrm.system_settings where key = 'amocrm_tokens'`);
    expect(state.rows[0]!.s).toBe('ok');
    const event = await app.pg.query<{ status: string }>('select status from amocrm.sync_events where id = $1', [recorded.event_id]);
    expect(event.rows[0]!.status).toBe('pending');
    expect(result.lines[0]).toMatch(/^✅ tokens stored \(oauth, version \d+\): access token valid until \S+ \(in 24 h\)/);
    expect(result.lines).toContain('✅ parked events resumed: 1 (back to pending; the webhook/scheduled run delivers them)');
    expect(result.lines).toContain("✅ amoCRM answers with the new token: account 'Stand-in School' (standin)");
    await expectClean(result);

    const again = await exchangeCodeCommand(ctx, code);
    expect(again.exitCode).toBe(1);
    expect(again.lines[0]).toMatch(/^❌ .*auth_code_rejected/);
    expect((await storedTokens()).version).toBe(after.version);
    await expectClean(again);
  });

  it('refresh rotates the pair exactly once', async () => {
    const before = await storedTokens();
    const refreshes = app.amo.counts().refreshes;
    const result = await refreshCommand(ctx);
    expect(result.exitCode).toBe(0);
    expect(app.amo.counts().refreshes).toBe(refreshes + 1);
    const after = await storedTokens();
    expect(after.version).toBe(before.version + 1);
    expect(after.rt).not.toBe(before.rt);
    expect(result.lines).toEqual([expect.stringMatching(new RegExp(`^✅ tokens refreshed: version ${before.version} → ${after.version}, access token valid until`))]);
    await expectClean(result);
  });

  it('store-long-lived verifies and stores a long-lived token; refuses an expired or rejected one', async () => {
    const expired = app.amo.issueLongLivedToken(-60);
    const refused = await storeLongLivedCommand(ctx, expired);
    expect(refused.exitCode).toBe(1);
    expect(refused.lines[0]).toMatch(/^❌ this long-lived token expired/);
    expect((await storedTokens()).kind).toBe('oauth');

    const wrong = await storeLongLivedCommand(ctx, 'not-a-token-amocrm-knows');
    expect(wrong.exitCode).toBe(1);
    expect(wrong.lines[0]).toMatch(/^❌ amoCRM rejects this token \(401\): not stored/);
    expect((await storedTokens()).kind).toBe('oauth');

    const token = app.amo.issueLongLivedToken(365 * 86400);
    const result = await storeLongLivedCommand(ctx, token);
    expect(result.exitCode).toBe(0);
    const stored = await storedTokens();
    expect(stored).toMatchObject({ kind: 'long_lived', rt: null });
    expect(Date.parse(stored.expires_at!)).toBe(jwtExp(token) * 1000);
    expect(result.lines[0]).toMatch(/^✅ long-lived token stored \(version \d+\): expires \S+ \(in 365 days\)/);
    expect(result.lines).toContain("✅ amoCRM accepts it: account 'Stand-in School' (standin)");
    for (const r of [refused, wrong, result]) {
      const text = r.lines.join('\n');
      expect(text).not.toContain(token);
      expect(text).not.toContain(expired);
      expect(text).not.toContain('not-a-token-amocrm-knows');
    }
    await expectClean(result);
    // refresh has nothing to rotate for a long-lived token, and says so.
    const refresh = await refreshCommand(ctx);
    expect(refresh.exitCode).toBe(1);
    expect(refresh.lines[0]).toMatch(/^❌ .*no_refresh/);
    // The other tests of this stack expect an OAuth pair, as a deployment has.
    expect((await exchangeCodeCommand(ctx, app.amo.issueAuthCode())).exitCode).toBe(0);
    expect((await storedTokens()).kind).toBe('oauth');
  });

  it('the CLI: `pipelines --embedded` exits 0 with the pipelines; an unknown command: usage, then one ❌ line, exit 2', async () => {
    const [ok, bad] = await Promise.all([runCli(['pipelines', '--embedded']), runCli(['bogus'])]);
    expect(ok.stdout).toContain("pipeline 7000001  'Tripwire'   ← AMOCRM_PIPELINE_ID");
    expectCleanEnd(ok, 0, 'stdout', /^✅ configured: pipeline 'Tripwire' \(7000001\), stages 70011, 70012, 70013$/);
    expect(ok.stdout).not.toMatch(TOKEN_SHAPED);
    expect(bad.stderr).toContain('Usage: npm run amocrm -- <command>');
    expectCleanEnd(bad, 2, 'stderr', /^❌ unknown command: bogus → see the usage above$/);
    expect(bad.stdout).toBe('');
  }, 120_000);
});

describe('npm run amocrm: every failure ends with one ❌ line and an exit code', () => {
  const dir = emptyDirectory();
  afterAll(() => dir.remove());

  it('no .env and no database: says to copy .env.example or use --embedded, exit 1', async () => {
    const run = await runCli(['pipelines'], { cwd: dir.path });
    expectCleanEnd(run, 1, 'stdout', /^❌ no \.env here \(.*\) and no database in the environment → cp \.env\.example \.env and fill it in, or try a fresh local stack: npm run amocrm -- pipelines --embedded$/);
  }, 60_000);

  it('bad arguments: an unknown flag, a missing argument, an extra one, a flag without its value → usage, ❌ naming it, exit 2', async () => {
    const runs = await Promise.all([
      runCli(['pipelines', '--bogus'], { cwd: dir.path }),
      runCli(['find-deal'], { cwd: dir.path }),
      runCli(['refresh', 'now'], { cwd: dir.path }),
      runCli(['pipelines', '--database-url'], { cwd: dir.path }),
      runCli([], { cwd: dir.path }),
    ]);
    const lasts = [
      /^❌ Unknown option '--bogus' → see the usage above$/,
      /^❌ find-deal needs an e-mail → see the usage above$/,
      /^❌ unexpected argument\(s\) after refresh: now → see the usage above$/,
      /^❌ Option '--database-url <value>' argument missing → see the usage above$/,
      /^❌ no command → see the usage above$/,
    ];
    runs.forEach((run, i) => {
      expectCleanEnd(run, 2, 'stderr', lasts[i]!);
      expect(run.stderr).toContain('Usage: npm run amocrm -- <command>');
    });
  }, 60_000);

  describe('a database that does not answer', () => {
    // Accepts and drops every connection: "reachable port, no PostgreSQL", held by the test.
    let server: Server;
    let url: string;
    beforeAll(async () => {
      server = createServer((socket) => socket.destroy());
      await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
      url = `postgres://postgres:secret-password@127.0.0.1:${(server.address() as { port: number }).port}/nowhere`;
    });
    afterAll(() => new Promise<void>((resolve) => server.close(() => resolve())));

    it('--database-url: one ❌ line naming the server (not the password), exit 1', async () => {
      const run = await runCli(['pipelines', '--database-url', url], { cwd: dir.path });
      const port = new URL(url).port;
      expectCleanEnd(run, 1, 'stdout', new RegExp(`^❌ cannot reach PostgreSQL 127\\.0\\.0\\.1:${port}/nowhere: .+ → check --database-url / DATABASE_URL and that the server is running$`));
      expect(run.stdout + run.stderr).not.toContain('secret-password');
    }, 60_000);

    it('a --database-url that is not a postgres:// URL: usage error, exit 2', async () => {
      const run = await runCli(['pipelines', '--database-url', 'https://example.com/db'], { cwd: dir.path });
      expectCleanEnd(run, 2, 'stderr', /^❌ the database URL must be a postgres:\/\/ URL \(got "https:\/\/example\.com\/db"\) → see the usage above$/);
    }, 60_000);
  });
});

describe('npm run amocrm -- webhooks', () => {
  const SECRET = 'cli-hook-secret-5e0b7a1c9d3f2e4a6b8c';
  /** Secrets in other integrations' hook URLs: not ours to print either. */
  const PARTNER_TOKEN = 'partnerTokenValue9f8e7d6c5b4a';
  const PARTNER_PATH_SECRET = 'ab12cd34ef56ab78cd90ef12';
  const SETTINGS = ['status_lead', 'update_lead', 'delete_lead', 'restore_lead'];
  let s: Stack;
  let site: string;
  let env: Record<string, string>;
  const ours = () => `${site}/api/amocrm/crm-events/${SECRET}`;
  const shown = () => `${site}/api/amocrm/crm-events/***`;
  const printed: string[] = [];
  const run = async (action: string, e: Record<string, string | undefined> = env) => {
    const result = await webhooksCommand({ db: s.t.db, env: e }, action);
    printed.push(...result.lines);
    expect(result.lines.join('\n')).not.toContain(SECRET);
    return result;
  };
  const posts = () => s.amo.counts().byRoute['POST /api/v4/webhooks'] ?? 0;

  beforeAll(async () => {
    s = await createStack({ env: { AMOCRM_HOOK_SECRET: SECRET } });
    // As a deployed site has it: the lesson-completed webhook's URL names the site.
    site = 'http://127.0.0.1:9'; // the discard port: nothing answers there, nothing is sent in these tests
    await s.t.sql(`insert into amocrm.system_settings (key, value) values ('webhook_url', to_jsonb($1::text))
      on conflict (key) do update set value = excluded.value`, [`${site}/api/amocrm/lesson-completed`]);
    env = { ...s.env };
  });
  // Each test starts from an account with no hooks and arranges what it needs.
  beforeEach(() => {
    for (const h of s.amo.webhooks()) s.amo.unsubscribe(h.destination);
  });
  const subscribeOurs = (settings = SETTINGS) => s.amo.subscribe(ours(), settings).id;
  const idColumn = (id: number) => String(id).padEnd(6);
  afterAll(async () => {
    const text = printed.join('\n');
    expect(text.length).toBeGreaterThan(0);
    for (const secret of [SECRET, PARTNER_TOKEN, PARTNER_PATH_SECRET, 'pw-of-partner']) expect(text).not.toContain(secret);
    await s?.close();
  });

  it('list with no hook: the count, then ❌ no hook for this deployment → subscribe; exit 1', async () => {
    const result = await run('list');
    expect(result.lines).toEqual([
      `Webhooks of ${s.amo.url}: 0`,
      `❌ no hook points at this deployment (${shown()}) → npm run amocrm -- webhooks subscribe`,
    ]);
    expect(result.exitCode).toBe(1);
  });

  it('subscribe: amoCRM gets the hook at <site>/api/amocrm/crm-events/<secret> with the four lead events; a second run changes nothing', async () => {
    const first = await run('subscribe');
    expect(first.exitCode).toBe(0);
    expect(s.amo.webhooks()).toMatchObject([{ destination: ours(), settings: SETTINGS, disabled: false }]);
    const id = s.amo.webhooks()[0]!.id;
    expect(first.lines.at(-1)).toBe(`✅ subscribed ${shown()} (from webhook_url) to status_lead, update_lead, delete_lead, restore_lead (hook ${id}, enabled)`);

    const before = posts();
    const again = await run('subscribe');
    expect(again.exitCode).toBe(0);
    expect(again.lines).toEqual([`✅ already subscribed: ${shown()} (hook ${id}, enabled) with status_lead, update_lead, delete_lead, restore_lead; nothing changed`]);
    expect(posts()).toBe(before);
  });

  it('list: every hook of the account, ours marked, secret-looking parts of every URL masked, the disabled flag shown', async () => {
    const id = subscribeOurs();
    s.amo.subscribe(`https://partner.example/amo/hook?token=${PARTNER_TOKEN}&v=2`, ['add_contact']);
    s.amo.subscribe(`https://user:pw-of-partner@crm.partner.example/in/${PARTNER_PATH_SECRET}/amocrm`, ['status_lead']);
    s.amo.subscribe(`${site}/api/amocrm/crm-events/old-secret-0123456789abcdef`, ['status_lead']);
    const result = await run('list');
    expect(result.lines).toEqual([
      `Webhooks of ${s.amo.url}: 4`,
      `  ${idColumn(id)} ${shown()}  [status_lead, update_lead, delete_lead, restore_lead]  enabled   ← this deployment`,
      `  ${idColumn(id + 1)} https://partner.example/amo/hook?token=***&v=***  [add_contact]  enabled`,
      `  ${idColumn(id + 2)} https://***@crm.partner.example/in/***/amocrm  [status_lead]  enabled`,
      `  ${idColumn(id + 3)} ${shown()}  [status_lead]  enabled   ← this site, another secret (stale)`,
      `⚠️ 1 other hook(s) point at ${shown()} with another secret (an old AMOCRM_HOOK_SECRET?): they are answered 404 and amoCRM will disable them → delete them in amoCRM → Settings → Integrations → Web hooks`,
      `✅ this deployment's hook (${shown()}) is enabled with status_lead, update_lead, delete_lead, restore_lead`,
    ]);
    expect(result.exitCode).toBe(0);
    expect(result.lines.join('\n')).not.toContain('old-secret-0123456789abcdef');
  });

  it('a hook someone trimmed: subscribe adds the missing events and keeps the ones added by hand', async () => {
    const id = subscribeOurs(['status_lead', 'note_lead']);
    const result = await run('subscribe');
    expect(result.exitCode).toBe(0);
    expect(s.amo.webhooks()).toMatchObject([{ destination: ours(), settings: ['status_lead', 'note_lead', 'update_lead', 'delete_lead', 'restore_lead'] }]);
    expect(result.lines.at(-1)).toBe(`✅ subscribed ${shown()} (from webhook_url) to status_lead, note_lead, update_lead, delete_lead, restore_lead (hook ${id}, enabled)`);
  });

  it('Netlify\'s URL wins over webhook_url', async () => {
    const id = subscribeOurs();
    const result = await run('list', { ...env, URL: 'https://academy.example/' });
    expect(result.lines.at(-1)).toBe('❌ no hook points at this deployment (https://academy.example/api/amocrm/crm-events/***) → npm run amocrm -- webhooks subscribe');
    expect(result.lines[1]).toBe(`  ${idColumn(id)} ${shown()}  [status_lead, update_lead, delete_lead, restore_lead]  enabled`);
  });

  it('a token that is not an admin\'s (403): subscribe and list say what to do instead; exit 1', async () => {
    s.amo.setAdminRights(false);
    try {
      const sub = await run('subscribe');
      expect(sub.exitCode).toBe(1);
      expect(sub.lines).toEqual([
        `❌ amoCRM answered 403 to /api/v4/webhooks: managing webhooks needs an account administrator's token (or the account is blocked) → authorize the integration as an administrator (npm run amocrm -- exchange-code <code>), or add the hook by hand in amoCRM → Settings → Integrations → Web hooks: ${site}/api/amocrm/crm-events/ followed by the value of AMOCRM_HOOK_SECRET, events status_lead, update_lead, delete_lead, restore_lead`,
      ]);
      const list = await run('list');
      expect(list.exitCode).toBe(1);
      expect(list.lines.at(-1)).toMatch(/^❌ amoCRM answered 403 to \/api\/v4\/webhooks: .* or look at the hooks in amoCRM → Settings → Integrations → Web hooks$/);
    } finally {
      s.amo.setAdminRights(true);
    }
  });

  it('unsubscribe removes only this deployment\'s hook; a second run says there is nothing to remove', async () => {
    subscribeOurs();
    const other = `https://partner.example/amo/${PARTNER_PATH_SECRET}`;
    s.amo.subscribe(other, ['status_lead']);
    const first = await run('unsubscribe');
    expect(first).toMatchObject({ exitCode: 0, lines: [`✅ unsubscribed: amoCRM no longer calls ${shown()}`] });
    expect(s.amo.webhooks().map((h) => h.destination)).toEqual([other]);
    const second = await run('unsubscribe');
    expect(second).toMatchObject({ exitCode: 0, lines: [`✅ nothing to unsubscribe: no hook points at ${shown()}`] });
  });

  it('a disabled hook: subscribe does not pretend, it says to find out why and re-enable it; exit 1', async () => {
    // Disabled as amoCRM disables it: deliveries nobody answers. This stand-in disables after
    // its default 100, so the flag is set through a hook the stand-in already failed on: a
    // second stack with hookDisableAfter 0.
    const strict = await createStack({ env: { AMOCRM_HOOK_SECRET: SECRET, URL: site }, standin: { hookDisableAfter: 0 } });
    try {
      const e = { ...strict.env };
      expect((await webhooksCommand({ db: strict.t.db, env: e }, 'subscribe')).exitCode).toBe(0);
      const student = await strict.addStudent('disabled.hook@example.com');
      strict.amo.managerMove(student.leadId, { statusId: STAGE.lesson1 });
      await strict.amo.hooksSettled();
      expect(strict.amo.webhooks()[0]).toMatchObject({ destination: ours(), disabled: true });
      const result = await webhooksCommand({ db: strict.t.db, env: e }, 'subscribe');
      printed.push(...result.lines);
      expect(result.exitCode).toBe(1);
      expect(result.lines).toEqual([
        `❌ the hook for ${shown()} exists but amoCRM disabled it → find out why it was answered with errors (npm run doctor, the crm-events function's log), then re-enable it in amoCRM → Settings → Integrations → Web hooks (or: npm run amocrm -- webhooks unsubscribe, then npm run amocrm -- webhooks subscribe)`,
      ]);
      const list = await webhooksCommand({ db: strict.t.db, env: e }, 'list');
      printed.push(...list.lines);
      expect(list.exitCode).toBe(1);
      expect(list.lines.at(-2)).toBe(`  1      ${shown()}  [status_lead, update_lead, delete_lead, restore_lead]  DISABLED   ← this deployment`);
      expect(list.lines.at(-1)).toMatch(new RegExp(`^❌ this deployment's hook \\(${shown().replace(/[.*/]/g, '\\$&')}\\) is disabled by amoCRM → find out why`));
    } finally {
      await strict.close();
    }
  });

  it('what is missing is said, with what to do: no AMOCRM_HOOK_SECRET, no site address, a site amoCRM cannot reach', async () => {
    const noSecret = { ...env, AMOCRM_HOOK_SECRET: undefined };
    const sub = await run('subscribe', noSecret);
    expect(sub).toMatchObject({ exitCode: 1, lines: ['❌ AMOCRM_HOOK_SECRET is not set: the hook\'s URL is <site>/api/amocrm/crm-events/<AMOCRM_HOOK_SECRET> → set AMOCRM_HOOK_SECRET (openssl rand -hex 24) in Netlify → Site configuration → Environment variables and .env, deploy, then run this again'] });
    const list = await run('list', noSecret);
    expect(list.exitCode).toBe(0);
    expect(list.lines.at(-1)).toMatch(/^ℹ️ AMOCRM_HOOK_SECRET is not set: the reverse direction is off and none of these is this deployment's → to turn it on: /);

    const badSecret = await run('subscribe', { ...env, AMOCRM_HOOK_SECRET: 'short' });
    expect(badSecret).toMatchObject({ exitCode: 1, lines: [expect.stringMatching(/^❌ AMOCRM_HOOK_SECRET: 24–128 letters, digits, _ or - .*→ set it in the environment/)] });

    await s.t.sql(`delete from amocrm.system_settings where key = 'webhook_url'`);
    try {
      const noSite = await run('subscribe');
      expect(noSite).toMatchObject({ exitCode: 1, lines: ['❌ the site address is unknown: URL is not set and the database has no http(s) webhook_url → set URL=https://<site>.netlify.app in .env (Netlify sets it for the functions), or set webhook_url as npm run doctor says'] });
      const notUrl = await run('subscribe', { ...env, URL: 'academy.example' });
      expect(notUrl.lines).toEqual([expect.stringMatching(/^❌ URL is not an http\(s\) address \(15 chars\) → set URL to the site address/)]);
    } finally {
      await s.t.sql(`insert into amocrm.system_settings (key, value) values ('webhook_url', to_jsonb($1::text))`, [`${site}/api/amocrm/lesson-completed`]);
    }

    // The real amoCRM (no AMOCRM_BASE_URL) cannot call this machine: refused before any request.
    const before = s.amo.counts().total;
    const realAmo = { ...env, AMOCRM_BASE_URL: undefined, AMOCRM_SUBDOMAIN: 'academy' };
    const local = await run('subscribe', realAmo);
    expect(local).toMatchObject({ exitCode: 1, lines: [`❌ ${site} (from webhook_url) is this machine: amoCRM cannot call it → set URL to the deployed site, e.g. URL=https://<site>.netlify.app`] });
    expect(s.amo.counts().total).toBe(before);
  });

  it('masking: secret-looking path segments, query values, user info and fragments; slugs of words stay', () => {
    expect(maskDestination('https://site.example/api/amocrm/crm-events/abc', ['abc'])).toBe('https://site.example/api/amocrm/crm-events/***');
    expect(maskDestination('https://site.example/hooks/amocrm-lesson-sync/receive')).toBe('https://site.example/hooks/amocrm-lesson-sync/receive');
    expect(maskDestination('https://site.example/h/0f1e2d3c4b5a69788796a5b4')).toBe('https://site.example/h/***');
    expect(maskDestination('https://site.example/h/AbCdEfGhIjKlMnOpQrSt')).toBe('https://site.example/h/***');
    expect(maskDestination('https://u:p@site.example/h?k=v#frag')).toBe('https://***@site.example/h?k=***#***');
    expect(maskDestination('not a url with a secret 0f1e2d3c4b5a6978')).toBe('(not a URL, 40 chars)');
  });

  describe('as its own process, against this stack through the Supabase Data API (a PostgREST stand-in)', () => {
    let rest: PostgrestStandin;
    let cliEnv: Record<string, string | undefined>;
    const dir = emptyDirectory();
    beforeAll(async () => {
      rest = await startPostgrestStandin(s.t.db);
      cliEnv = { ...env, SUPABASE_URL: rest.url, SUPABASE_SERVICE_ROLE_KEY: 'service-role-key-of-the-stand-in' };
      for (const h of s.amo.webhooks()) s.amo.unsubscribe(h.destination);
    });
    afterAll(async () => {
      dir.remove();
      await rest?.close();
    });
    const cli = async (args: string[], e = cliEnv) => {
      const result = await runCli(['webhooks', ...args], { cwd: dir.path, env: e });
      expect(result.stdout + result.stderr).not.toContain(SECRET);
      return result;
    };

    it('subscribe, list, 403, unsubscribe: one clear last line and an exit code each', async () => {
      const sub = await cli(['subscribe']);
      expectCleanEnd(sub, 0, 'stdout', new RegExp(`^✅ subscribed http://127\\.0\\.0\\.1:9/api/amocrm/crm-events/\\*\\*\\* \\(from webhook_url\\) to status_lead, update_lead, delete_lead, restore_lead \\(hook \\d+, enabled\\)$`));
      expect(s.amo.webhooks()).toMatchObject([{ destination: ours(), settings: SETTINGS, disabled: false }]);

      const list = await cli(['list']);
      expectCleanEnd(list, 0, 'stdout', /^✅ this deployment's hook \(http:\/\/127\.0\.0\.1:9\/api\/amocrm\/crm-events\/\*\*\*\) is enabled with status_lead, update_lead, delete_lead, restore_lead$/);
      expect(list.stdout).toMatch(/← this deployment$/m);

      s.amo.setAdminRights(false);
      try {
        const forbidden = await cli(['unsubscribe']);
        expectCleanEnd(forbidden, 1, 'stdout', /^❌ amoCRM answered 403 to \/api\/v4\/webhooks: managing webhooks needs an account administrator's token .* or delete the hook by hand in amoCRM → Settings → Integrations → Web hooks$/);
      } finally {
        s.amo.setAdminRights(true);
      }
      expect(s.amo.webhooks()).toHaveLength(1);

      const unsub = await cli(['unsubscribe']);
      expectCleanEnd(unsub, 0, 'stdout', /^✅ unsubscribed: amoCRM no longer calls http:\/\/127\.0\.0\.1:9\/api\/amocrm\/crm-events\/\*\*\*$/);
      expect(s.amo.webhooks()).toEqual([]);
    }, 180_000);

    it('no AMOCRM_HOOK_SECRET: ❌ says how to set it, exit 1; a bad or missing subcommand: usage, exit 2', async () => {
      const [noSecret, bogus, none] = await Promise.all([
        cli(['subscribe'], { ...cliEnv, AMOCRM_HOOK_SECRET: undefined }),
        cli(['bogus']),
        cli([]),
      ]);
      expectCleanEnd(noSecret, 1, 'stdout', /^❌ AMOCRM_HOOK_SECRET is not set: .* → set AMOCRM_HOOK_SECRET \(openssl rand -hex 24\) .*then run this again$/);
      expectCleanEnd(bogus, 2, 'stderr', /^❌ webhooks bogus: expected list, subscribe or unsubscribe → see the usage above$/);
      expectCleanEnd(none, 2, 'stderr', /^❌ webhooks needs list, subscribe or unsubscribe → see the usage above$/);
    }, 180_000);
  });

  it('--embedded: subscribe with this secret ends ✅, exit 0; the secret is not printed', async () => {
    const run = await runCli(['webhooks', 'subscribe', '--embedded'], { env: { AMOCRM_HOOK_SECRET: SECRET } });
    expectCleanEnd(run, 0, 'stdout', /^✅ (subscribed|already subscribed:) http:\/\/127\.0\.0\.1:\d+\/api\/amocrm\/crm-events\/\*\*\* /);
    expect(run.stdout + run.stderr).not.toContain(SECRET);
  }, 120_000);
});

describe('production code never loads the embedded stand-in', () => {
  const files = (dir: string): string[] => readdirSync(dir).flatMap((name) => {
    const path = join(dir, name);
    return statSync(path).isDirectory() ? files(path) : /\.(ts|mts)$/.test(name) ? [path] : [];
  });
  const importsDev = (path: string) => /(?:from|import)\s*\(?\s*['"](?:\.\.\/)+dev\//.test(readFileSync(path, 'utf8'));

  it('nothing in lib/ or functions/ imports dev/; of the operator CLIs only scripts/target.ts does', () => {
    const production = [...files(join(root, 'lib')), ...files(join(root, 'functions'))];
    expect(production.length).toBeGreaterThan(10);
    expect(production.filter(importsDev).map((p) => relative(root, p))).toEqual([]);
    const operatorClis = ['cli.ts', 'target.ts', 'doctor.ts', 'amocrm.ts', 'replay.ts'].map((f) => join(root, 'scripts', f));
    expect(operatorClis.filter(importsDev).map((p) => relative(root, p))).toEqual(['scripts/target.ts']);
  });
});
