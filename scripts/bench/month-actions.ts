// What each thing the month's plan says happens does to the stack: students sign up on the
// platform (and have a contact and a deal in amoCRM), complete lessons (their own INSERT:
// the trigger, pg_net and the webhook do the rest), managers edit deals in amoCRM, amoCRM
// goes down or loses its hooks, the integration's tokens are revoked, and the operator
// answers an alert. Each returns once its own part is done; what it set off runs on.
import type { Student } from '../../dev/stack/index.ts';
import { exchangeCodeCommand } from '../../lib/ops/token-commands.ts';
import type { Action, Edit } from './month-plan.ts';
import type { MonthStack } from './month-stack.ts';
import { tableSizes, vacuumTables, type TableSizes } from './month-storage.ts';

/** The operator's answers to the alerts that ask for a person. */
export type OperatorAction = { at: number; kind: 'reauth' | 'replay' };

export interface ActionRecord {
  students: Student[];
  skippedEdits: number;
  samples: TableSizes[];
  incidents: { at: number; what: string }[];
  operator: { at: number; what: string }[];
  /** amoCRM down / hooks missing right now. */
  outage: boolean;
  hooksOff: boolean;
}

const WON = 142;
const LOST = 143;

export const emailOf = (student: number) => `student${String(student).padStart(5, '0')}@month.kz`;

/**
 * The custom fields an academy's deal carries (UTM tags, course, tariff, city, phone,
 * e-mail, as scripts/retention-storage.ts measures them): amoCRM sends them in every hook,
 * so they are most of what a stored hook body weighs. Each student's own values, so the
 * bodies compress no better than real ones.
 */
const FIELDS = ['utm_source', 'utm_medium', 'utm_campaign', 'utm_content', 'utm_term', 'Курс', 'Тариф', 'Город', 'Телефон', 'Email'];
function customFields(student: number, email: string) {
  const own = (i: number) => (i === 8 ? `+7701${String(1_000_000 + student).slice(1)}` : i === 9 ? email : `${FIELDS[i]}-${((student + 1) * 2654435761 % 2 ** 32).toString(36)}`);
  return FIELDS.map((name, i) => ({ id: 700_000 + i, name, values: [{ value: own(i) }] }));
}

export async function perform(ms: MonthStack, rec: ActionRecord, a: Action | OperatorAction): Promise<void> {
  const { s } = ms;
  const note = (what: string) => { rec.incidents.push({ at: Date.now(), what }); };
  switch (a.kind) {
    case 'signup': {
      const made = await s.addStudents(a.students.map(emailOf));
      a.students.forEach((i, k) => {
        const st = made[k]!;
        rec.students[i] = st;
        s.amo.addLead({ ...s.amo.lead(st.leadId)!, customFields: customFields(i, st.email) }); // the same deal, with its fields
      });
      return;
    }
    case 'lessons':
      for (const it of a.items) await s.database.sql('insert into public.lesson_progress (user_id, lesson_id) values ($1, $2)', [rec.students[it.student]!.userId, it.lesson]);
      return;
    case 'edits': return managerEdits(ms, rec, a.items);
    case 'outage':
      rec.outage = a.on;
      if (a.on) s.amo.inject('*', a.fault === 'http503' ? { status: 503 } : { kind: 'reset' }, 1e9);
      else s.amo.clearFaults();
      return note(`amoCRM outage (${a.fault === 'http503' ? '503 to everything' : 'every connection reset'}) ${a.on ? 'begins' : 'ends'}`);
    case 'revoke':
      // The integration's access revoked in amoCRM: every access and refresh token dies at once.
      s.amo.revokeRefreshTokens();
      s.amo.expireAccessTokens();
      return note("the integration's tokens revoked in amoCRM");
    case 'hooks':
      rec.hooksOff = !a.on;
      if (a.on) s.amo.hooksOn();
      else s.amo.hooksOff();
      return note(a.on ? "amoCRM's hooks come back" : "amoCRM's hooks go missing");
    case 'sample':
      await vacuumTables(s);
      rec.samples.push(await tableSizes(s));
      return;
    case 'reauth': return reauthorize(ms, rec);
    case 'replay': return replayDead(ms, rec);
  }
}

/** One deal at a time, each edit's hooks answered before the next, as people work. */
async function managerEdits(ms: MonthStack, rec: ActionRecord, items: { student: number; edit: Edit }[]) {
  const { amo, layout } = ms.s;
  for (const it of items) {
    const leadId = rec.students[it.student]!.leadId;
    const lead = amo.lead(leadId)!;
    if (lead.statusId === WON || lead.statusId === LOST) { rec.skippedEdits++; continue; }
    if (it.edit === 'touch') amo.managerMove(leadId, { statusId: lead.statusId }); // a note, a phone number: no stage change
    else if (it.edit === 'paid') amo.managerMove(leadId, { statusId: layout.stages.paid });
    else if (it.edit === 'won') amo.managerWin(leadId);
    else amo.managerLose(leadId);
    await amo.hooksSettled();
  }
}

/** `npm run amocrm -- exchange-code <code>` with a fresh authorization code. */
async function reauthorize(ms: MonthStack, rec: ActionRecord) {
  const result = await exchangeCodeCommand({ db: ms.s.db, env: ms.s.env }, ms.s.amo.issueAuthCode());
  rec.operator.push({ at: Date.now(), what: `exchange-code (exit ${result.exitCode}): ${result.lines.join(' / ')}` });
}

/** POST /api/amocrm/replay {"status":"dead"}, continued until every dead event was run again. */
async function replayDead(ms: MonthStack, rec: ActionRecord) {
  let body: Record<string, unknown> = { status: 'dead', limit: 500 };
  const outcomes: Record<string, number> = {};
  for (let round = 0; round < 20; round++) {
    const r = await ms.replay(body);
    for (const item of r.results ?? []) outcomes[item.outcome] = (outcomes[item.outcome] ?? 0) + 1;
    if (!r.continue_with) break;
    body = r.continue_with;
  }
  rec.operator.push({ at: Date.now(), what: `replay --status dead: ${Object.entries(outcomes).map(([k, v]) => `${k} ${v}`).join(', ') || 'nothing to replay'}` });
}
