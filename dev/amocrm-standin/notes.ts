// amoCRM's notes and tasks on leads, as the sync uses them for the sales manager:
//   POST /api/v4/leads/notes        [{entity_id, note_type, params: {text}, request_id?}, …]
//   POST /api/v4/leads/:id/notes    [{note_type, params: {text}, request_id?}, …] (the lead from the path)
//   GET  /api/v4/leads/notes        ?filter[entity_id][]=…&filter[note_type]=…&limit&page
//   GET  /api/v4/leads/:id/notes    ?filter[note_type]=…&limit&page
//   POST /api/v4/tasks              [{task_type_id, text, complete_till, entity_id, entity_type, responsible_user_id?, request_id?}, …]
//   GET  /api/v4/tasks              ?filter[entity_type]=leads&filter[entity_id][]=…&filter[is_completed]=0|1&limit&page
// Kommo's reference (developers.kommo.com: add-notes, notes-by-entity-id, tasks-list) documents
// the routes, the batch form and answers as lists of the new entities. Not documented, so chosen
// here like the leads' batch PATCH: at most 250 items per request; every item is validated first
// and one bad item refuses the whole request (400 with validation-errors naming the item by its
// request_id, else its index), nothing added. request_id is only echoed in the answer, never
// stored: a retried POST adds a second note, as amoCRM's does.
import { ACCOUNT, emptyBody, MAX_LIMIT, problem, validationProblem, type Hal, type ValidationItem } from './hal.ts';
import type { StandinState } from './state.ts';
import type { Ctx, Reply } from './types.ts';

/** A note in a lead's timeline, as the stand-in keeps it (GET renders it snake_cased). */
export interface StandinNote { id: number; entityId: number; noteType: string; text: string; createdAt: number; createdBy: number }
/** A task, as the stand-in keeps it. */
export interface StandinTask {
  id: number; entityId: number; entityType: 'leads'; taskTypeId: number; text: string; completeTill: number;
  responsibleUserId: number; createdAt: number; createdBy: number; isCompleted: boolean;
}

const NOTE_TYPES = new Set(['common', 'call_in', 'call_out', 'service_message', 'extended_service_message', 'sms_in', 'sms_out', 'geolocation', 'attachment']);
const TASK_TYPES = new Set([1, 2]);
const isInt = (v: unknown): v is number => typeof v === 'number' && Number.isSafeInteger(v);
const isObject = (v: unknown): v is Record<string, unknown> => typeof v === 'object' && v !== null && !Array.isArray(v);
const blank = (path: string) => ({ code: 'NotBlank', path, detail: 'This value should not be blank' });

function parseArray(body: Buffer): unknown[] | Reply {
  const text = body.toString('utf8').trim();
  if (!text) return emptyBody();
  let value: unknown;
  try {
    value = JSON.parse(text);
  } catch {
    return emptyBody();
  }
  if (!Array.isArray(value)) return problem(400, 'Request body must be an array of entities');
  if (value.length === 0) return emptyBody();
  if (value.length > MAX_LIMIT) {
    return validationProblem([{ request_id: '0', errors: [{ code: 'TooManyEntities', path: '', detail: `Too many entities in one request (maximum ${MAX_LIMIT})` }] }]);
  }
  return value;
}

/** Ids from filter[<name>]=1,2, filter[<name>][]=1 and filter[<name>][0]=1; undefined when absent. */
function filterInts(search: URLSearchParams, name: string): Set<number> | undefined {
  const re = new RegExp(`^filter\\[${name}\\](\\[\\d*\\])?$`);
  let found: Set<number> | undefined;
  for (const [key, value] of search) {
    if (!re.test(key)) continue;
    found ??= new Set();
    for (const part of value.split(',')) if (/^\d{1,15}$/.test(part.trim())) found.add(Number(part.trim()));
  }
  return found;
}

const requestIdOf = (item: unknown, index: number) =>
  isObject(item) && (typeof item.request_id === 'string' || isInt(item.request_id)) ? String(item.request_id) : String(index);

export function createNotes(state: StandinState, hal: Hal, tokenUserId: number) {
  const notes: StandinNote[] = [];
  const tasks: StandinTask[] = [];
  let nextNoteId = 70_000_001;
  let nextTaskId = 80_000_001;

  const renderNote = (n: StandinNote) => ({
    id: n.id, entity_id: n.entityId, created_by: n.createdBy, updated_by: n.createdBy, created_at: n.createdAt, updated_at: n.createdAt,
    responsible_user_id: n.createdBy, group_id: 0, note_type: n.noteType, params: { text: n.text }, account_id: ACCOUNT.id,
    _links: hal.links(`/api/v4/leads/${n.entityId}/notes/${n.id}`),
  });
  const renderTask = (t: StandinTask) => ({
    id: t.id, created_by: t.createdBy, updated_by: t.createdBy, created_at: t.createdAt, updated_at: t.createdAt,
    responsible_user_id: t.responsibleUserId, group_id: 0, entity_id: t.entityId, entity_type: t.entityType,
    is_completed: t.isCompleted, task_type_id: t.taskTypeId, text: t.text, duration: 0, complete_till: t.completeTill,
    result: [], account_id: ACCOUNT.id, _links: hal.links(`/api/v4/tasks/${t.id}`),
  });

  /** One note item's errors; `leadId` from the path, else the item's entity_id. */
  function noteErrors(item: Record<string, unknown>, leadId: number | undefined): ValidationItem['errors'] {
    const errors: ValidationItem['errors'] = [];
    const entityId = leadId ?? item.entity_id;
    if (!isInt(entityId)) errors.push(blank('entity_id'));
    else if (!state.liveLead(entityId)) errors.push({ code: 'NotFound', path: 'entity_id', detail: 'Entity not found' });
    if (typeof item.note_type !== 'string' || !NOTE_TYPES.has(item.note_type)) {
      errors.push({ code: 'NotSupportedChoice', path: 'note_type', detail: "The value you've selected is not supported" });
    }
    const text = isObject(item.params) ? item.params.text : undefined;
    if (item.note_type === 'common' && (typeof text !== 'string' || text.trim() === '')) errors.push(blank('params.text'));
    return errors;
  }

  function taskErrors(item: Record<string, unknown>): ValidationItem['errors'] {
    const errors: ValidationItem['errors'] = [];
    if (typeof item.text !== 'string' || item.text.trim() === '') errors.push(blank('text'));
    if (!isInt(item.complete_till)) errors.push(blank('complete_till'));
    if ('task_type_id' in item && !(isInt(item.task_type_id) && TASK_TYPES.has(item.task_type_id))) {
      errors.push({ code: 'NotSupportedChoice', path: 'task_type_id', detail: "The value you've selected is not supported" });
    }
    if ('responsible_user_id' in item && !isInt(item.responsible_user_id)) errors.push({ code: 'InvalidType', path: 'responsible_user_id', detail: 'This value should be of type int' });
    if (item.entity_type !== 'leads') errors.push({ code: 'NotSupportedChoice', path: 'entity_type', detail: "The value you've selected is not supported" });
    else if (!isInt(item.entity_id)) errors.push(blank('entity_id'));
    else if (!state.liveLead(item.entity_id)) errors.push({ code: 'NotFound', path: 'entity_id', detail: 'Entity not found' });
    return errors;
  }

  /** Validates every item first; one bad item refuses the request and nothing is added. */
  function addAll<T>(body: Buffer, check: (item: Record<string, unknown>) => ValidationItem['errors'], add: (item: Record<string, unknown>) => T,
    render: (added: T, requestId: string | undefined) => unknown, key: string, path: string): Reply {
    const items = parseArray(body);
    if (!Array.isArray(items)) return items;
    const failures: ValidationItem[] = [];
    items.forEach((item, index) => {
      const errors = isObject(item) ? check(item) : [{ code: 'InvalidType', path: '', detail: 'This value should be of type object' }];
      if (errors.length) failures.push({ request_id: requestIdOf(item, index), errors });
    });
    if (failures.length) return validationProblem(failures);
    const answered = items.map((item) => {
      const rid = isObject(item) && (typeof item.request_id === 'string' || isInt(item.request_id)) ? String(item.request_id) : undefined;
      return render(add(item as Record<string, unknown>), rid);
    });
    return { status: 200, body: { _links: hal.links(path), _embedded: { [key]: answered } } };
  }

  function postNotes(ctx: Ctx, leadId?: number): Reply {
    if (leadId !== undefined && !state.liveLead(leadId)) return problem(404, `Lead ${leadId} not found`);
    return addAll(ctx.body, (item) => noteErrors(item, leadId), (item) => {
      const params = item.params as Record<string, unknown>;
      const note: StandinNote = {
        id: nextNoteId++, entityId: leadId ?? (item.entity_id as number), noteType: item.note_type as string,
        text: typeof params?.text === 'string' ? params.text : '', createdAt: state.nowSec(), createdBy: tokenUserId,
      };
      notes.push(note);
      return note;
    }, (n, rid) => ({ id: n.id, entity_id: n.entityId, ...(rid !== undefined ? { request_id: rid } : {}), _links: hal.links(`/api/v4/leads/${n.entityId}/notes/${n.id}`) }),
    'notes', leadId === undefined ? '/api/v4/leads/notes' : `/api/v4/leads/${leadId}/notes`);
  }

  function postTasks(ctx: Ctx): Reply {
    return addAll(ctx.body, taskErrors, (item) => {
      const task: StandinTask = {
        id: nextTaskId++, entityId: item.entity_id as number, entityType: 'leads', taskTypeId: isInt(item.task_type_id) ? item.task_type_id : 1,
        text: item.text as string, completeTill: item.complete_till as number,
        responsibleUserId: isInt(item.responsible_user_id) ? item.responsible_user_id : tokenUserId,
        createdAt: state.nowSec(), createdBy: tokenUserId, isCompleted: false,
      };
      tasks.push(task);
      return task;
    }, (t, rid) => ({ id: t.id, ...(rid !== undefined ? { request_id: rid } : {}), _links: hal.links(`/api/v4/tasks/${t.id}`) }), 'tasks', '/api/v4/tasks');
  }

  function listNotes(ctx: Ctx, leadId?: number): Reply {
    if (leadId !== undefined && !state.liveLead(leadId)) return problem(404, `Lead ${leadId} not found`);
    const ids = leadId !== undefined ? new Set([leadId]) : filterInts(ctx.search, 'entity_id');
    const types = ctx.search.getAll('filter[note_type]').concat(ctx.search.getAll('filter[note_type][]')).flatMap((t) => t.split(','));
    const found = notes.filter((n) => (!ids || ids.has(n.entityId)) && (types.length === 0 || types.includes(n.noteType)));
    return hal.page(ctx, found, 'notes', renderNote);
  }

  function listTasks(ctx: Ctx): Reply {
    const type = ctx.search.get('filter[entity_type]');
    const ids = filterInts(ctx.search, 'entity_id');
    if (ids && type === null) return validationProblem([{ request_id: '0', errors: [blank('filter.entity_type')] }]);
    const completed = ctx.search.get('filter[is_completed]');
    const found = tasks.filter((t) => (type === null || t.entityType === type) && (!ids || ids.has(t.entityId))
      && (completed === null || t.isCompleted === (completed === '1')));
    return hal.page(ctx, found, 'tasks', renderTask);
  }

  return {
    /** The routes this module answers, with their handlers. */
    route(ctx: Ctx): Reply | undefined {
      const id = Number(ctx.params[0]);
      switch (ctx.route) {
        case 'POST /api/v4/leads/notes': return postNotes(ctx);
        case 'POST /api/v4/leads/:id/notes': return postNotes(ctx, id);
        case 'GET /api/v4/leads/notes': return listNotes(ctx);
        case 'GET /api/v4/leads/:id/notes': return listNotes(ctx, id);
        case 'POST /api/v4/tasks': return postTasks(ctx);
        case 'GET /api/v4/tasks': return listTasks(ctx);
        default: return undefined;
      }
    },
    /** Notes (of one lead), oldest first: copies. */
    notes: (leadId?: number): StandinNote[] => notes.filter((n) => leadId === undefined || n.entityId === leadId).map((n) => ({ ...n })),
    tasks: (leadId?: number): StandinTask[] => tasks.filter((t) => leadId === undefined || t.entityId === leadId).map((t) => ({ ...t })),
  };
}

export type StandinNotes = ReturnType<typeof createNotes>;
