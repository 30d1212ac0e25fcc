// npm run replay -- --status failed [--from ISO] [--to ISO] [--limit N] [--dry-run] [--force]
// npm run replay -- --ids 12,13 [--force]
// Runs in-process against the database of the environment (.env / SUPABASE_*), with no
// function time limit, following the continuation until done. With --url <site> it goes
// through POST <site>/api/amocrm/replay with AMOCRM_REPLAY_TOKEN instead.
import { existsSync } from 'node:fs';
import { parseArgs } from 'node:util';
import { redact } from '../lib/log.ts';
import { replayRequestSchema, runReplay, type ReplayResult } from '../lib/sync/replay.ts';

if (existsSync('.env')) process.loadEnvFile('.env');

const { values } = parseArgs({
  options: {
    ids: { type: 'string' }, status: { type: 'string' }, from: { type: 'string' }, to: { type: 'string' },
    limit: { type: 'string' }, 'dry-run': { type: 'boolean' }, force: { type: 'boolean' }, url: { type: 'string' },
    help: { type: 'boolean', short: 'h' },
  },
});
if (values.help || (!values.ids && !values.status)) {
  console.log('usage: npm run replay -- (--ids 1,2,3 | --status failed|dead|parked|skipped|done) [--from ISO] [--to ISO] [--limit N] [--dry-run] [--force] [--url https://site]');
  process.exit(values.help ? 0 : 2);
}
const parsed = replayRequestSchema.safeParse({
  ids: values.ids?.split(',').map((x) => Number(x.trim())),
  status: values.status, from: values.from, to: values.to,
  limit: values.limit ? Number(values.limit) : undefined, dryRun: values['dry-run'], force: values.force,
});
if (!parsed.success) {
  const issue = parsed.error.issues[0]!;
  console.error(`❌ ${issue.path.join('.') || 'arguments'}: ${issue.message}`);
  process.exit(2);
}

const print = (r: ReplayResult) => {
  for (const item of r.results) {
    const mark = item.outcome === 'done' || item.outcome === 'would_replay' ? '✅' : item.outcome === 'skipped' ? '⚠️' : '❌';
    console.log(redact(`${mark} event ${item.id}: ${item.before} → ${item.outcome}${item.lead_id ? ` lead=${item.lead_id}` : ''}${item.code ? ` code=${item.code}` : ''}${item.message ? ` (${item.message})` : ''}`));
  }
};

let request = parsed.data;
let total = 0;
while (true) {
  let result: ReplayResult;
  if (values.url) {
    const res = await fetch(new URL('/api/amocrm/replay', values.url), {
      method: 'POST',
      headers: { authorization: `Bearer ${process.env.AMOCRM_REPLAY_TOKEN ?? ''}`, 'content-type': 'application/json' },
      body: JSON.stringify(request),
    });
    const body = await res.json().catch(() => ({ error: `HTTP ${res.status}` }));
    if (!res.ok) {
      console.error(`❌ replay failed: HTTP ${res.status} ${redact(String(body.error ?? ''))}`);
      process.exit(1);
    }
    result = body;
  } else {
    const { runtimeFromEnv } = await import('../lib/runtime.ts');
    result = await runReplay(await runtimeFromEnv(), request, Number.POSITIVE_INFINITY);
  }
  print(result);
  total += result.results.length;
  if (result.complete || !result.next) break;
  request = { ...request, afterId: result.next.afterId };
}
console.log(`${parsed.data.dryRun ? 'would replay' : 'replayed'}: ${total} event(s)`);
process.exit(0);
