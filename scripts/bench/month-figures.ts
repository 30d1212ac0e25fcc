// The month's figures, read once it is over from what recorded it: the database, amoCRM's
// own record (the stand-in's events feed holds every stage change and who made it), the
// Telegram stand-in's messages, and the sync's log.
import { STANDIN_USERS } from '../../dev/amocrm-standin/index.ts';
import type { MonthLog } from './month-log.ts';
import { DAY, HOUR, MINUTE, type MonthPlan } from './month-plan.ts';
import type { Observations } from './month-run.ts';
import type { MonthStack } from './month-stack.ts';
import { storageFigures } from './month-storage.ts';

export type RowFn = (figure: string, value: string, target?: string) => void;

const WON = 142;
const LOST = 143;

export const kb = (bytes: number) => (Math.abs(bytes) >= 1024 * 1024 ? `${(bytes / 1024 / 1024).toFixed(2)} MB` : `${Math.round(bytes / 1024)} KB`);
const span = (ms: number) => (ms >= 2 * HOUR ? `${(ms / HOUR).toFixed(1)} h` : ms >= 2 * MINUTE ? `${Math.round(ms / MINUTE)} min` : `${Math.round(ms / 1000)} s`);

/** A virtual time as the month's day and UTC time: "day 14 07:00". */
export const when = (obs: Observations, at: number) => {
  const t = at - obs.startAt;
  return `day ${Math.floor(t / DAY)} ${new Date(obs.startAt + (t % DAY)).toISOString().slice(11, 16)}`;
};

export function storageRows(obs: Observations, row: RowFn) {
  const touchedBy: Record<string, string> = { attempts_removed: 'event_attempts', events_compacted: 'sync_events', history_removed: 'deal_stage_history', changes_removed: 'deal_changes' };
  const acted = new Set(Object.entries(touchedBy).filter(([rule]) => (obs.retention[rule] ?? 0) > 0).map(([, t]) => t));
  if (acted.has('event_attempts')) acted.add('console_rollup');
  const untouched = new Set(Object.keys(obs.startSizes).filter((t) => t !== 'crm_deliveries' && !acted.has(t)));
  const figures = storageFigures(obs.samples, obs.startSizes, untouched).sort((a, b) => b.endBytes - a.endBytes);
  const big = figures.filter((f) => f.endBytes >= 256 * 1024 || f.table === 'crm_deliveries');
  const growth = (bytes: number, perDay: number, lastWeek: number) => `${kb(bytes)} at the end, ${kb(perDay)}/day (last 7 days: ${kb(lastWeek)}/day)`;
  for (const f of big) {
    const without = f.withoutBytes === undefined ? 'not measured (a retention rule acted on it)'
      : f.table === 'crm_deliveries' ? growth(f.withoutBytes, f.withoutPerDay!, f.withoutPerDayLastWeek!)
      : 'the same (no retention rule acts on it within a month)';
    row(`storage: amocrm.${f.table}`, `with retention ${growth(f.endBytes, f.perDay, f.perDayLastWeek)}; without: ${without}`);
  }
  const rest = figures.filter((f) => !big.includes(f));
  row(`storage: the other ${rest.length} amocrm tables`, `${kb(rest.reduce((a, f) => a + f.endBytes, 0))} in all (${rest.map((f) => `${f.table} ${kb(f.endBytes)}`).join(', ')})`);
  const total = (k: 'endBytes' | 'perDay' | 'perDayLastWeek', w: 'withoutBytes' | 'withoutPerDay' | 'withoutPerDayLastWeek') =>
    [figures.reduce((a, f) => a + f[k], 0), figures.reduce((a, f) => a + (f[w] ?? f[k]), 0)];
  const [endW, endWo] = total('endBytes', 'withoutBytes');
  const [dayW, dayWo] = total('perDay', 'withoutPerDay');
  const [weekW, weekWo] = total('perDayLastWeek', 'withoutPerDayLastWeek');
  row('storage: every amocrm table', `with retention ${growth(endW!, dayW!, weekW!)}; without ${growth(endWo!, dayWo!, weekWo!)}`);
  row('storage: what retention did over the month', Object.entries(obs.retention).map(([k, v]) => `${k} ${v}`).join(', ') || 'nothing');
}

/** Each expected condition once (one occurrence per planned incident), nothing else. */
export function alertRows(plan: MonthPlan, obs: Observations, log: MonthLog, ms: MonthStack, openAtEnd: string[], row: RowFn) {
  const expected: Record<string, number> = { events_waiting: plan.incidents.outages.length, token_chain: 1, hook_silent: 1 };
  const by = new Map<string, { started: number; reminder: number; ended: number }>();
  for (const a of log.alerts) {
    const k = by.get(a.kind) ?? { started: 0, reminder: 0, ended: 0 };
    k[a.state as 'started' | 'reminder' | 'ended']++;
    by.set(a.kind, k);
  }
  row('alerts sent, by kind (started / reminders / ended)', [...by].map(([k, v]) => `${k} ${v.started}/${v.reminder}/${v.ended}`).join(', ') || 'none');
  const wrong = Object.entries(expected).flatMap(([k, n]) => {
    const got = by.get(k);
    return got?.started === n && got.ended === n ? [] : [`${k}: expected ${n} started and ended, got ${got?.started ?? 0} started, ${got?.ended ?? 0} ended`];
  });
  row('alerts: each expected condition started and ended once per incident', wrong.length ? `NO: ${wrong.join('; ')}` : `yes (${Object.entries(expected).map(([k, n]) => `${k} ×${n}`).join(', ')})`, 'yes');
  const unexpected = log.alerts.filter((a) => !(a.kind in expected) && a.state === 'started');
  row('alerts: unexpected conditions', unexpected.length ? unexpected.map((a) => `${a.kind} at ${when(obs, a.at)}`).join(', ') : 'none', 'none');
  row('alerts: open at the end of the month', openAtEnd.join(', ') || 'none', 'none');
  row('alerts: messages the Telegram stand-in received', `${ms.telegram.messages.length} (${log.alerts.length} announced)`);
  const timeline = log.alerts.map((a) => `${when(obs, a.at)} ${a.kind} ${a.state}`).join('; ');
  return timeline;
}

export async function feedRows(obs: Observations, ms: MonthStack, row: RowFn) {
  const lag = obs.feedLagWorst;
  row("events feed: worst lag left by a scheduled run (now − read through)", `${span(lag.seconds * 1000)} at ${when(obs, lag.at)}`);
  const [f] = await ms.s.database.sql(`select count(*)::int as n,
      coalesce(max(extract(epoch from created_at - changed_at)), 0)::float as worst,
      coalesce(percentile_cont(0.5) within group (order by extract(epoch from created_at - changed_at)), 0)::float as median
    from amocrm.deal_changes where source = 'feed'`);
  row('events feed: changes the hooks missed, brought by the feed', `${f!.n}; amoCRM's change → the platform's deal_changes: median ${span(f!.median * 1000)}, worst ${span(f!.worst * 1000)}`);
  const attempts = ms.s.amo.hookAttempts;
  const sent = attempts.filter((a) => !a.dropped);
  const failed = sent.filter((a) => !a.ok);
  row("amoCRM's hook deliveries", `${sent.length} sent, ${sent.length - failed.length} answered 2xx, ${failed.length} not (${failed.filter((a) => a.error === 'timeout').length} after amoCRM's 2 s); ` +
    `${attempts.length - sent.length} went missing (the day without hooks)`);
}

/**
 * The reverse direction over the month: every stage change amoCRM made (its own record) in
 * the platform's deal_changes exactly once, whichever of the hooks and the feed brought it;
 * and the mirror at amoCRM's stage for every deal amoCRM changed.
 */
export async function mirrorRows(ms: MonthStack, row: RowFn) {
  const changes = ms.s.amo.leadEvents().filter((e) => e.type === 'lead_status_changed');
  const want = new Map<string, number>();
  for (const e of changes) {
    const key = `${e.entity_id}:${e.value_after[0]!.lead_status.id}`;
    want.set(key, (want.get(key) ?? 0) + 1);
  }
  const got = new Map<string, number>();
  for (const r of await ms.s.database.sql(`select lead_id::bigint as lead, status_id::bigint as status, count(*)::int as n
      from amocrm.deal_changes where kind <> 'deleted' group by 1, 2`)) got.set(`${r.lead}:${r.status}`, r.n);
  let missing = 0;
  let extra = 0;
  for (const key of new Set([...want.keys(), ...got.keys()])) {
    const d = (got.get(key) ?? 0) - (want.get(key) ?? 0);
    if (d < 0) missing -= d;
    else extra += d;
  }
  row("amoCRM's stage changes in the platform's deal_changes", `${changes.length} changes: ${missing} missing, ${extra} more than once`, '0 missing, 0 more than once');
  const leads = [...new Set(changes.map((e) => e.entity_id))];
  const mirror = await ms.s.database.sql('select lead_id::bigint as lead, status_id::bigint as status from amocrm.deals where lead_id = any($1::bigint[])', [leads]);
  const at = new Map(mirror.map((m) => [Number(m.lead), Number(m.status)]));
  const off = leads.filter((id) => at.get(id) !== ms.s.amo.lead(id)!.statusId);
  row('the mirror at amoCRM\'s stage at the end, for every deal amoCRM changed', `${leads.length - off.length} of ${leads.length}${off.length ? `; NOT: ${off.slice(0, 5).join(', ')}` : ''}`, 'all');
}

export async function tokenRows(obs: Observations, log: MonthLog, ms: MonthStack, row: RowFn) {
  const rotations = ms.s.amo.counts().refreshes;
  const stored = log.count('Токены успешно обновлены');
  const lost = log.count('Новые токены не сохранены');
  row('token chain: refreshes (access token valid 24 h, refresh token single-use)', `${rotations} rotations by amoCRM, ${stored} stored, ${lost} lost`, 'every rotation stored');
  const breaks = log.count('Цепочка токенов прервана');
  const reauth = obs.operator.filter((o) => o.what.startsWith('exchange-code'));
  row('token chain: breaks', `${breaks} (the revocation); re-authorised ${reauth.map((o) => `at ${when(obs, o.at)}`).join(', ') || 'never'}; ${reauth.map((o) => o.what.match(/parked events resumed: \d+/)?.[0]).filter(Boolean).join(', ')}`, '1');
  // The chain holds if the refresh token stored now still rotates.
  let intact: string;
  try {
    await ms.s.runtime.invocation(10_000).tokens.forceRefresh();
    intact = `yes: the stored refresh token rotated once more at the end (${ms.s.amo.counts().refreshes - rotations} rotation)`;
  } catch (err) {
    intact = `NO: ${String((err as Error).message).slice(0, 160)}`;
  }
  row('token chain intact at the end', intact, 'yes');
  row('401s from amoCRM', String(ms.s.amo.counts().unauthorized));
}

export async function eventRows(obs: Observations, ms: MonthStack, row: RowFn) {
  const rows = await ms.s.database.sql(`select status, coalesce(last_error_code, '') as code, count(*)::int as n from amocrm.sync_events group by 1, 2 order by 3 desc`);
  const total = rows.reduce((a, r) => a + r.n, 0);
  const notFinal = rows.filter((r) => r.status !== 'done' && r.status !== 'skipped');
  const skipped = rows.filter((r) => r.status === 'skipped').map((r) => `${r.code} ${r.n}`).join(', ');
  const [missing] = await ms.s.database.sql(`select count(*)::int as n from public.lesson_progress p
      where p.lesson_id in (67, 68, 69) and not exists (select 1 from amocrm.sync_events e where e.user_id = p.user_id and e.lesson_id = p.lesson_id)`);
  const lost = notFinal.reduce((a, r) => a + r.n, 0) + missing!.n;
  row('events lost (a completion without its event, or an event not done/skipped at the end)',
    `${lost} of ${total} (done ${rows.filter((r) => r.status === 'done').reduce((a, r) => a + r.n, 0)}, skipped ${skipped || 0}${notFinal.length ? `; NOT FINAL: ${notFinal.map((r) => `${r.status}/${r.code} ${r.n}`).join(', ')}` : ''}; completions without an event ${missing!.n})`, '0');
  const replays = obs.operator.filter((o) => o.what.startsWith('replay'));
  // Always reported: an event that died needed a person, so "none" is a figure too.
  row('events dead during the month, replayed by the operator after the alert',
    replays.length ? `${replays.length} ${replays.length === 1 ? 'replay' : 'replays'}: ${replays.map((o) => `${when(obs, o.at)}: ${o.what}`).join('; ')}` : '0: no event died, no replay needed', '0');
}

export function dealRows(ms: MonthStack, row: RowFn) {
  const { stages } = ms.s.layout;
  const order: Record<number, number> = { [stages.incoming]: 0, [stages.lesson1]: 1, [stages.lesson2]: 2, [stages.lesson3]: 3, [stages.paid]: 4 };
  const changes = ms.s.amo.leadEvents().filter((e) => e.type === 'lead_status_changed');
  const bySync = changes.filter((e) => e.created_by === STANDIN_USERS.api);
  const backwards: string[] = [];
  const closed: string[] = [];
  for (const e of bySync) {
    const before = e.value_before[0]!.lead_status.id;
    const after = e.value_after[0]!.lead_status.id;
    if (before === WON || before === LOST) closed.push(`deal ${e.entity_id}: ${before} → ${after}`);
    else if ((order[after] ?? Infinity) <= (order[before] ?? -Infinity)) backwards.push(`deal ${e.entity_id}: ${before} → ${after}`);
  }
  row('deals moved backwards by the sync (amoCRM\'s record of every stage change, per deal)', `${backwards.length} of ${bySync.length} moves${backwards.length ? `: ${backwards.slice(0, 5).join(', ')}` : ''} (managers made ${changes.length - bySync.length} stage changes)`, '0');
  row('won or lost deals the sync moved', `${closed.length}${closed.length ? `: ${closed.slice(0, 5).join(', ')}` : ''}`, '0');
  const counts = ms.s.amo.counts();
  row('429s / 403s from amoCRM', `${counts.tooMany} / ${ms.s.amo.requests.filter((r) => r.status === 403).length} (of ${counts.total} requests)`, '0 / 0');
}
