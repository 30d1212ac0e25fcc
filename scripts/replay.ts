// npm run replay -- --status failed [--from ISO] [--to ISO] [--limit N] [--dry-run] [--force]
// npm run replay -- --ids 12,13 [--force]
// Runs in-process against the target of scripts/target.ts (.env / SUPABASE_*, --database-url,
// or --embedded: a fresh local stack), with no function time limit, following the
// continuation until done. With --url <site> it goes through POST <site>/api/amocrm/replay
// with AMOCRM_REPLAY_TOKEN instead. Exit 0 when every event ended well, 1 otherwise.
import { loadConfig } from '../lib/config.ts';
import { redact } from '../lib/log.ts';
import { buildRuntime, type Runtime } from '../lib/runtime.ts';
import { replayRequestSchema, runReplay, type ReplayRequest, type ReplayResult } from '../lib/sync/replay.ts';
import { CliFailure, parseCommandLine, runMain, UsageError } from './cli.ts';
import { openTarget, readEnvironment, requireDatabase, TARGET_OPTIONS, TARGET_USAGE, type Target } from './target.ts';

const USAGE = [
  'Usage: npm run replay -- (--ids 1,2,3 | --status failed|dead|parked|skipped|done) [--from ISO] [--to ISO] [--limit N] [--dry-run] [--force]',
  '                         [--embedded | --database-url <postgres-url> | --url https://<site>]',
  '',
  'Options:',
  TARGET_USAGE,
  '  --url https://<site>      through the deployed replay endpoint, with AMOCRM_REPLAY_TOKEN',
].join('\n');

const OPTIONS = {
  ...TARGET_OPTIONS,
  ids: { type: 'string' }, status: { type: 'string' }, from: { type: 'string' }, to: { type: 'string' },
  limit: { type: 'string' }, 'dry-run': { type: 'boolean' }, force: { type: 'boolean' }, url: { type: 'string' },
  help: { type: 'boolean', short: 'h' },
} as const;

const GOOD = new Set(['done', 'would_replay']);

function printItems(r: ReplayResult): void {
  for (const item of r.results) {
    const mark = GOOD.has(item.outcome) ? '✅' : item.outcome === 'skipped' ? '⚠️' : '❌';
    console.log(redact(`${mark} event ${item.id}: ${item.before} → ${item.outcome}${item.lead_id ? ` lead=${item.lead_id}` : ''}${item.code ? ` code=${item.code}` : ''}${item.message ? ` (${item.message})` : ''}`));
  }
}

/** One page through the deployed endpoint. */
async function replayOverHttp(site: string, token: string, request: ReplayRequest): Promise<ReplayResult> {
  let endpoint: URL;
  try {
    endpoint = new URL('/api/amocrm/replay', site);
  } catch {
    throw new UsageError(`--url must be the site's address, e.g. https://<site>.netlify.app (got "${site}")`);
  }
  let res: Response;
  try {
    res = await fetch(endpoint, {
      method: 'POST',
      headers: { authorization: `Bearer ${token}`, 'content-type': 'application/json' },
      body: JSON.stringify(request),
    });
  } catch (err) {
    const cause = (err as { cause?: { code?: string; message?: string } }).cause;
    throw new CliFailure(`cannot reach ${endpoint.origin}: ${cause?.code ?? cause?.message ?? (err as Error).message} → check --url`);
  }
  const body = await res.json().catch(() => undefined) as (ReplayResult & { error?: string }) | undefined;
  if (!res.ok || !body) {
    throw new CliFailure(`replay endpoint answered HTTP ${res.status}${body?.error ? `: ${body.error}` : ''}${res.status === 401 ? ' → AMOCRM_REPLAY_TOKEN must equal the one set on Netlify' : ''}`);
  }
  return body;
}

await runMain(async () => {
  const { values, positionals } = parseCommandLine(process.argv.slice(2), OPTIONS, true);
  if (values.help) {
    console.log(USAGE);
    return 0;
  }
  if (positionals.length) throw new UsageError(`unexpected argument(s): ${positionals.join(' ')}`);
  if (!values.ids && !values.status) throw new UsageError('say which events: --ids 1,2,3 or --status failed');
  if (values.url && (values.embedded || values['database-url'])) throw new UsageError('--url replays on the deployed site: it excludes --embedded and --database-url');
  const ids = values.ids?.split(',').map((x) => x.trim());
  const notAnId = ids?.find((x) => !/^\d+$/.test(x));
  if (notAnId !== undefined) throw new UsageError(`--ids: "${notAnId}" is not an event id (a positive integer), e.g. --ids 12,13`);
  const parsed = replayRequestSchema.safeParse({
    ids: ids?.map(Number),
    status: values.status, from: values.from, to: values.to,
    limit: values.limit ? Number(values.limit) : undefined, dryRun: values['dry-run'], force: values.force,
  });
  if (!parsed.success) {
    const issue = parsed.error.issues[0]!;
    throw new UsageError(`--${String(issue.path[0] ?? 'arguments').replace('dryRun', 'dry-run')}: ${issue.message}`);
  }

  let page: (request: ReplayRequest) => Promise<ReplayResult>;
  let target: Target | undefined;
  if (values.url) {
    const { env } = readEnvironment();
    const token = env.AMOCRM_REPLAY_TOKEN?.trim();
    if (!token) throw new CliFailure('AMOCRM_REPLAY_TOKEN is not set → put the value set on Netlify into .env (or the environment)');
    page = (request) => replayOverHttp(values.url!, token, request);
  } else {
    target = await openTarget(values);
    const db = requireDatabase(target, `npm run replay -- ${values.ids ? `--ids ${values.ids}` : `--status ${values.status}`} --embedded`);
    const runtime: Runtime = buildRuntime(loadConfig(target.env), db);
    page = (request) => runReplay(runtime, request, Number.POSITIVE_INFINITY);
  }

  try {
    let request = parsed.data;
    let listed = 0;
    let wouldReplay = 0;
    let replayed = 0;
    let bad = 0;
    while (true) {
      const result = await page(request);
      printItems(result);
      listed += result.results.length;
      wouldReplay += result.results.filter((r) => r.outcome === 'would_replay').length;
      replayed += result.replayed ?? result.results.filter((r) => GOOD.has(r.outcome)).length;
      // A dry run changes nothing, so nothing in it failed: events it would not replay
      // (done without --force, say) are listed, not counted as failures.
      if (!parsed.data.dryRun) bad += result.results.filter((r) => !GOOD.has(r.outcome) && r.outcome !== 'skipped').length;
      if (result.complete || !result.next) break;
      request = { ...request, afterId: result.next.afterId };
    }
    const dry = parsed.data.dryRun;
    const counted = dry ? `would replay: ${wouldReplay} event(s)` : `replayed: ${replayed} event(s)`;
    console.log(`${bad ? '❌' : '✅'} ${counted}${bad ? `; ${bad} not done (❌ above)` : ''}${listed === 0 ? ' (no event matched)' : ''}`);
    return bad ? 1 : 0;
  } finally {
    await target?.close().catch(() => undefined);
  }
}, USAGE);
