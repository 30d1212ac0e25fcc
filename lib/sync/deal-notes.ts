// What the sales manager sees in the deal: per funnel step, optionally a note in the deal's
// timeline and a task for its responsible manager, each exactly once per lesson event.
//
// queueStepNotes runs with a batch's moves, before their outcomes are written: a row per
// (event, kind) that becomes due once its event is done, so neither a crash between the
// move and its record nor a replay adds or loses one. sendDealNotes works the due rows with
// spare rate capacity only (the lane look-ahead jobs use): no slot while a lesson event is
// due or in flight, so a move never waits behind a note, at most behind the one request
// already given a slot. A row whose POST may have been applied is checked against the
// deal's notes or tasks before it is sent again (amoCRM keeps no request_id).
import { createAmoHttp, type TokenSource } from '../amocrm/http.ts';
import { AmoError } from '../amocrm/errors.ts';
import { amoNotes, type AddResult, type AmoNotes } from '../amocrm/notes.ts';
import { spareCapacityLimiter, type RateLimiter } from '../amocrm/rate-limit.ts';
import type { Clock } from '../clock.ts';
import {
  claimDealNotes, DEAL_NOTE_LEASE_SECONDS, finishDealNotes, queueDealNotes,
  type ClaimedDealNote, type DealNoteResult,
} from '../db/deal-notes.ts';
import type { Db } from '../db/port.ts';
import type { FunnelStep } from '../funnels/model.ts';
import type { FunnelSource } from '../funnels/source.ts';
import { errorText, type Logger } from '../log.ts';
import type { Runtime } from '../runtime.ts';

/** A claimed row's POST must leave with this much of its claim left beyond the request's timeout. */
const SEND_MARGIN_MS = 5_000;
/** A refused spare slot is often only the previous request's: asked again a slot later, a few times. */
const SPARE_TRIES = 3;
/** After amoCRM or the token failed, a row is tried again this much later. */
const RETRY_LATER_MS = 60_000;
/** A row refused a spare slot is due again this soon (lesson events first). */
const SPARE_RETRY_MS = 1_000;

export interface StepOfEvent { eventId: number; step: FunnelStep | undefined; stepNumber: number }

/** Queues what each event's step asks for (nothing for a step that asks for neither). */
export async function queueStepNotes(db: Db, events: StepOfEvent[]): Promise<number> {
  const asked = events.filter((e) => e.step && (e.step.note || e.step.task));
  if (!asked.length) return 0;
  return queueDealNotes(db, asked.map((e) => ({ eventId: e.eventId, note: Boolean(e.step!.note), stepNumber: e.stepNumber, task: e.step!.task ?? null })));
}

/** One event of a batch as its moves leave it: whether its outcome is done, and its funnel and step. */
export interface MovedEvent { eventId: number; done: boolean; route?: { funnelKey: string; targetIndex: number } }

/**
 * With a batch's moves, before their outcomes are written: queues what the step of each
 * event about to be done asks for (moved, or found already in the stage: a retry of a move
 * amoCRM applied unanswered ends that way and still owes its note). Never throws: a move is
 * never failed by a note; a queue that fails is told once.
 */
export async function queueNotesOfMoves(deps: { db: Db; log: Logger; settings: { funnels: FunnelSource } }, moved: MovedEvent[]): Promise<void> {
  const done = moved.filter((m) => m.done && m.route);
  if (!done.length) return;
  try {
    // The funnels the batch was routed with (kept while warm).
    const funnels = await deps.settings.funnels.current();
    await queueStepNotes(deps.db, done.map((m) => ({
      eventId: m.eventId,
      step: funnels.find((f) => f.key === m.route!.funnelKey)?.steps[m.route!.targetIndex],
      stepNumber: m.route!.targetIndex + 1,
    })));
  } catch (err) {
    deps.log.warn('Заметки и задачи для менеджера не поставлены в очередь', { events: done.length, error: errorText(err).slice(0, 120) });
  }
}

export interface DealNotesReport {
  claimed: number;
  done: number;
  failed: number;
  /** Given back to try later (no spare slot, amoCRM trouble, an answer that never came). */
  later: number;
  /** Of `later`, given back only for want of a spare slot: work left, due again in a moment. */
  waitingForSlot: number;
}

/** A limiter over the spare lane that asks again a slot later before giving up. */
function patientSpare(db: Db, clock: Clock, perSecond: number): RateLimiter {
  const spare = spareCapacityLimiter(db, clock, perSecond);
  return {
    async acquire() {
      for (let tries = 1; ; tries++) {
        try {
          return await spare.acquire();
        } catch (err) {
          if (!(err instanceof AmoError && err.code === 'no_spare_capacity') || tries >= SPARE_TRIES) throw err;
          await clock.sleep(1000 / perSecond);
        }
      }
    },
    rateLimited: (ms) => spare.rateLimited(ms),
  };
}

/** One round: claims up to `limit` due rows, checks the uncertain ones, sends the rest, records each. */
export async function sendDealNotes(rt: Runtime, limit = 100): Promise<DealNotesReport> {
  const inv = rt.invocation(0, { lane: 'spare' });
  const bearers: TokenSource = { current: () => inv.tokens.current(), afterUnauthorized: (used) => inv.tokens.afterUnauthorized(used) };
  const api = amoNotes(createAmoHttp(rt.transport, bearers, patientSpare(rt.db, rt.clock, rt.config.amocrm.maxRps)));
  const rows = await claimDealNotes(rt.db, inv.holder, limit);
  const report: DealNotesReport = { claimed: rows.length, done: 0, failed: 0, later: 0, waitingForSlot: 0 };
  if (!rows.length) return report;
  // The claim, just taken, covers every POST that leaves before this.
  const window = AbortSignal.timeout(DEAL_NOTE_LEASE_SECONDS * 1000 - rt.config.amocrm.timeoutMs - SEND_MARGIN_MS);
  const results = new Map<ClaimedDealNote, DealNoteResult>();
  await checkUncertain(api, rows.filter((r) => r.uncertain), results);
  await sendRows(api, rows.filter((r) => !results.has(r)), results, window);
  const all = rows.map((r) => results.get(r)!);
  await finishDealNotes(rt.db, inv.holder, all);
  for (const [row, r] of results) logResult(rt, row, r, report);
  return report;
}

const resultOf = (row: ClaimedDealNote, outcome: DealNoteResult['outcome'], extra: Partial<DealNoteResult> = {}): DealNoteResult =>
  ({ eventId: row.event_id, kind: row.kind, outcome, ...extra });

/** A failed request's meaning for its rows: may it have been applied, was it never sent, or is it refused for good. */
function failureResult(row: ClaimedDealNote, err: unknown): DealNoteResult {
  const e = err instanceof AmoError ? err : new AmoError('retryable', 'internal', errorText(err));
  const error = `${e.code}: ${e.message}`.slice(0, 300);
  if (e.code === 'no_spare_capacity') return resultOf(row, 'release', { error, retryInMs: SPARE_RETRY_MS });
  if (['timeout', 'network', 'server_error', 'unanswered_item'].includes(e.code)) return resultOf(row, 'unknown', { error, retryInMs: RETRY_LATER_MS });
  if (e.kind === 'permanent') return resultOf(row, 'failed', { error });
  return resultOf(row, 'retry', { error, retryInMs: e.code === 'cancelled' ? SPARE_RETRY_MS : RETRY_LATER_MS });
}

/**
 * Rows whose earlier POST may have been applied: the deal's notes or tasks are read, and one
 * with the same text (a task: and deadline) counts as this row's. Each found one answers one
 * row. When the read fails, nothing is sent: the row stays uncertain.
 */
async function checkUncertain(api: AmoNotes, rows: ClaimedDealNote[], results: Map<ClaimedDealNote, DealNoteResult>): Promise<void> {
  for (const kind of ['note', 'task'] as const) {
    const ofKind = rows.filter((r) => r.kind === kind);
    if (!ofKind.length) continue;
    const leads = ofKind.map((r) => r.lead_id);
    let found: { id: number; leadId: number; text: string; completeTill?: number }[];
    try {
      found = kind === 'note' ? await api.leadNotes(leads) : await api.leadTasks(leads);
    } catch (err) {
      // Not known whether it is there: nothing is sent, and the row stays uncertain.
      for (const r of ofKind) {
        const failed = failureResult(r, err);
        results.set(r, failed.outcome === 'release' ? failed : { ...failed, outcome: 'retry' });
      }
      continue;
    }
    const used = new Set<number>();
    for (const r of ofKind) {
      const match = found.find((f) => !used.has(f.id) && f.leadId === r.lead_id && f.text === r.text && (kind === 'note' || f.completeTill === r.complete_till));
      if (!match) continue;
      used.add(match.id);
      results.set(r, resultOf(r, 'done', { amoId: match.id }));
    }
  }
}

/** POSTs the notes, then the tasks (each with its deal's responsible manager). */
async function sendRows(api: AmoNotes, rows: ClaimedDealNote[], results: Map<ClaimedDealNote, DealNoteResult>, window: AbortSignal): Promise<void> {
  const requestId = (r: ClaimedDealNote) => `evt-${r.event_id}-${r.kind}`;
  const apply = (part: ClaimedDealNote[], answers: AddResult[]) => {
    const byRequest = new Map(answers.map((a) => [a.requestId, a] as const));
    for (const r of part) {
      const a = byRequest.get(requestId(r))!;
      if (a.status === 'created') results.set(r, resultOf(r, 'done', { amoId: a.id }));
      else if (a.status === 'rejected') results.set(r, resultOf(r, 'failed', { error: `amoCRM отклонил: ${a.detail}`.slice(0, 300) }));
      else results.set(r, failureResult(r, a.error));
    }
  };
  const notes = rows.filter((r) => r.kind === 'note');
  if (notes.length) apply(notes, await api.addNotes(notes.map((r) => ({ requestId: requestId(r), leadId: r.lead_id, text: r.text })), window));
  const tasks = rows.filter((r) => r.kind === 'task');
  if (!tasks.length) return;
  let owners: Map<number, number>;
  try {
    owners = await api.leadOwners(tasks.map((r) => r.lead_id));
  } catch (err) {
    for (const r of tasks) results.set(r, failureResult(r, err));
    return;
  }
  const gone = tasks.filter((r) => !owners.has(r.lead_id));
  for (const r of gone) results.set(r, resultOf(r, 'failed', { error: `сделка ${r.lead_id} не найдена в amoCRM` }));
  const live = tasks.filter((r) => owners.has(r.lead_id));
  if (live.length) {
    apply(live, await api.addTasks(live.map((r) => ({
      requestId: requestId(r), leadId: r.lead_id, text: r.text, completeTill: r.complete_till!, responsibleUserId: owners.get(r.lead_id)!,
    })), window));
  }
}

const WHAT = { note: 'Заметка', task: 'Задача' } as const;

/** One line per row that is settled (done or failed); rows put off are counted, and told once per round. */
function logResult(rt: Runtime, row: ClaimedDealNote, r: DealNoteResult, report: DealNotesReport): void {
  const ctx = { event: row.event_id, kind: row.kind, attempt: row.attempts };
  if (r.outcome === 'done') {
    report.done++;
    rt.log.ok(`${WHAT[row.kind]} для менеджера добавлена в сделку ${row.lead_id}`, { ...ctx, id: r.amoId, checked: row.uncertain });
  } else if (r.outcome === 'failed') {
    report.failed++;
    rt.log.fail(`${WHAT[row.kind]} для менеджера не добавлена в сделку ${row.lead_id}`, { ...ctx, error: r.error ?? '-' });
  } else {
    report.later++;
    if (r.outcome === 'release') report.waitingForSlot++;
    else rt.log.warn(`${WHAT[row.kind]} для менеджера отложена`, { ...ctx, lead: row.lead_id, outcome: r.outcome, error: r.error ?? '-' });
  }
}

/** How long a drain waits before asking again when every row waited for a spare slot (about one slot at 6/s). */
const ROUND_RETRY_MS = 170;

/**
 * The drain's round of notes and tasks, once no lesson event is due: true while there is
 * such work (rows sent, or rows that only wait for a spare slot). Never throws: notes are
 * never why a drain stops; a round that fails is told once and its rows wait for the next.
 */
export async function dealNotesRound(rt: Runtime): Promise<boolean> {
  try {
    const r = await sendDealNotes(rt);
    if (!r.claimed) return false;
    if (r.waitingForSlot === r.claimed) await rt.clock.sleep(ROUND_RETRY_MS);
    return true;
  } catch (err) {
    rt.log.warn('Заметки и задачи для менеджера отложены: ошибка раунда', { error: errorText(err).slice(0, 120) });
    return false;
  }
}
