// The stand-in's notes and tasks on leads, as amoCRM answers them: batch arrays, one bad item
// refusing the request with validation-errors, the 250 limit, request_id echoed and never kept,
// lists by lead, and the stand-in's faults, rate limit and tokens applying to them.
import { afterEach, describe, expect, it } from 'vitest';
import { startAmoStandin, type AmoStandin } from '../dev/amocrm-standin/index.ts';

const PIPELINE = 7777;
const open: AmoStandin[] = [];
afterEach(async () => {
  await Promise.all(open.splice(0).map((s) => s.close()));
});

async function start(options: Parameters<typeof startAmoStandin>[0] = {}) {
  const amo = await startAmoStandin(options);
  open.push(amo);
  amo.addPipeline({ id: PIPELINE, name: 'Tripwire', statuses: [{ id: 101, name: 'Lesson 1', sort: 20 }] });
  amo.addLead({ id: 11, name: 'Deal 11', pipelineId: PIPELINE, statusId: 101, updatedAt: 1_700_000_000, responsibleUserId: 504141 });
  amo.addLead({ id: 12, name: 'Deal 12', pipelineId: PIPELINE, statusId: 101, updatedAt: 1_700_000_000 });
  amo.addLead({ id: 13, name: 'Deal 13', pipelineId: PIPELINE, statusId: 101, updatedAt: 1_700_000_000, isDeleted: true });
  const { access_token } = amo.issueTokens();
  const api = (path: string, init: { method?: string; body?: unknown; token?: string | null } = {}) =>
    fetch(`${amo.url}${path}`, {
      method: init.method ?? 'GET',
      headers: {
        ...(init.token === null ? {} : { authorization: `Bearer ${init.token ?? access_token}` }),
        ...(init.body !== undefined ? { 'content-type': 'application/json' } : {}),
      },
      ...(init.body !== undefined ? { body: typeof init.body === 'string' ? init.body : JSON.stringify(init.body) } : {}),
    });
  return { amo, api };
}

const note = (entityId: number, text: string, extra: Record<string, unknown> = {}) => ({ entity_id: entityId, note_type: 'common', params: { text }, ...extra });
const task = (entityId: number, text: string, extra: Record<string, unknown> = {}) =>
  ({ task_type_id: 1, text, complete_till: 1_765_119_600, entity_id: entityId, entity_type: 'leads', responsible_user_id: 504141, ...extra });

describe('notes', () => {
  it('a batch adds one note per item and answers each with its id, entity_id and the echoed request_id', async () => {
    const { amo, api } = await start();
    const res = await api('/api/v4/leads/notes', { method: 'POST', body: [note(11, 'one', { request_id: 'evt-1-note' }), note(12, 'two')] });
    expect(res.status).toBe(200);
    const body = (await res.json()) as any;
    expect(body._embedded.notes).toHaveLength(2);
    expect(body._embedded.notes[0]).toMatchObject({ entity_id: 11, request_id: 'evt-1-note' });
    expect(body._embedded.notes[1]).not.toHaveProperty('request_id');
    expect(amo.notes(11).map((n) => n.text)).toEqual(['one']);
    expect(amo.notes(12).map((n) => n.text)).toEqual(['two']);
  });

  it('the lead in the path: POST and GET /api/v4/leads/:id/notes; an unknown lead is a 404', async () => {
    const { amo, api } = await start();
    expect((await api('/api/v4/leads/11/notes', { method: 'POST', body: [{ note_type: 'common', params: { text: 'path' } }] })).status).toBe(200);
    const list = (await (await api('/api/v4/leads/11/notes')).json()) as any;
    expect(list._embedded.notes.map((n: any) => [n.entity_id, n.note_type, n.params.text])).toEqual([[11, 'common', 'path']]);
    expect((await api('/api/v4/leads/99/notes', { method: 'POST', body: [{ note_type: 'common', params: { text: 'x' } }] })).status).toBe(404);
    expect((await api('/api/v4/leads/13/notes')).status).toBe(404); // deleted
    expect(amo.notes()).toHaveLength(1);
  });

  it('one bad item refuses the whole batch with validation-errors naming it; nothing is added', async () => {
    const { amo, api } = await start();
    const res = await api('/api/v4/leads/notes', { method: 'POST', body: [note(11, 'ok'), note(99, 'no such lead', { request_id: 'r-2' }), note(13, 'deleted'), { entity_id: 12, note_type: 'common', params: {} }] });
    expect(res.status).toBe(400);
    const body = (await res.json()) as any;
    expect(body).toMatchObject({ status: 400, detail: 'Request validation failed' });
    expect(body['validation-errors'].map((v: any) => [v.request_id, v.errors[0].code, v.errors[0].path])).toEqual([
      ['r-2', 'NotFound', 'entity_id'], ['2', 'NotFound', 'entity_id'], ['3', 'NotBlank', 'params.text'],
    ]);
    expect(amo.notes()).toHaveLength(0);
  });

  it('at most 250 per request; an empty or non-array body is refused', async () => {
    const { amo, api } = await start();
    const many = Array.from({ length: 251 }, (_, i) => note(11, `n${i}`));
    const res = await api('/api/v4/leads/notes', { method: 'POST', body: many });
    expect(res.status).toBe(400);
    expect(((await res.json()) as any)['validation-errors'][0].errors[0].code).toBe('TooManyEntities');
    expect((await api('/api/v4/leads/notes', { method: 'POST', body: many.slice(0, 250) })).status).toBe(200);
    expect((await api('/api/v4/leads/notes', { method: 'POST', body: [] })).status).toBe(400);
    expect((await api('/api/v4/leads/notes', { method: 'POST', body: note(11, 'x') })).status).toBe(400);
    expect((await api('/api/v4/leads/notes', { method: 'POST', body: '{oops' })).status).toBe(400);
    expect(amo.notes()).toHaveLength(250);
  });

  it('request_id is not kept: the same POST twice is two notes (amoCRM is not idempotent)', async () => {
    const { amo, api } = await start();
    for (let i = 0; i < 2; i++) await api('/api/v4/leads/notes', { method: 'POST', body: [note(11, 'same', { request_id: 'evt-7-note' })] });
    expect(amo.notes(11)).toHaveLength(2);
  });

  it('GET /api/v4/leads/notes filters by entity_id and note_type, pages at 50 by default, 204 when none', async () => {
    const { api } = await start();
    await api('/api/v4/leads/notes', { method: 'POST', body: [...Array.from({ length: 60 }, (_, i) => note(11, `a${i}`)), note(12, 'b')] });
    const first = (await (await api('/api/v4/leads/notes?filter[entity_id][]=11&filter[note_type]=common')).json()) as any;
    expect(first._embedded.notes).toHaveLength(50);
    expect(first._links.next).toBeDefined();
    const both = (await (await api('/api/v4/leads/notes?filter[entity_id][]=11&filter[entity_id][]=12&limit=250')).json()) as any;
    expect(both._embedded.notes).toHaveLength(61);
    expect((await api('/api/v4/leads/notes?filter[entity_id][]=12&filter[note_type]=call_in')).status).toBe(204);
    expect((await api('/api/v4/leads/notes?limit=251')).status).toBe(422);
  });
});

describe('tasks', () => {
  it('a batch adds tasks for the named responsible user (the token user by default) and lists them by lead', async () => {
    const { amo, api } = await start();
    const res = await api('/api/v4/tasks', { method: 'POST', body: [task(11, 'Позвонить: прошёл урок 1', { request_id: 'evt-1-task' }), task(12, 'b', { responsible_user_id: undefined })] });
    expect(res.status).toBe(200);
    expect(((await res.json()) as any)._embedded.tasks[0]).toMatchObject({ request_id: 'evt-1-task' });
    expect(amo.tasks(11)).toMatchObject([{ text: 'Позвонить: прошёл урок 1', responsibleUserId: 504141, completeTill: 1_765_119_600, taskTypeId: 1 }]);
    expect(amo.tasks(12)[0]!.responsibleUserId).toBe(123);
    const list = (await (await api('/api/v4/tasks?filter[entity_type]=leads&filter[entity_id][]=11')).json()) as any;
    expect(list._embedded.tasks.map((t: any) => [t.entity_id, t.entity_type, t.text, t.complete_till, t.is_completed])).toEqual([[11, 'leads', 'Позвонить: прошёл урок 1', 1_765_119_600, false]]);
    expect((await api('/api/v4/tasks?filter[entity_id][]=11')).status).toBe(400); // entity_id without entity_type
    expect((await api('/api/v4/tasks?filter[entity_type]=leads&filter[entity_id][]=99')).status).toBe(204);
  });

  it('a task without a deadline or text, for an unknown lead or another entity type refuses the batch', async () => {
    const { amo, api } = await start();
    const res = await api('/api/v4/tasks', { method: 'POST', body: [task(11, 'ok'), task(11, '', { complete_till: 'soon' }), task(99, 'x'), task(11, 'y', { entity_type: 'widgets' })] });
    expect(res.status).toBe(400);
    const errors = ((await res.json()) as any)['validation-errors'];
    expect(errors.map((v: any) => [v.request_id, v.errors.map((e: any) => e.path)])).toEqual([
      ['1', ['text', 'complete_till']], ['2', ['entity_id']], ['3', ['entity_type']],
    ]);
    expect(amo.tasks()).toHaveLength(0);
  });
});

describe('the stand-in around them', () => {
  it('tokens, faults and the rate limit apply; the ledger records each request by route', async () => {
    let t = Date.now();
    const { amo, api } = await start({ ratePerSecond: 2, now: () => t });
    expect((await api('/api/v4/leads/notes', { method: 'POST', body: [note(11, 'x')], token: null })).status).toBe(401);
    amo.inject('POST /api/v4/leads/notes', { kind: 'after', status: 504 });
    expect((await api('/api/v4/leads/notes', { method: 'POST', body: [note(11, 'applied, answer lost')] })).status).toBe(504);
    expect(amo.notes(11).map((n) => n.text)).toEqual(['applied, answer lost']);
    expect((await api('/api/v4/tasks', { method: 'POST', body: [task(11, 'x')] })).status).toBe(429);
    t += 1_000;
    amo.inject('POST /api/v4/tasks', { status: 500 });
    expect((await api('/api/v4/tasks', { method: 'POST', body: [task(11, 'x')] })).status).toBe(500);
    expect(amo.tasks()).toHaveLength(0);
    expect(amo.counts().byRoute).toMatchObject({ 'POST /api/v4/leads/notes': 2, 'POST /api/v4/tasks': 2 });
  });
});
