// npm run explore -- [--runs N] [--profile lessons|hooks|all] [--seed S] [--path P] [--only invariant,...] [--database-url URL] [--quiet]
// The seeded interleaving-and-fault explorer (tests/explore/): runs N schedules per profile
// against a fresh stack (PGlite, or a fresh database on the PostgreSQL server given by
// --database-url or DATABASE_URL). Exit 0 every invariant held, 1 one broke (its seed, its
// minimal counterexample and the command that replays it are printed), 2 bad arguments.
import { explore } from '../tests/explore/explore.ts';
import type { InvariantName } from '../tests/explore/invariants.ts';
import { PROFILES, type Profile } from '../tests/explore/scenario.ts';
import { openWorld } from '../tests/explore/world.ts';
import { parseCommandLine, runMain, UsageError } from './cli.ts';

const INVARIANTS: InvariantName[] = ['forward_only', 'closed_untouched', 'changes_once', 'closure_once', 'events_final', 'outcome', 'no_429', 'mirror'];
const USAGE = [
  'Usage: npm run explore -- [--runs N] [--profile lessons|hooks|all] [--seed S] [--path P] [--only invariant,...]',
  '                          [--database-url <postgres-url>] [--quiet]',
  '',
  'Options:',
  '  --runs N                  schedules per profile (default 100)',
  '  --profile P               lessons, hooks or all (default: lessons and hooks)',
  '  --seed S --path P         replay one schedule exactly, as a failure prints it',
  `  --only a,b                fail only on these invariants: ${INVARIANTS.join(', ')}`,
  '  --database-url URL        a PostgreSQL server (a fresh database is made there); default DATABASE_URL, else PGlite',
  '  --quiet                   no line per schedule',
].join('\n');

const OPTIONS = {
  runs: { type: 'string' }, profile: { type: 'string' }, seed: { type: 'string' }, path: { type: 'string' },
  only: { type: 'string' }, 'database-url': { type: 'string' }, quiet: { type: 'boolean' }, help: { type: 'boolean', short: 'h' },
} as const;

await runMain(async () => {
  const { values } = parseCommandLine(process.argv.slice(2), OPTIONS);
  if (values.help) {
    console.log(USAGE);
    return 0;
  }
  const int = (name: string, v: string | undefined, fallback?: number) => {
    if (v === undefined) return fallback;
    if (!/^-?\d+$/.test(v)) throw new UsageError(`--${name} must be an integer, got ${v}`);
    return Number(v);
  };
  const runs = int('runs', values.runs, 100)!;
  if (runs < 1) throw new UsageError('--runs must be at least 1');
  const seed = int('seed', values.seed);
  if (values.path !== undefined && seed === undefined) throw new UsageError('--path needs the --seed it was printed with');
  if (values.profile !== undefined && !PROFILES.includes(values.profile as Profile)) throw new UsageError(`--profile must be one of ${PROFILES.join(', ')}`);
  if (values.path !== undefined && values.profile === undefined) throw new UsageError('--path needs the --profile it was printed with');
  const only = values.only?.split(',').map((s) => s.trim()) as InvariantName[] | undefined;
  for (const name of only ?? []) if (!INVARIANTS.includes(name)) throw new UsageError(`--only: no invariant ${name} (${INVARIANTS.join(', ')})`);
  if (values['database-url']) process.env.DATABASE_URL = values['database-url'];
  const profiles: Profile[] = values.profile ? [values.profile as Profile] : ['lessons', 'hooks'];

  const started = Date.now();
  const w = await openWorld();
  let failed = 0;
  let schedules = 0;
  try {
    for (const profile of profiles) {
      console.log(`── ${profile}${seed !== undefined ? ` (seed ${seed}${values.path ? `, path ${values.path}` : ''})` : ''}`);
      const outcome = await explore(w, { profile, runs, seed, path: values.path, only, progress: values.quiet ? undefined : (l) => console.log(l) });
      schedules += outcome.schedules;
      console.log(outcome.report);
      if (outcome.failed) failed++;
    }
  } finally {
    await w.close();
  }
  const secs = ((Date.now() - started) / 1000).toFixed(1);
  const db = process.env.DATABASE_URL ? 'PostgreSQL' : 'PGlite';
  if (failed) {
    console.log(`❌ explorer: ${failed} of ${profiles.length} profile(s) broke an invariant (${schedules} schedules, ${secs} s, ${db}); replay with the command above`);
    return 1;
  }
  console.log(`✅ explorer: ${schedules} schedules, every invariant held (${secs} s, ${db})`);
  return 0;
}, USAGE);
