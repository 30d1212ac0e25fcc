// Operator paths that used to crash or mislead (issue 8, section 2): each answer names
// what to do, and nothing is written by a request that is refused.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { handleLessonCompleted } from '../../lib/http/lesson-completed.ts';
import { handleReplay } from '../../lib/http/replay.ts';
import { handleStatus } from '../../lib/http/status.ts';
import { createStack, dbWebhookBody, REPLAY_TOKEN, type Stack } from '../helpers/stack.ts';

let s: Stack;
beforeAll(async () => { s = await createStack(); });
afterAll(async () => { await s?.close(); });
const rt = async () => s.rt;

const replay = (body: unknown, headers: Record<string, string> = { authorization: `Bearer ${REPLAY_TOKEN}` }) =>
  handleReplay(new Request('http://localhost/api/amocrm/replay', {
    method: 'POST', headers: { 'content-type': 'application/json', ...headers }, body: JSON.stringify(body),
  }), rt);

describe('replay', () => {
  it('an empty body gets a 400 that names the choices', async () => {
    const res = await replay({});
    expect(res.status).toBe(400);
    const { error } = await res.json();
    for (const choice of ['"ids"', '"status"', 'failed', 'dead', 'parked', 'skipped', 'dryRun']) expect(error).toContain(choice);
  });

  it('ids that do not exist come back as not_found; replayed counts only what ran', async () => {
    const student = await s.addStudent('ops.replay@student.kz');
    const res1 = await handleLessonCompleted(s.webhookRequest(dbWebhookBody(student.userId, 67)), rt);
    const { event_id: done } = await res1.json();
    const res = await replay({ ids: [done, 999_999_001] });
    expect(res.status).toBe(200);
    const body = await res.json();
    expect(body.replayed).toBe(0); // the done event is refused without force, the other does not exist
    expect(body.results).toEqual(expect.arrayContaining([
      expect.objectContaining({ id: done, outcome: 'not_replayed' }),
      expect.objectContaining({ id: 999_999_001, outcome: 'not_found' }),
    ]));
  });
});

describe('status in a browser', () => {
  it('a 401 for a browser says to sign in with Basic auth and offers the challenge', async () => {
    const res = await handleStatus(new Request('http://localhost/api/amocrm/status', { headers: { accept: 'text/html' } }), rt);
    expect(res.status).toBe(401);
    expect(res.headers.get('www-authenticate')).toMatch(/^Basic /);
    expect((await res.json()).error).toMatch(/Basic auth.*password is AMOCRM_REPLAY_TOKEN/);
  });

  it('a script still gets the Bearer hint', async () => {
    const res = await handleStatus(new Request('http://localhost/api/amocrm/status'), rt);
    expect(res.status).toBe(401);
    expect((await res.json()).error).toMatch(/Bearer/);
  });
});

describe('webhook user ids', () => {
  it.each([
    ['v7', '01890a5d-ac96-774b-bcce-b302099a8057'],
    ['v1', 'c232ab00-9414-11ec-b3c8-9f6bdeced846'],
    ['nil-like', '00000000-0000-0000-0000-000000000001'],
  ])('a well-formed %s UUID that is no student goes to the 422 path, not a 400 about its format', async (_v, id) => {
    const res = await handleLessonCompleted(s.webhookRequest(dbWebhookBody(id, 67)), rt);
    expect(res.status).toBe(422);
    expect((await res.json()).error).toMatch(/not a user in auth\.users/);
    expect(await s.t.sql('select 1 from amocrm.sync_events where user_id = $1', [id])).toEqual([]);
  });
});
