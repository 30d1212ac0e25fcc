// The operator commands behind `npm run amocrm -- <command>`, as plain functions that
// return the lines to print and an exit code (the script only parses argv and prints):
//   pipelines                 pipelines and stages with ids, the configured ones marked
//   find-deal <email>         the deal the sync would choose for an e-mail, and why
//   exchange-code <code>      first token pair from an authorization code, stored
//   store-long-lived <token>  a private integration's long-lived token, stored
//   refresh                   rotate the token pair now
// No line ever carries a token: they are passed through redact() as a safety net, and
// the commands print expiries, versions and counts, never values.
//
// openTarget() is the connection setup shared with `npm run doctor`: the embedded stack
// (--embedded), a plain PostgreSQL (--database-url / DATABASE_URL) or Supabase from the env.
import { existsSync, readFileSync } from 'node:fs';
import { AmoError } from '../amocrm/errors.ts';
import { databaseRateLimiter } from '../amocrm/rate-limit.ts';
import { LOST_STATUS_ID, WON_STATUS_ID, type AmoResources, type Contact, type Lead, type Pipeline } from '../amocrm/resources.ts';
import { jwtExpiry } from '../amocrm/tokens.ts';
import { ConfigError, loadConfig, parseEnv } from '../config.ts';
import { chooseDeal, normalizeEmail } from '../sync/decide.ts';
import type { Db } from '../db/port.ts';
import { memoryLogger, redact } from '../log.ts';
import { buildRuntime, type Runtime } from '../runtime.ts';

export type EnvSource = Record<string, string | undefined>;

export interface CommandContext {
  db: Db;
  env: EnvSource;
  now?: () => number;
}

export interface CommandResult {
  exitCode: number;
  lines: string[];
}

export interface FindDealResult extends CommandResult {
  chosenLeadId?: number;
  exactContactIds: number[];
  ignoredContactIds: number[];
}

export const USAGE = [
  'Usage: npm run amocrm -- <command> [--embedded] [--database-url <postgres-url>]',
  '',
  'Commands:',
  '  pipelines                 list pipelines and stages with ids (to fill AMOCRM_PIPELINE_ID / AMOCRM_STAGE_LESSON_*)',
  '  find-deal <email>         find the deal for a student e-mail and explain the choice',
  '  exchange-code <code>      exchange an amoCRM authorization code for the first token pair and store it',
  '  store-long-lived <token>  store a long-lived token (private integration)',
  '  refresh                   refresh the token pair now',
  '',
  'Options:',
  '  --embedded                run against the local embedded stack (PGlite + amoCRM stand-in)',
  '  --database-url <url>      a plain PostgreSQL instead of Supabase (default: DATABASE_URL when SUPABASE_URL is absent)',
  '',
  'Production reads the environment (and .env) like the functions: SUPABASE_URL + SUPABASE_SERVICE_ROLE_KEY, AMOCRM_*.',
].join('\n');

const DAY = 86_400_000;
const STAGE_VARS = ['AMOCRM_STAGE_LESSON_1', 'AMOCRM_STAGE_LESSON_2', 'AMOCRM_STAGE_LESSON_3'] as const;
/** Variables a command can do without: filled with inert values, and reported as not configured. */
const LENIENT: Record<string, string> = {
  AMOCRM_PIPELINE_ID: '9007199254740001',
  AMOCRM_STAGE_LESSON_1: '9007199254740002',
  AMOCRM_STAGE_LESSON_2: '9007199254740003',
  AMOCRM_STAGE_LESSON_3: '9007199254740004',
  AMOCRM_WEBHOOK_SECRET: 'not-configured-webhook-secret',
  AMOCRM_REPLAY_TOKEN: 'not-configured-replay-token',
};

const iso = (ms: number) => new Date(ms).toISOString().replace(/\.\d{3}Z$/, 'Z');
const done = (exitCode: number, lines: string[]): CommandResult => ({ exitCode, lines: lines.map(redact) });

function inWords(ms: number): string {
  const abs = Math.abs(ms);
  const text = abs >= 2 * DAY ? `${Math.round(abs / DAY)} days` : abs >= 3_600_000 ? `${Math.round(abs / 3_600_000)} h` : `${Math.max(1, Math.round(abs / 60_000))} min`;
  return ms >= 0 ? `in ${text}` : `${text} ago`;
}

/** One ❌ line (plus what to do) for whatever a command hit. */
export function failureLines(err: unknown): string[] {
  if (err instanceof ConfigError) {
    return err.problems.map((p) => `❌ ${p.variable}: ${p.message} → set it in the environment (Netlify → Environment variables, .env locally)`);
  }
  if (err instanceof AmoError) {
    return [`❌ ${err.message} (${err.code})${err.details.whatToDo ? ` → ${err.details.whatToDo}` : ''}`];
  }
  return [`❌ ${String((err as Error)?.message ?? err)}`];
}

// ---------------------------------------------------------------------------------------------
// The runtime a command uses
// ---------------------------------------------------------------------------------------------

export interface CliRuntime {
  runtime: Runtime;
  /** Whether AMOCRM_PIPELINE_ID / AMOCRM_STAGE_LESSON_n came from the env (not filled in). */
  configured: { pipeline: boolean; stages: [boolean, boolean, boolean] };
}

/**
 * The runtime over `db` from `env`. The pipeline, stage and webhook variables may be
 * missing (`pipelines` is how one finds the stage ids in the first place); the OAuth
 * variables may not: a refresh with made-up client credentials would break the chain.
 */
export function cliRuntime(ctx: CommandContext): CliRuntime {
  const patched: EnvSource = { ...ctx.env };
  const filled = new Set<string>();
  for (let round = 0; ; round++) {
    try {
      parseEnv(patched);
      break;
    } catch (err) {
      if (!(err instanceof ConfigError) || round > 2) throw err;
      const vars = err.problems.map((p) => p.variable);
      if (!vars.every((v) => v in LENIENT)) {
        throw new ConfigError(err.problems.filter((p) => !(p.variable in LENIENT)));
      }
      // Three distinct stages are required; a clash is reported on lesson 1: fill them all.
      const fill = vars.some((v) => STAGE_VARS.includes(v as never) && filled.has(v)) ? [...vars, ...STAGE_VARS] : vars;
      for (const v of fill) {
        patched[v] = LENIENT[v];
        filled.add(v);
      }
    }
  }
  const runtime = buildRuntime(loadConfig(patched), ctx.db, { log: memoryLogger() });
  return {
    runtime,
    configured: {
      pipeline: !filled.has('AMOCRM_PIPELINE_ID'),
      stages: STAGE_VARS.map((v) => !filled.has(v)) as [boolean, boolean, boolean],
    },
  };
}

// ---------------------------------------------------------------------------------------------
// Commands
// ---------------------------------------------------------------------------------------------

export async function pipelinesCommand(ctx: CommandContext): Promise<CommandResult> {
  try {
    const { runtime, configured } = cliRuntime(ctx);
    const { config } = runtime;
    const pipelines = await runtime.invocation(10_000).amo.listPipelines();
    if (pipelines.length === 0) return done(1, ['❌ amoCRM returned no pipelines → check that the integration has access to deals']);
    const lines: string[] = [`Pipelines of ${config.amocrm.baseUrl}:`];
    for (const p of pipelines) {
      const mark = configured.pipeline && p.id === config.pipelineId ? '   ← AMOCRM_PIPELINE_ID' : '';
      lines.push('', `pipeline ${p.id}  '${p.name}'${mark}`);
      for (const s of [...p.statuses].sort((a, b) => a.sort - b.sort)) {
        const marks = config.stageIds
          .map((id, i) => (configured.stages[i] && id === s.id ? STAGE_VARS[i] : undefined))
          .filter(Boolean);
        const system = s.id === WON_STATUS_ID ? ' (system: won)' : s.id === LOST_STATUS_ID ? ' (system: lost)' : '';
        lines.push(`  ${String(s.id).padEnd(10)} ${s.name}${system}${marks.length ? `   ← ${marks.join(', ')}` : ''}`);
      }
    }
    lines.push('');
    if (!configured.pipeline || configured.stages.includes(false)) {
      lines.push('Set AMOCRM_PIPELINE_ID to the Tripwire pipeline and AMOCRM_STAGE_LESSON_1..3 to its three lesson stages.');
    } else {
      const pipeline = pipelines.find((p) => p.id === config.pipelineId);
      const missing = config.stageIds.filter((id) => !pipeline?.statuses.some((s) => s.id === id));
      if (!pipeline) lines.push(`⚠️ AMOCRM_PIPELINE_ID ${config.pipelineId} is not one of these pipelines`);
      else if (missing.length) lines.push(`⚠️ configured stage(s) ${missing.join(', ')} are not in pipeline '${pipeline.name}' (${pipeline.id})`);
      else lines.push(`✅ configured: pipeline '${pipeline.name}' (${pipeline.id}), stages ${config.stageIds.join(', ')}`);
    }
    return done(0, lines);
  } catch (err) {
    return done(1, failureLines(err));
  }
}

export async function findDealCommand(ctx: CommandContext, email: string): Promise<FindDealResult> {
  const result = (exitCode: number, lines: string[], extra: Partial<FindDealResult> = {}): FindDealResult => ({
    ...done(exitCode, lines), exactContactIds: [], ignoredContactIds: [], ...extra,
  });
  const wanted = normalizeEmail(email ?? '');
  if (!/^[^\s@]+@[^\s@]+$/.test(wanted)) return result(2, [`❌ "${email}" is not an e-mail address → npm run amocrm -- find-deal student@example.com`]);
  try {
    const { runtime, configured } = cliRuntime(ctx);
    if (!configured.pipeline) {
      return result(1, ['❌ AMOCRM_PIPELINE_ID is not set: the deal is chosen within the Tripwire pipeline → npm run amocrm -- pipelines, then set it']);
    }
    const pipelineId = runtime.config.pipelineId;
    const amo = runtime.invocation(10_000).amo;
    const contacts = await amo.searchContacts(wanted);
    const exactLeadIds = contacts.filter((c) => c.emails.some((e) => normalizeEmail(e) === wanted)).flatMap((c) => c.leadIds);
    const leads = await amo.getLeads([...new Set(exactLeadIds)]);
    const choice = chooseDeal(wanted, contacts, leads, pipelineId);
    const pipelines = await amo.listPipelines().catch(() => [] as Pipeline[]);
    const pipelineName = (id: number) => pipelines.find((p) => p.id === id)?.name;
    const stageName = (pipeline: number, status: number) => pipelines.find((p) => p.id === pipeline)?.statuses.find((s) => s.id === status)?.name;
    const describeLead = (l: Lead) =>
      `deal ${l.id} '${l.name ?? ''}': pipeline ${l.pipeline_id}${pipelineName(l.pipeline_id) ? ` '${pipelineName(l.pipeline_id)}'` : ''}, stage ${l.status_id}${stageName(l.pipeline_id, l.status_id) ? ` '${stageName(l.pipeline_id, l.status_id)}'` : ''}` +
      `${l.status_id === WON_STATUS_ID ? ' (won)' : l.status_id === LOST_STATUS_ID ? ' (lost)' : ''}, updated ${iso(l.updated_at * 1000)}`;
    const describeContact = (c: Contact) => `contact ${c.id} '${c.name ?? ''}' <${c.emails.join(', ') || 'no e-mail'}>`;

    const lines: string[] = [
      `find-deal ${wanted} in pipeline ${pipelineId}${pipelineName(pipelineId) ? ` '${pipelineName(pipelineId)}'` : ''}`,
      `amoCRM contact search returned ${contacts.length} contact(s); the search matches substrings and names, so only an exact e-mail counts:`,
    ];
    for (const c of choice.exactContacts) {
      lines.push(`  ✓ ${describeContact(c)}: exact e-mail match, deals ${c.leadIds.join(', ') || 'none'}`);
    }
    for (const c of choice.ignoredContacts) {
      lines.push(`  ✗ ${describeContact(c)}: ignored, over-matched (no e-mail equal to ${wanted})`);
    }
    if (choice.exactContacts.length) {
      const outside = leads.filter((l) => !choice.candidates.includes(l));
      lines.push(`Deals of the matching contact(s) in pipeline ${pipelineId}: ${choice.candidates.length}`);
      for (const l of choice.candidates) lines.push(`  ${l.id === choice.lead?.id ? '→' : ' '} ${describeLead(l)}`);
      for (const l of outside) lines.push(`  ✗ ${describeLead(l)}: ${l.is_deleted ? 'deleted' : 'another pipeline'}, not considered`);
    }
    const extra = {
      exactContactIds: choice.exactContacts.map((c) => c.id),
      ignoredContactIds: choice.ignoredContacts.map((c) => c.id),
    };
    if (!choice.lead) {
      const why = choice.reason === 'contact_not_found'
        ? `no contact holds exactly ${wanted} (the search returned ${contacts.length}, none with that e-mail) → check the e-mail in amoCRM, or create the contact with its deal`
        : `contact(s) ${choice.exactContacts.map((c) => c.id).join(', ')} have no deal in pipeline ${pipelineId} → create the deal in the Tripwire pipeline`;
      lines.push(`❌ no deal: ${why}`);
      return result(1, lines, extra);
    }
    const lead = choice.lead;
    const open = choice.candidates.filter((l) => l.status_id !== WON_STATUS_ID && l.status_id !== LOST_STATUS_ID);
    const why = choice.candidates.length === 1
      ? 'the only deal of the matching contact in the pipeline'
      : open.length === 0
        ? `all ${choice.candidates.length} deals are closed: the most recently updated one`
        : open.length === 1 && open[0]!.id === lead.id
          ? `the only open deal of ${choice.candidates.length} (open deals come before won/lost ones)`
          : `the most recently updated of ${open.length} open deals`;
    lines.push(`✅ chosen deal ${lead.id} '${lead.name ?? ''}' (contact ${choice.contactId ?? '?'}): ${why}`);
    return result(0, lines, { ...extra, chosenLeadId: lead.id });
  } catch (err) {
    return result(1, failureLines(err));
  }
}

export async function exchangeCodeCommand(ctx: CommandContext, code: string): Promise<CommandResult & { resumedEvents?: number }> {
  if (!code?.trim()) return done(2, ['❌ no code → npm run amocrm -- exchange-code <code from the redirect, valid 20 minutes>']);
  try {
    const { runtime } = cliRuntime(ctx);
    const inv = runtime.invocation(10_000);
    const pair = await inv.oauth.exchange({ code: code.trim() });
    // Stored the moment amoCRM answers: the pair exists nowhere else.
    const stored = await ctx.db.rpc<{ stored: boolean; version: number; resumed_events: number }>('amocrm_store_tokens', {
      p_kind: 'oauth', p_access_token: pair.accessToken, p_refresh_token: pair.refreshToken, p_expires_at: pair.expiresAt,
    });
    const now = (ctx.now ?? Date.now)();
    const lines = [
      `✅ tokens stored (oauth, version ${stored.version}): access token valid until ${iso(pair.expiresAt.getTime())} (${inWords(pair.expiresAt.getTime() - now)}), refresh token stored (renewed automatically, valid 3 months while in use)`,
      `✅ parked events resumed: ${stored.resumed_events}${stored.resumed_events ? ' (back to pending; the webhook/scheduled run delivers them)' : ''}`,
    ];
    lines.push(...(await accountLine(inv.amo)));
    return { ...done(0, lines), resumedEvents: stored.resumed_events };
  } catch (err) {
    return done(1, failureLines(err));
  }
}

export async function storeLongLivedCommand(ctx: CommandContext, token: string): Promise<CommandResult & { resumedEvents?: number }> {
  const value = token?.trim();
  if (!value) return done(2, ['❌ no token → npm run amocrm -- store-long-lived <token from the integration\'s Keys and scopes tab>']);
  const now = (ctx.now ?? Date.now)();
  const exp = jwtExpiry(value);
  if (exp && exp.getTime() <= now) {
    return done(1, [`❌ this long-lived token expired ${iso(exp.getTime())} → issue a new one in amoCRM (integration → Keys and scopes)`]);
  }
  try {
    // Check it against amoCRM first when the env says where amoCRM is: a wrong token
    // stored would park every event.
    let verified: string | undefined;
    let runtime: Runtime | undefined;
    try {
      runtime = cliRuntime(ctx).runtime;
    } catch {
      runtime = undefined; // no OAuth settings: fine for a long-lived token, just not verified
    }
    if (runtime) {
      // Through the shared limiter like every amoCRM request (7 req/s per integration).
      await databaseRateLimiter(ctx.db, runtime.clock, runtime.config.amocrm.maxRps, 10_000).acquire();
      const res = await runtime.transport.send({ method: 'GET', path: '/api/v4/account' }, value);
      if (res.status === 401) return done(1, ['❌ amoCRM rejects this token (401): not stored → copy the long-lived token again, or issue a new one']);
      const account = res.data as { name?: string; subdomain?: string } | null;
      verified = res.status === 200 ? `amoCRM accepts it: account '${account?.name}' (${account?.subdomain})` : `amoCRM answered ${res.status} to GET /api/v4/account`;
    }
    const stored = await ctx.db.rpc<{ stored: boolean; version: number; resumed_events: number }>('amocrm_store_tokens', {
      p_kind: 'long_lived', p_access_token: value, p_refresh_token: null, p_expires_at: exp ?? null,
    });
    const expiry = exp ? `expires ${iso(exp.getTime())} (${inWords(exp.getTime() - now)})` : 'expiry not readable from the token';
    const lines = [
      `✅ long-lived token stored (version ${stored.version}): ${expiry}`,
      `✅ parked events resumed: ${stored.resumed_events}`,
    ];
    if (verified) lines.push(`${verified.startsWith('amoCRM accepts') ? '✅' : '⚠️'} ${verified}`);
    if (exp && exp.getTime() - now < 30 * DAY) lines.push('⚠️ it expires within 30 days: issue a longer-lived one soon');
    return { ...done(0, lines), resumedEvents: stored.resumed_events };
  } catch (err) {
    return done(1, failureLines(err));
  }
}

export async function refreshCommand(ctx: CommandContext): Promise<CommandResult> {
  try {
    const { runtime } = cliRuntime(ctx);
    const tokens = runtime.invocation(10_000).tokens;
    const before = await tokens.read();
    await tokens.forceRefresh();
    const after = await tokens.read();
    const now = (ctx.now ?? Date.now)();
    const expires = after.expires_at ? Date.parse(after.expires_at) : NaN;
    return done(0, [
      `✅ tokens refreshed: version ${before.version} → ${after.version}, access token valid until ${Number.isFinite(expires) ? `${iso(expires)} (${inWords(expires - now)})` : 'unknown'}; the new refresh token is stored`,
    ]);
  } catch (err) {
    return done(1, failureLines(err));
  }
}

async function accountLine(amo: AmoResources): Promise<string[]> {
  try {
    const account = await amo.getAccount();
    return [`✅ amoCRM answers with the new token: account '${account.name}' (${account.subdomain})`];
  } catch (err) {
    return [`⚠️ stored, but GET /api/v4/account failed: ${failureLines(err)[0]!.replace(/^❌ /, '')}`];
  }
}

/** Dispatches argv (without the options) to a command. Unknown command: usage, exit 2. */
export async function runAmocrmCommand(ctx: CommandContext, args: string[]): Promise<CommandResult> {
  const [command, arg] = args;
  switch (command) {
    case 'pipelines':
      return pipelinesCommand(ctx);
    case 'find-deal':
      return arg ? findDealCommand(ctx, arg) : done(2, ['❌ find-deal needs an e-mail', '', USAGE]);
    case 'exchange-code':
      return arg ? exchangeCodeCommand(ctx, arg) : done(2, ['❌ exchange-code needs the authorization code', '', USAGE]);
    case 'store-long-lived':
      return arg ? storeLongLivedCommand(ctx, arg) : done(2, ['❌ store-long-lived needs the token', '', USAGE]);
    case 'refresh':
      return refreshCommand(ctx);
    default:
      return done(2, [command ? `❌ unknown command: ${command}` : '❌ no command', '', USAGE]);
  }
}

// ---------------------------------------------------------------------------------------------
// Where a CLI run connects (shared with scripts/doctor.ts)
// ---------------------------------------------------------------------------------------------

export interface CliOptions {
  embedded: boolean;
  databaseUrl?: string;
  /** Positional arguments, options removed. */
  args: string[];
}

/** `--embedded`, `--database-url <url>` / `--database-url=<url>`; everything else is positional. */
export function parseCliArgs(argv: string[]): CliOptions {
  const options: CliOptions = { embedded: false, args: [] };
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i]!;
    if (a === '--embedded') options.embedded = true;
    else if (a === '--database-url') options.databaseUrl = argv[++i];
    else if (a.startsWith('--database-url=')) options.databaseUrl = a.slice('--database-url='.length);
    else options.args.push(a);
  }
  return options;
}

export interface Target {
  mode: 'embedded' | 'supabase' | 'postgres' | 'none';
  env: EnvSource;
  db?: Db;
  /** How the database is reached, without credentials. */
  label: string;
  /** Embedded mode: the variables taken from the environment instead of the stack's defaults. */
  overrides: string[];
  /** Whether the deployed functions' Supabase variables must be present (the doctor checks them). */
  requireSupabase: boolean;
  /** Embedded mode: the running stack (tests reach its stand-in through it). */
  embedded?: import('../../dev/embedded.ts').Embedded;
  close(): Promise<void>;
}

/** Reads `.env` into process.env if the file exists (variables already set win). */
export function loadDotEnv(path = '.env', target: EnvSource = process.env): void {
  if (!existsSync(path)) return;
  for (const line of readFileSync(path, 'utf8').split(/\r?\n/)) {
    const m = /^\s*(?:export\s+)?([A-Za-z_][A-Za-z0-9_]*)\s*=\s*(.*?)\s*$/.exec(line);
    if (!m) continue;
    let value = m[2]!;
    const quoted = /^(["'])(.*)\1$/.exec(value);
    if (quoted) value = quoted[1] === '"' ? quoted[2]!.replace(/\\n/g, '\n') : quoted[2]!;
    else value = value.replace(/\s+#.*$/, '');
    if (target[m[1]!] === undefined) target[m[1]!] = value;
  }
}

function describePostgres(url: string): string {
  try {
    const u = new URL(url);
    return `PostgreSQL ${u.hostname}${u.port ? `:${u.port}` : ''}${u.pathname}`;
  } catch {
    return 'PostgreSQL';
  }
}

/**
 * Opens what a CLI run checks or changes. Embedded: the local stack, with its env
 * overridden by any AMOCRM_* variable set in `processEnv` (an empty value removes it).
 * Otherwise the env is `processEnv` (after .env), and the database is --database-url,
 * else Supabase (SUPABASE_URL or SUPABASE_DATABASE_URL + the service-role key), else DATABASE_URL.
 */
export async function openTarget(options: CliOptions, processEnv: EnvSource = process.env): Promise<Target> {
  if (options.embedded) {
    const { startEmbedded } = await import('../../dev/embedded.ts');
    const app = await startEmbedded({ log: memoryLogger(), latencyMs: [0, 0] });
    const overrides = Object.keys(processEnv).filter((k) => k.startsWith('AMOCRM_') && processEnv[k] !== undefined).sort();
    const env: EnvSource = { ...app.env };
    for (const k of overrides) env[k] = processEnv[k];
    return { mode: 'embedded', env, db: app.db, label: 'embedded PGlite (PostgreSQL 17) with the migrations', overrides, requireSupabase: false, embedded: app, close: () => app.close() };
  }

  const env = processEnv;
  const postgres = async (url: string, requireSupabase = false): Promise<Target> => {
    const { pgPoolDb, poolForRpc } = await import('../db/sql-adapters.ts');
    const pool = await poolForRpc(url, 2);
    return { mode: 'postgres', env, db: pgPoolDb(pool), label: describePostgres(url), overrides: [], requireSupabase, close: () => pool.end() };
  };
  if (options.databaseUrl) return postgres(options.databaseUrl);
  const supabaseUrl = [env.SUPABASE_URL, env.SUPABASE_DATABASE_URL].map((v) => v?.trim()).find((v) => v);
  const key = env.SUPABASE_SERVICE_ROLE_KEY?.trim();
  if (supabaseUrl && /^https?:\/\//i.test(supabaseUrl) && key) {
    const { supabaseDb } = await import('../db/supabase.ts');
    return { mode: 'supabase', env, db: supabaseDb(supabaseUrl, key), label: `Supabase ${new URL(supabaseUrl).origin}`, overrides: [], requireSupabase: true, close: async () => undefined };
  }
  if (!env.SUPABASE_URL?.trim() && env.DATABASE_URL?.trim()) return postgres(env.DATABASE_URL.trim());
  if (supabaseUrl && /^postgres(ql)?:\/\//i.test(supabaseUrl)) return postgres(supabaseUrl, true);
  return { mode: 'none', env, label: 'no database', overrides: [], requireSupabase: true, close: async () => undefined };
}
