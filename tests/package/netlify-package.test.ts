// The functions as Netlify deploys them: packaged by @netlify/zip-it-and-ship-it with the
// site's netlify.toml, unzipped outside the repository, and run on the deploy's Node (the
// major of NODE_VERSION, installed with `npm install node@<major>`, never the Node running
// this test) against a Supabase (PostgREST) stand-in and the amoCRM stand-in.
//
// nft packs a package's `module-sync` export target only when the Node that packages is 22
// or newer, so this test guards netlify.toml's included_files when it runs on Node < 22
// (CI's Node 20), where a missing file shows up as "Cannot find module" at import.
import { mkdtempSync, readdirSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { basename, extname, join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { deployNode, invokePackaged, majorOf, packageFunctions, siteSettings, type PackagedFunction } from '../../dev/netlify-package.ts';
import { startPostgrestStandin, type PostgrestStandin } from '../../dev/postgrest-standin.ts';
import { createStack, type Stack } from '../helpers/stack.ts';

const site = siteSettings();
const deployMajor = majorOf(site.nodeVersion);
const sourceNames = readdirSync(site.functionsDir).filter((f) => /\.(m?ts|m?js)$/.test(f)).map((f) => basename(f, extname(f))).sort();

let node: string;
let outDir: string;
const packages = new Map<string, PackagedFunction>();
const pkg = (name: string) => {
  const p = packages.get(name);
  if (!p) throw new Error(`no package for ${name}; packaged: ${[...packages.keys()].join(', ')}`);
  return p;
};

beforeAll(async () => {
  node = await deployNode(deployMajor); // installs on first run; throws (fails the file) if it cannot
  outDir = mkdtempSync(join(tmpdir(), 'netlify-package-'));
  for (const p of await packageFunctions({ outDir, site })) packages.set(p.name, p);
}, 15 * 60_000);

afterAll(() => {
  if (outDir) rmSync(outDir, { recursive: true, force: true });
});

describe('packaged as Netlify packages them', () => {
  it('packages every function in the functions directory as a v2 function traced by nft', () => {
    expect(sourceNames).toEqual(['amocrm-console', 'amocrm-crm-events', 'amocrm-drain-background', 'amocrm-lesson-completed', 'amocrm-replay', 'amocrm-status', 'amocrm-sweep']);
    expect([...packages.keys()].sort()).toEqual(sourceNames);
    for (const p of packages.values()) {
      expect([p.name, p.result.runtimeAPIVersion, p.result.bundler]).toEqual([p.name, 2, 'nft']);
    }
  });

  it(`runs on nodejs${deployMajor}.x, the runtime Netlify derives from NODE_VERSION`, async () => {
    for (const p of packages.values()) expect([p.name, p.result.runtimeVersion]).toEqual([p.name, `nodejs${deployMajor}.x`]);
    expect(node).not.toBe(process.execPath);
  });

  it('reads each function\'s config as Netlify routes and schedules it', () => {
    const routing = Object.fromEntries([...packages.values()].map((p) => [p.name, {
      paths: (p.result.routes ?? []).map((r) => r.pattern),
      methods: (p.result.routes ?? []).flatMap((r) => r.methods ?? []),
      schedule: p.result.schedule,
      mode: p.result.invocationMode,
    }]));
    expect(routing).toEqual({
      'amocrm-console': { paths: ['/api/amocrm/console', '/api/amocrm/console/:view', '/api/amocrm/console/:view/:id'], methods: [], schedule: undefined, mode: 'stream' },
      'amocrm-crm-events': { paths: ['/api/amocrm/crm-events/:secret'], methods: [], schedule: undefined, mode: 'stream' },
      // v2 functions answer as a stream; the drainer is a background one (15 min, the caller
      // gets 202 at once) by its -background suffix.
      'amocrm-drain-background': { paths: [], methods: [], schedule: undefined, mode: 'background' },
      'amocrm-lesson-completed': { paths: ['/api/amocrm/lesson-completed'], methods: [], schedule: undefined, mode: 'stream' },
      'amocrm-replay': { paths: ['/api/amocrm/replay'], methods: [], schedule: undefined, mode: 'stream' },
      'amocrm-status': { paths: ['/api/amocrm/status'], methods: [], schedule: undefined, mode: 'stream' },
      'amocrm-sweep': { paths: [], methods: [], schedule: '*/2 * * * *', mode: 'stream' },
    });
  });

  it('ships the module-sync files get-intrinsic requires (netlify.toml included_files)', async () => {
    for (const p of packages.values()) {
      for (const dep of ['async-function', 'generator-function', 'async-generator-function']) {
        expect(readdirSync(join(p.dir, 'node_modules', dep)), `${p.name}: node_modules/${dep}`).toContain('require.mjs');
      }
    }
  });
});

// Each invocation starts a fresh Node process that loads ~2.5 MB of JavaScript: generous
// timeouts, so a loaded machine slows the test down instead of failing it.
describe(`invoked on Node ${deployMajor}`, { timeout: 180_000 }, () => {
  let stack: Stack;
  let rest: PostgrestStandin;
  let env: Record<string, string>;
  const operator = () => ({ authorization: `Bearer ${env.AMOCRM_REPLAY_TOKEN}` });

  beforeAll(async () => {
    stack = await createStack();
    rest = await startPostgrestStandin(stack.rt.db);
    env = { ...stack.env, SUPABASE_URL: rest.url, SUPABASE_SERVICE_ROLE_KEY: 'service-role-key-of-the-stand-in' };
  }, 180_000);
  afterAll(async () => {
    await rest?.close();
    await stack?.close();
  });

  it('each function loads and, with an empty environment, tells an unknown caller nothing and the log everything', async () => {
    for (const name of sourceNames) {
      const method = name === 'amocrm-status' ? 'GET' : 'POST';
      const res = await invokePackaged(node, pkg(name), { method, path: '/', headers: { 'content-type': 'application/json' }, body: method === 'POST' ? '{}' : undefined }, {});
      // The hook endpoint without its secret is off (404); the scheduled run has no public
      // URL in production and names what is missing; every other endpoint answers a bare 503.
      expect([name, res.status]).toEqual([name, name === 'amocrm-crm-events' ? 404 : 503]);
      expect(res.json().ok).toBe(false);
      for (const variable of ['AMOCRM_WEBHOOK_SECRET', 'AMOCRM_CLIENT_ID']) {
        if (name === 'amocrm-sweep') expect(res.body, name).toContain(variable);
        else expect(res.body, name).not.toContain(variable);
      }
      if (name !== 'amocrm-crm-events') expect(`${res.stdout}${res.stderr}`, `${name} log`).toMatch(/❌ \[AmoCRM\] Функция не настроена.*AMOCRM_CLIENT_ID/);
      expect(res.stderr, `${name} stderr`).not.toMatch(/\n\s+at /); // no stack trace
    }
  });

  it('status: GET with the operator token answers 200 with the sync at a glance, read through PostgREST', async () => {
    const before = rest.calls.length;
    const res = await invokePackaged(node, pkg('amocrm-status'), { method: 'GET', path: '/api/amocrm/status', headers: operator() }, env);
    expect(res.status).toBe(200);
    expect(res.headers['content-type']).toMatch(/^application\/json/);
    const body = res.json();
    expect(body.ok).toBe(true);
    expect(body.token).toMatchObject({ kind: 'oauth' });
    expect(rest.calls.slice(before)).toContainEqual({ fn: 'amocrm_status', status: 200 });
  });

  it('lesson-completed: a Supabase Database Webhook moves the student\'s deal in amoCRM', async () => {
    const student = await stack.addStudent('packaged@student.kz');
    const lesson1Stage = Number(env.AMOCRM_STAGE_LESSON_1);
    const res = await invokePackaged(node, pkg('amocrm-lesson-completed'), {
      method: 'POST', path: '/api/amocrm/lesson-completed',
      headers: { 'content-type': 'application/json', 'x-webhook-secret': env.AMOCRM_WEBHOOK_SECRET! },
      body: JSON.stringify({
        type: 'INSERT', table: 'lesson_progress', schema: 'public', old_record: null,
        record: { id: 'lp-packaged-67', user_id: student.userId, lesson_id: 67, is_completed: true },
      }),
    }, env);
    expect(res.status, res.body).toBe(200);
    expect(res.json()).toMatchObject({ ok: true, outcome: 'done', moved: true, lead_id: student.leadId, status_id: lesson1Stage });
    expect(stack.amo.lead(student.leadId)?.statusId).toBe(lesson1Stage);
  });

  it('replay: a dry run answers 200 with what it would replay', async () => {
    const res = await invokePackaged(node, pkg('amocrm-replay'), {
      method: 'POST', path: '/api/amocrm/replay',
      headers: { 'content-type': 'application/json', ...operator() },
      body: JSON.stringify({ status: 'failed', dryRun: true }),
    }, env);
    expect(res.status, res.body).toBe(200);
    expect(res.json()).toMatchObject({ ok: true, dryRun: true });
  });

  it('sweep: the scheduled run answers 200 with its JSON report', async () => {
    const res = await invokePackaged(node, pkg('amocrm-sweep'), {
      method: 'POST', path: '/.netlify/functions/amocrm-sweep',
      headers: { 'content-type': 'application/json' }, body: JSON.stringify({ next_run: new Date(Date.now() + 120_000).toISOString() }),
    }, env);
    expect(res.status, res.body).toBe(200);
    const report = res.json();
    expect(report).toMatchObject({ ok: true, stoppedBy: 'empty' });
    expect(typeof report.claimed).toBe('number');
  });

  it('drain-background: refuses a caller without the secret; rung with it, drains a due event and logs one line', async () => {
    const refused = await invokePackaged(node, pkg('amocrm-drain-background'), {
      method: 'POST', path: '/.netlify/functions/amocrm-drain-background', headers: { 'x-webhook-secret': 'wrong' }, body: '{}',
    }, env);
    expect(refused.status).toBe(401);
    const student = await stack.addStudent('drained.packaged@student.kz');
    await stack.complete(student.userId, 67);
    await stack.t.sql(`update amocrm.sync_events set next_attempt_at = now() where user_id = $1`, [student.userId]);
    const res = await invokePackaged(node, pkg('amocrm-drain-background'), {
      method: 'POST', path: '/.netlify/functions/amocrm-drain-background',
      headers: { 'x-webhook-secret': env.AMOCRM_WEBHOOK_SECRET!, 'content-type': 'application/json' }, body: '{}',
    }, env);
    expect(res.status, res.body).toBe(200);
    expect(res.json()).toMatchObject({ ok: true, ran: true, outcomes: { done: 1 }, stoppedBy: 'empty' });
    expect(stack.amo.lead(student.leadId)!.statusId).toBe(Number(env.AMOCRM_STAGE_LESSON_1));
    expect(res.stdout).toMatch(/Очередь разобрана/);
  });
});
