// `npm run replay`, `npm run bench` and `npm start` as an operator meets them: each way they can go wrong
// (no .env, bad flags, a busy or bad port) ends with one ❌ line that says what to do and
// a non-zero exit, never a stack trace; `replay --embedded` runs on a fresh local stack.
// (doctor and amocrm have theirs in doctor.test.ts and amocrm-cli.test.ts.)
import { createServer, type Server } from 'node:net';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { CRASH_TRACE, emptyDirectory, lastLine, runScript, type CliRun } from './helpers/cli.ts';

function expectCleanEnd(run: CliRun, code: number, stream: 'stdout' | 'stderr', last: RegExp) {
  expect(`${run.stdout}\n${run.stderr}`).not.toMatch(CRASH_TRACE);
  expect(lastLine(run[stream])).toMatch(last);
  expect(run.code).toBe(code);
}

describe('npm run replay', () => {
  const dir = emptyDirectory();
  afterAll(() => dir.remove());
  const replay = (args: string[], env: Record<string, string> = {}) => runScript('scripts/replay.ts', args, { cwd: dir.path, env });

  it('no .env: one ❌ line that says cp .env.example .env or --embedded, exit 1', async () => {
    const run = await replay(['--status', 'failed']);
    expectCleanEnd(run, 1, 'stdout', /^❌ no \.env here \(.*\) and no database in the environment → cp \.env\.example \.env and fill it in, or try a fresh local stack: npm run replay -- --status failed --embedded$/);
  }, 60_000);

  it('an environment without the amoCRM variables: one ❌ line per variable, then what to do, exit 1', async () => {
    // A database the target opens without a connection (Supabase is called over HTTP only
    // when used), so the configuration is what stops the run.
    const run = await replay(['--status', 'failed'], { SUPABASE_URL: 'https://abc.supabase.co', SUPABASE_SERVICE_ROLE_KEY: 'service-role-key' });
    expect(run.stdout).toMatch(/^❌ AMOCRM_SUBDOMAIN: /m);
    expect(run.stdout).toMatch(/^❌ AMOCRM_WEBHOOK_SECRET: /m);
    expectCleanEnd(run, 1, 'stdout', /^❌ configuration incomplete: \d+ variable\(s\) above → fix them in \.env \(see \.env\.example\), or try a fresh local stack with --embedded$/);
  }, 60_000);

  it('--embedded: runs on a fresh local stack, which has nothing to replay; exit 0', async () => {
    const run = await replay(['--status', 'failed', '--embedded']);
    expectCleanEnd(run, 0, 'stdout', /^✅ replayed: 0 event\(s\) \(no event matched\)$/);
  }, 120_000);

  it('bad arguments: usage, then one ❌ line naming the problem, exit 2', async () => {
    const runs = await Promise.all([
      replay(['--status', 'failed', '--bogus']),
      replay([]),
      replay(['--ids', '1,x']),
      replay(['--status', 'done']),
      replay(['--status', 'failed', '--embedded', '--url', 'https://site.example']),
    ]);
    const lasts = [
      /^❌ Unknown option '--bogus' → see the usage above$/,
      /^❌ say which events: --ids 1,2,3 or --status failed → see the usage above$/,
      /^❌ --ids: "x" is not an event id \(a positive integer\), e\.g\. --ids 12,13 → see the usage above$/,
      /^❌ --status: replaying done events needs "force": true → see the usage above$/,
      /^❌ --url replays on the deployed site: it excludes --embedded and --database-url → see the usage above$/,
    ];
    runs.forEach((run, i) => {
      expectCleanEnd(run, 2, 'stderr', lasts[i]!);
      expect(run.stderr).toContain('Usage: npm run replay --');
    });
  }, 60_000);
});

describe('npm run bench', () => {
  it('bad flags: usage, then one ❌ line naming the flag, exit 2', async () => {
    const runs = await Promise.all([
      runScript('scripts/bench.ts', ['--bogus']),
      runScript('scripts/bench.ts', ['--only', 'write,fast']),
      runScript('scripts/bench.ts', ['--latency', '100']),
    ]);
    const lasts = [
      /^❌ Unknown option '--bogus' → see the usage above$/,
      /^❌ --only: unknown section\(s\) fast; the sections are write, calls, latency, burst, tokens, cold(, [a-z]+)* → see the usage above$/,
      /^❌ --latency must be MIN,MAX in ms, e\.g\. 100,300 \(got "100"\) → see the usage above$/,
    ];
    runs.forEach((run, i) => {
      expectCleanEnd(run, 2, 'stderr', lasts[i]!);
      expect(run.stderr).toContain('Usage: npm run bench');
    });
  }, 60_000);

  it('a DATABASE_URL that does not answer: one ❌ line, exit 1', async () => {
    // Accepts and drops every connection: held by the test, so nothing else answers there.
    const server = createServer((socket) => socket.destroy());
    await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
    try {
      const port = (server.address() as { port: number }).port;
      const run = await runScript('scripts/bench.ts', ['--only', 'write'], { env: { DATABASE_URL: `postgres://postgres:pw@127.0.0.1:${port}/postgres` } });
      expectCleanEnd(run, 1, 'stdout', /^❌ .+ \(DEBUG=1 shows the stack trace\)$/);
    } finally {
      await new Promise<void>((resolve) => server.close(() => resolve()));
    }
  }, 60_000);
});

describe('npm start', () => {
  let busy: Server;
  beforeAll(async () => {
    // The test holds the port for the whole test: it is busy, whatever else runs.
    busy = createServer();
    await new Promise<void>((resolve) => busy.listen(0, '127.0.0.1', resolve));
  });
  afterAll(() => new Promise<void>((resolve) => busy.close(() => resolve())));

  it('a busy PORT: one ❌ line naming the port and another to try, exit 1', async () => {
    const port = (busy.address() as { port: number }).port;
    const run = await runScript('dev/start.ts', [], { env: { PORT: String(port) } });
    expectCleanEnd(run, 1, 'stderr', new RegExp(`^❌ port ${port} is busy .* → stop it, or choose another port: PORT=${port + 1} npm start$`));
  }, 120_000);

  it('a PORT that is not a port number: one ❌ line, exit 1', async () => {
    const run = await runScript('dev/start.ts', [], { env: { PORT: 'eighty' } });
    expectCleanEnd(run, 1, 'stderr', /^❌ PORT=eighty is not a port number \(0–65535\) → PORT=8890 npm start$/);
  }, 60_000);
});
