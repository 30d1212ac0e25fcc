// The checkers, run after every schedule once it has gone quiet, against amoCRM's own record
// (the stand-in's events feed holds every stage change, who made it and from where) and the
// database. Each returns the violations it found, one line each.
import { STANDIN_USERS, type StandinEvent } from '../../dev/amocrm-standin/index.ts';
import { currentFunnels } from '../../lib/db/funnels.ts';
import { PIPELINE, STAGE } from '../helpers/stack.ts';
import type { Student } from './actors.ts';
import type { ManagerAction, Scenario } from './scenario.ts';
import type { World } from './world.ts';

export type InvariantName = 'forward_only' | 'closed_untouched' | 'changes_once' | 'closure_once' | 'events_final' | 'outcome' | 'no_429' | 'mirror';
export interface Violation { invariant: InvariantName; detail: string }

const WON = 142;
const LOST = 143;
/** The Tripwire pipeline's stages around the funnel's own: before its first step, after its last. */
const AROUND: Record<number, number> = { [STAGE.incoming]: 0, [STAGE.paid]: 100 };
const STAGE_OF_LESSON: Record<number, number> = { 67: STAGE.lesson1, 68: STAGE.lesson2, 69: STAGE.lesson3 };
const FINAL = ['done', 'skipped', 'failed', 'dead', 'parked'];

const after = (e: StandinEvent) => e.value_after[0]?.lead_status.id;
const pipelineOf = (e: StandinEvent) => e.value_after[0]?.lead_status.pipeline_id;

/** Per pipeline, each funnel step's stage by its position: forward only is per funnel. */
async function funnelOrders(w: World): Promise<Map<number, Record<number, number>>> {
  const orders = new Map<number, Record<number, number>>([[PIPELINE, { ...AROUND }]]);
  const tripwire = { pipelineId: PIPELINE, steps: [STAGE.lesson1, STAGE.lesson2, STAGE.lesson3].map((stageId) => ({ stageId })) };
  for (const f of (await currentFunnels(w.s.t.db))?.funnels ?? [tripwire]) {
    const order = orders.get(f.pipelineId) ?? {};
    f.steps.forEach((step, i) => { order[step.stageId] = i + 1; });
    orders.set(f.pipelineId, order);
  }
  return orders;
}
const before = (e: StandinEvent) => e.value_before[0]?.lead_status.id;

export async function checkAll(w: World, scenario: Scenario, students: Student[], injected429: number): Promise<Violation[]> {
  const v: Violation[] = [];
  const add = (invariant: InvariantName, detail: string) => v.push({ invariant, detail });
  const leads = new Set(students.map((s) => s.leadId));
  const changes = w.s.amo.leadEvents().filter((e) => e.type === 'lead_status_changed' && leads.has(e.entity_id));

  // 1. amoCRM's ledger: the sync never moved a deal backwards within a funnel, never touched a won or lost one.
  const orders = await funnelOrders(w);
  for (const e of changes) {
    const ORDER = orders.get(pipelineOf(e) ?? 0) ?? {};
    if (e.created_by !== STANDIN_USERS.api) continue;
    const [b, a] = [before(e)!, after(e)!];
    if (b === WON || b === LOST) add('closed_untouched', `deal ${e.entity_id}: the sync moved a ${b === WON ? 'won' : 'lost'} deal to ${a}`);
    else if (ORDER[b] !== undefined && ORDER[a] !== undefined && ORDER[a]! < ORDER[b]!) add('forward_only', `deal ${e.entity_id}: the sync moved it backwards ${b} → ${a}`);
  }

  // 2. Every real change reached deal_changes exactly once; each closure (won, lost) never more than once.
  const rows = await w.sql(`select lead_id::bigint as lead_id, kind, status_id::bigint as status_id from amocrm.deal_changes
                             where lead_id = any($1::bigint[]) and kind <> 'deleted' order by id`, [[...leads]]);
  for (const lead of leads) {
    const want = changes.filter((e) => e.entity_id === lead).map((e) => after(e)!);
    const got = rows.filter((r) => Number(r.lead_id) === lead).map((r) => Number(r.status_id));
    const count = (xs: number[]) => xs.reduce<Record<number, number>>((m, x) => ({ ...m, [x]: (m[x] ?? 0) + 1 }), {});
    const [cw, cg] = [count(want), count(got)];
    for (const st of new Set([...want, ...got])) {
      if ((cw[st] ?? 0) === (cg[st] ?? 0)) continue;
      // A closure told twice grants the course twice: its own invariant, so it can be sought alone.
      const closure = (st === WON || st === LOST) && (cg[st] ?? 0) > (cw[st] ?? 0);
      add(closure ? 'closure_once' : 'changes_once', `deal ${lead}: amoCRM changed it to ${st}${st === WON ? ' (won)' : st === LOST ? ' (lost)' : ''} ${cw[st] ?? 0}×, deal_changes has ${cg[st] ?? 0} row(s)`);
    }
  }

  // 3. Every completion has its event, and every event ended in a final state with its reason.
  const events = await w.sql(`select e.id, e.user_id, e.lesson_id, e.status, e.retryable, e.last_error_code
                                from amocrm.sync_events e where e.user_id = any($1::uuid[]) order by e.id`, [students.map((s) => s.userId)]);
  students.forEach((st, i) => {
    for (const lesson of scenario.students[i]!.lessons) {
      const mine = events.filter((e) => e.user_id === st.userId && Number(e.lesson_id) === lesson);
      if (mine.length !== 1) add('events_final', `student ${i}, lesson ${lesson}: ${mine.length} events (want 1)`);
    }
  });
  for (const e of events) {
    const final = FINAL.includes(e.status) && !(e.status === 'failed' && e.retryable);
    if (!final) add('events_final', `event ${e.id} (lesson ${e.lesson_id}) is still ${e.status}${e.retryable ? ' (retryable)' : ''}`);
    else if (e.status !== 'done' && !e.last_error_code) add('events_final', `event ${e.id} is ${e.status} without a reason`);
  }

  // 4. What a done event says holds: with no manager in the way, the deal is at the newest completed lesson's stage.
  const ORDER = orders.get(PIPELINE)!;
  students.forEach((st, i) => {
    const plan = scenario.students[i]!;
    if (plan.manager) return;
    const mine = events.filter((e) => e.user_id === st.userId);
    if (!mine.length || mine.some((e) => e.status !== 'done' && e.status !== 'skipped')) return;
    const want = Math.max(...plan.lessons.map((l) => ORDER[STAGE_OF_LESSON[l]!]!));
    const now = w.s.amo.lead(st.leadId)!.statusId;
    if (ORDER[now] !== want) add('outcome', `student ${i}: every event done or skipped, but deal ${st.leadId} is at ${now}, not ${[...Object.entries(ORDER)].find(([, o]) => o === want)![0]}`);
  });

  // 5. No 429 from amoCRM that the schedule did not inject (the shared limit held).
  const tooMany = w.s.amo.counts().tooMany;
  if (tooMany > 0) add('no_429', `amoCRM answered ${tooMany} 429(s) of its own (plus ${injected429} injected)`);

  // 6. After quiet, the mirror equals amoCRM for every deal amoCRM changed.
  const deals = await w.sql(`select lead_id::bigint as lead_id, status_id::bigint as status_id, pipeline_id::bigint as pipeline_id, deleted
                               from amocrm.deals where lead_id = any($1::bigint[])`, [[...leads]]);
  for (const lead of leads) {
    if (!changes.some((e) => e.entity_id === lead)) continue;
    const real = w.s.amo.lead(lead)!;
    const m = deals.find((d) => Number(d.lead_id) === lead);
    if (!m) add('mirror', `deal ${lead}: amoCRM has it at ${real.statusId}, the mirror does not have it`);
    else if (Number(m.status_id) !== real.statusId || Number(m.pipeline_id) !== real.pipelineId || m.deleted) {
      add('mirror', `deal ${lead}: amoCRM has it at ${real.statusId}, the mirror at ${m.status_id}${m.deleted ? ' (deleted)' : ''}`);
    }
  }
  return v;
}

export const describeManager = (m?: ManagerAction) => m ?? 'none';
