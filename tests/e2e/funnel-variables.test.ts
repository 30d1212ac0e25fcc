// AMOCRM_PIPELINE_ID and AMOCRM_STAGE_LESSON_1..3 make the first funnel only while none is
// saved. Without them and with none saved the deploy is not configured (the caller checked
// first, the answer names what to set); once a funnel is saved a deploy without them works,
// and one whose variables disagree follows the saved funnels.
import { afterAll, beforeAll, beforeEach, describe, expect, it, vi } from 'vitest';
import { ConfigError, FUNNEL_VARS, readConfig } from '../../lib/config.ts';
import { currentFunnels, setFunnels } from '../../lib/db/funnels.ts';
import { handleLessonCompleted } from '../../lib/http/lesson-completed.ts';
import { buildRuntime, requireFunnels } from '../../lib/runtime.ts';
import { sign } from '../../lib/lesson-webhook/verify.ts';
import { createStack, dbWebhookBody, PIPELINE, STAGE, WEBHOOK_SECRET, type Stack } from '../helpers/stack.ts';

let s: Stack;
beforeAll(async () => { s = await createStack(); });
afterAll(async () => { await s?.close(); });
// Each test starts with no funnel saved, as a fresh deployment has.
beforeEach(async () => { await s.t.sql('delete from amocrm.funnel_versions'); });

const without = (env: Record<string, string>, drop: readonly string[]) => Object.fromEntries(Object.entries(env).filter(([k]) => !drop.includes(k)));
const runtimeWith = (env: Record<string, string>) => buildRuntime(readConfig(env).config!, s.rt.db, { transport: s.rt.transport, log: s.log, clock: s.rt.clock });
const body = JSON.stringify(dbWebhookBody('00000000-0000-4000-8000-000000000001', 67));
const signed = () => {
  const id = `evt_vars_${Math.random().toString(36).slice(2)}`;
  const ts = String(Math.floor(Date.now() / 1000));
  return new Request('http://localhost/api/amocrm/lesson-completed', { method: 'POST', headers: { 'content-type': 'application/json', 'webhook-id': id, 'webhook-timestamp': ts, 'webhook-signature': sign(WEBHOOK_SECRET, id, ts, body) }, body });
};

describe('reading the variables', () => {
  it('all four unset: no problem, no first funnel', () => {
    const reading = readConfig(without(s.env, FUNNEL_VARS));
    expect(reading.problems).toEqual([]);
    expect(reading.config).toBeDefined();
    expect(reading.config!.pipelineId).toBeUndefined();
  });

  it('half of them: each missing one is a problem that says so', () => {
    const reading = readConfig(without(s.env, ['AMOCRM_STAGE_LESSON_2', 'AMOCRM_STAGE_LESSON_3']));
    expect(reading.config).toBeUndefined();
    expect(reading.problems.map((p) => p.variable)).toEqual(['AMOCRM_STAGE_LESSON_2', 'AMOCRM_STAGE_LESSON_3']);
    expect(reading.problems[0]!.message).toMatch(/funnels set/);
  });
});

describe('no funnel saved', () => {
  it('without the variables: not configured, naming the variables and funnels set; a stranger learns nothing', async () => {
    expect(await currentFunnels(s.rt.db)).toBeNull();
    const rt = runtimeWith(without(s.env, FUNNEL_VARS));
    const err = await requireFunnels(rt).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(ConfigError);
    expect((err as ConfigError).problems.map((p) => p.variable)).toEqual([...FUNNEL_VARS]);
    expect((err as ConfigError).message).toMatch(/npm run amocrm -- funnels set/);

    // The caller check reads the endpoint's own secret from the function's environment, as deployed.
    const savedSecret = process.env.AMOCRM_WEBHOOK_SECRET;
    process.env.AMOCRM_WEBHOOK_SECRET = WEBHOOK_SECRET;
    const logged = vi.spyOn(console, 'log').mockImplementation(() => undefined);
    try {
      const stranger = await handleLessonCompleted(new Request('http://localhost/api/amocrm/lesson-completed', { method: 'POST', headers: { 'content-type': 'application/json' }, body }), () => requireFunnels(rt));
      expect(stranger.status).toBe(401);
      expect(await stranger.text()).not.toMatch(/AMOCRM_|not configured/);
      const insider = await handleLessonCompleted(signed(), () => requireFunnels(rt));
      expect(insider.status).toBe(503);
      expect(await insider.text()).toMatch(/AMOCRM_PIPELINE_ID[\s\S]*funnels set/);
      const failures = logged.mock.calls.map((c) => String(c[0])).filter((l) => l.startsWith('❌'));
      expect(failures.length).toBeGreaterThan(0);
      expect(failures.every((l) => l.includes('Функция не настроена') && l.includes('AMOCRM_PIPELINE_ID'))).toBe(true);
    } finally {
      logged.mockRestore();
      if (savedSecret === undefined) delete process.env.AMOCRM_WEBHOOK_SECRET;
      else process.env.AMOCRM_WEBHOOK_SECRET = savedSecret;
    }
    expect(await currentFunnels(s.rt.db)).toBeNull(); // nothing was saved on the way
  });
});

describe('a funnel saved', () => {
  it('a deploy without the variables works, and one whose variables disagree follows the saved funnels', async () => {
    const saved = [{ key: 'tripwire', name: 'Tripwire', pipelineId: PIPELINE, steps: [{ lessons: [67], stageId: STAGE.lesson2 }] }];
    expect(await setFunnels(s.rt.db, { funnels: saved, changedBy: 'test', expectedVersion: 0 })).toEqual({ saved: true, version: 1 });
    const bare = runtimeWith(without(s.env, FUNNEL_VARS));
    await expect(requireFunnels(bare)).resolves.toBe(bare);
    expect(await bare.invocation(1000).sync.settings.funnels.current()).toEqual(saved);

    const disagreeing = runtimeWith({ ...s.env, AMOCRM_PIPELINE_ID: '999', AMOCRM_STAGE_LESSON_1: '991', AMOCRM_STAGE_LESSON_2: '992', AMOCRM_STAGE_LESSON_3: '993' });
    expect(await disagreeing.invocation(1000).sync.settings.funnels.current()).toEqual(saved);
    expect((await currentFunnels(s.rt.db))!.version).toBe(1);
  });
});
