// The notes part of the production-topology bursts (npm run bench -- --only topology
// --topology notes): the same burst of warm students twice on one stack, first with the
// funnel's steps asking for nothing, then with every step asking for a note and a task,
// printed side by side. Each funnel is saved as an editor saves it (lib/funnels/edit.ts:
// checked against amoCRM and the lessons, then saved against the version in force).
// Notes and tasks are read from the stand-in's record, not from the sync's tables.
import type { Stack, Student } from '../../dev/stack/index.ts';
import { applyFunnels, loadFunnels } from '../../lib/funnels/edit.ts';
import type { Funnel } from '../../lib/funnels/model.ts';
import { lastResponseId, webhookAnswers, type RowFn } from './topology.ts';
import type { Topology } from './topology-stack.ts';

export interface NotesPartDeps {
  s: Stack;
  t: Topology;
  n: number;
  /** The sync's configured limit (AMOCRM_MAX_RPS), which the floors are computed at. */
  rate: number;
  row: RowFn;
  say: (line: string) => void;
  /** Resolves (performance.now()) when the deal reaches the stage. */
  until: (leadId: number, status: number) => Promise<number>;
  /** Students whose deal is remembered at the first lesson's stage. */
  known: (count: number) => Promise<Student[]>;
  /** Forgets what the sync logged so far; prints what it logged since. */
  clearLog: () => void;
  reportLog: () => void;
}

/** amoCRM's batch sizes the sync uses: 50 notes or tasks per POST, 50 deals per owners' read. */
const PER_POST = 50;
const NOTE_ROUTES = /^(POST|GET) \/api\/v4\/(leads\/notes|leads\/\d+\/notes|tasks)$/;

interface BurstFigures {
  label: string;
  events: number;
  /** Last commit → last deal moved, or null when not all moved in time. */
  movedMs: number | null;
  movedCount: number;
  floorMs: number;
  floorCalls: number;
  /** Last commit → the last note or task the burst owes, or null (none owed, or not all came). */
  notesMs: number | null;
  notesFloorMs: number;
  routes: string;
  calls: number;
  tooMany: number;
  forbidden: number;
  lost: number;
  statuses: string;
  notesPerEvent: string;
  tasksPerEvent: string;
  exactlyOnce: boolean;
  /** Note and task requests amoCRM saw before the burst's last deal moved. */
  noteCallsBeforeLastMove: number;
  runs: string;
  answers: string;
}

const secs = (ms: number, digits = 1) => `${(ms / 1000).toFixed(digits)} s`;
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** The tripwire funnel of the stack's pipeline; with `notes`, every step asks for a note and a task. */
function tripwire(s: Stack, notes: boolean): Funnel {
  const { lesson1, lesson2, lesson3 } = s.layout.stages;
  return {
    key: 'tripwire', name: 'Tripwire', pipelineId: s.layout.pipelineId,
    steps: [[67, lesson1], [68, lesson2], [69, lesson3]].map(([lesson, stageId], i) => ({
      lessons: [lesson!], stageId: stageId!,
      ...(notes ? { note: true, task: { text: `Позвонить: прошёл урок ${i + 1}`, dueMinutes: 60 } } : {}),
    })),
  };
}

/** Saves the funnel the way `npm run amocrm -- funnels set` does; throws when it is not saved. */
async function saveFunnel(s: Stack, funnel: Funnel, note: string): Promise<number> {
  const { pipelineId, stages } = s.layout;
  const current = await loadFunnels(s.db, { pipelineId, stageIds: [stages.lesson1, stages.lesson2, stages.lesson3] });
  const amo = s.runtime.invocation(10_000).amo;
  const outcome = await applyFunnels({ db: s.db, listPipelines: () => amo.listPipelines() },
    { funnels: [funnel], changedBy: 'bench', expectedVersion: current?.version ?? 0, note });
  if (outcome.kind !== 'saved') throw new Error(`the bench's funnel was not saved: ${JSON.stringify(outcome).slice(0, 300)}`);
  return outcome.version;
}

/** Resolves (performance.now()) once every one of `leadIds` has at least one note and one task in the stand-in. */
function watchNotes(s: Stack, leadIds: number[], intervalMs = 50) {
  const wanted = new Set(leadIds);
  let timer: NodeJS.Timeout | undefined;
  const done = new Promise<number>((resolve) => {
    timer = setInterval(() => {
      const noted = new Set(s.amo.notes().filter((x) => wanted.has(x.entityId)).map((x) => x.entityId));
      const tasked = new Set(s.amo.tasks().filter((x) => wanted.has(x.entityId)).map((x) => x.entityId));
      if (noted.size === wanted.size && tasked.size === wanted.size) { clearInterval(timer); resolve(performance.now()); }
    }, intervalMs);
  });
  return { done, stop: () => clearInterval(timer) };
}

/** "1 ×998, 0 ×2": how many of the leads have each count of notes (or tasks). */
function perLead(leadIds: number[], entityIds: number[]): { text: string; exactlyOne: boolean } {
  const byLead = new Map(leadIds.map((id) => [id, 0]));
  for (const id of entityIds) if (byLead.has(id)) byLead.set(id, byLead.get(id)! + 1);
  const tally = new Map<number, number>();
  for (const k of byLead.values()) tally.set(k, (tally.get(k) ?? 0) + 1);
  const text = [...tally].sort((a, b) => b[1] - a[1]).map(([k, v]) => `${k} ×${v}`).join(', ');
  return { text, exactlyOne: tally.size === 1 && tally.has(1) };
}

async function notesBurst(d: NotesPartDeps, label: string, notesOn: boolean): Promise<BurstFigures> {
  const { s, t, n, rate } = d;
  const list = await d.known(n);
  const stage = s.layout.stages.lesson2;
  if (!(await t.settle(120_000))) d.say(`${label}: the stack was not quiet after 120 s; measuring anyway`);
  d.clearLog();
  const floorCalls = Math.ceil(n / 250) + Math.ceil(n / 50);
  const floorMs = (floorCalls / rate) * 1000;
  const notesFloorMs = ((floorCalls + 3 * Math.ceil(n / PER_POST)) / rate) * 1000;
  const responsesAfter = await lastResponseId(s);
  s.amo.resetCounts();
  const leadIds = list.map((x) => x.leadId);
  const moved = list.map((st) => d.until(st.leadId, stage));
  const notes = notesOn ? watchNotes(s, leadIds) : undefined;

  const from = performance.now();
  for (const st of list) await s.database.sql('insert into public.lesson_progress (user_id, lesson_id) values ($1, $2)', [st.userId, 68]);
  const lastCommit = performance.now();
  const wallOffset = Date.now() - performance.now();
  d.say(`${label}: ${n} INSERTs of lesson 68 committed in ${secs(lastCommit - from)}; next scheduled run ${secs(t.nextTickAt() - lastCommit, 0)} after the last commit`);

  const limitMs = Math.max(300_000, 3 * floorMs + 240_000);
  const all = await Promise.race([Promise.all(moved), sleep(limitMs).then(() => null)]);
  const lastMoved = all ? Math.max(...all) : null;
  // Notes come after the moves: a drain that is still running, or the next scheduled run.
  const notedAt = notes ? await Promise.race([notes.done, sleep(300_000).then(() => null)]) : null;
  notes?.stop();
  const quiet = await t.settle(180_000);
  const end = performance.now();

  const counts = s.amo.counts();
  const requests = s.amo.requests;
  const lastMovedWall = lastMoved === null ? Infinity : lastMoved + wallOffset;
  const ids = list.map((x) => x.userId);
  const statuses = await s.database.sql(`select status, count(*)::int as n from amocrm.sync_events
      where user_id = any($1::uuid[]) and lesson_id = 68 group by status order by status`, [ids]);
  const done = statuses.find((r) => r.status === 'done')?.n ?? 0;
  const noteCounts = perLead(leadIds, s.amo.notes().map((x) => x.entityId));
  const taskCounts = perLead(leadIds, s.amo.tasks().map((x) => x.entityId));
  const runs = t.runs.filter((r) => r.name !== 'amocrm-lesson-completed' && r.startedAt >= from && r.startedAt < end)
    .map((r) => `${r.name.replace('amocrm-', '')} at ${secs(r.startedAt - lastCommit)} for ${secs(r.ms)}`).join('; ');
  return {
    label, events: n,
    movedMs: lastMoved === null ? null : lastMoved - lastCommit,
    movedCount: list.filter((st) => s.amo.lead(st.leadId)?.statusId === stage).length,
    floorMs, floorCalls,
    notesMs: notedAt === null ? null : notedAt - lastCommit,
    notesFloorMs,
    routes: Object.entries(counts.byRoute).map(([k, v]) => `${k.replace('/api/v4', '')} ${v}`).join(', '),
    calls: counts.total,
    tooMany: counts.tooMany,
    forbidden: requests.filter((r) => r.status === 403).length,
    lost: n - done,
    statuses: `${statuses.map((r) => `${r.status}=${r.n}`).join(', ') || 'no events'}${quiet ? '' : '; the stack was still busy 180 s after'}`,
    notesPerEvent: noteCounts.text,
    tasksPerEvent: taskCounts.text,
    exactlyOnce: notesOn ? noteCounts.exactlyOne && taskCounts.exactlyOne : noteCounts.text === `0 ×${n}` && taskCounts.text === `0 ×${n}`,
    noteCallsBeforeLastMove: requests.filter((r) => r.at < lastMovedWall && NOTE_ROUTES.test(`${r.method} ${r.path}`)).length,
    runs: runs || 'none',
    answers: await webhookAnswers(s, responsesAfter),
  };
}

/** Runs the burst without notes, then with them, and prints the two side by side. */
export async function benchNotes(d: NotesPartDeps): Promise<void> {
  const { s, n, row } = d;
  d.say(`notes: warm students (deal remembered at stage «Урок 1», lesson 68), so each burst takes minutes; the same stack, first without notes, then with`);
  const offVersion = await saveFunnel(s, tripwire(s, false), 'bench: no notes or tasks');
  d.say(`notes: funnel version ${offVersion} saved (steps ask for nothing)`);
  const off = await notesBurst(d, 'notes off', false);
  d.say(`notes off: drainer and scheduled runs (start after the last commit, duration): ${off.runs}; webhook answers: ${off.answers}`);
  d.reportLog();
  const onVersion = await saveFunnel(s, tripwire(s, true), 'bench: a note and a task at every step');
  d.say(`notes: funnel version ${onVersion} saved (every step: a note and a task)`);
  const on = await notesBurst(d, 'notes on', true);
  d.say(`notes on: drainer and scheduled runs (start after the last commit, duration): ${on.runs}; webhook answers: ${on.answers}`);
  d.reportLog();

  const side = (f: (x: BurstFigures) => string) => `off: ${f(off)} | on: ${f(on)}`;
  const moved = (x: BurstFigures) => x.movedMs === null
    ? `NOT ALL MOVED (${x.movedCount} of ${x.events})`
    : `${secs(x.movedMs)} = ${(x.movedMs / x.floorMs).toFixed(2)}× the floor of ${secs(x.floorMs)}`;
  row(`notes ×${n} (warm): last commit → last deal moved`,
    `${side(moved)} (floor: ${Math.ceil(n / 250)} reads + ${Math.ceil(n / 50)} PATCHes = ${off.floorCalls} calls at ${d.rate}/s)`, '≤ 10 s, on ≈ off');
  row(`notes ×${n}: last commit → last note and task created`,
    on.notesMs === null
      ? `NOT ALL CREATED within 300 s of the last move (off: none asked for)`
      : `${secs(on.notesMs)} = ${(on.notesMs / on.notesFloorMs).toFixed(2)}× the floor of ${secs(on.notesFloorMs)} (the moves' calls + ${Math.ceil(n / PER_POST)} note POSTs, ${Math.ceil(n / PER_POST)} owners' reads, ${Math.ceil(n / PER_POST)} task POSTs at ${d.rate}/s)` +
        (on.movedMs === null ? '' : `; ${secs(on.notesMs - on.movedMs)} after the last move`));
  row(`notes ×${n}: amoCRM calls by route`, side((x) => `${x.calls} (${x.routes})`));
  row(`notes ×${n}: 429s / 403s from amoCRM`, side((x) => `${x.tooMany} / ${x.forbidden}`), '0 / 0');
  row(`notes ×${n}: events lost (not done at the end)`, side((x) => `${x.lost} (${x.statuses})`), '0');
  row(`notes ×${n}: notes per event (deals with k notes)`, side((x) => x.notesPerEvent), 'off 0, on exactly 1');
  row(`notes ×${n}: tasks per event (deals with k tasks)`, side((x) => x.tasksPerEvent), 'off 0, on exactly 1');
  row(`notes ×${n}: exactly as asked (on: 1 note + 1 task each, off: none)`, side((x) => (x.exactlyOnce ? 'yes' : 'NO')), 'yes / yes');
  const waited = on.movedMs !== null && off.movedMs !== null ? `${on.movedMs - off.movedMs >= 0 ? '+' : ''}${secs(on.movedMs - off.movedMs)}` : 'n/a';
  row(`notes ×${n}: did a move wait behind a note?`,
    `${on.noteCallsBeforeLastMove ? 'POSSIBLY' : 'no'}: ${on.noteCallsBeforeLastMove} note/task request(s) reached amoCRM before the last deal moved; last move with notes on vs off ${waited}`, 'no');
}
