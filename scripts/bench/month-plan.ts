// The academy's month, planned ahead from a seed: who signs up when, who completes which
// lesson when (four webinars and a daily trickle of self-paced students), what the sales
// managers do to the deals all day, and the incidents (two amoCRM outages, a revoked
// token, a day without hooks). Sign-ups and self-paced lessons each come at their own
// minute of the academy's working day; managers' edits are planned half-hour by half-hour. The plan is a model of the academy, not of the sync: it
// knows each student's progress and whether a manager closed their deal, because only
// managers close deals. Times are ms from the month's start (00:00 UTC of day 0).

export const MINUTE = 60_000;
export const HOUR = 60 * MINUTE;
export const DAY = 24 * HOUR;

export interface MonthScale {
  days: number;
  signupsPerDay: number;
  /** Of the students with a lesson left, this share attends a webinar (and completes their next lesson at its end). */
  webinarAttendance: number;
  /** Of the students with a lesson left, this share completes their next lesson on any given day, on their own. */
  selfPacedPerDay: number;
  editsPerDay: number;
  seed: number;
  incidents?: Incidents;
}

export interface Incidents {
  /** Days (from 0) with a webinar at 14:00 UTC (19:00 in Almaty). */
  webinarDays: number[];
  /** amoCRM answers 503 to everything / resets every connection. */
  outages: { at: number; ms: number; fault: 'http503' | 'reset' }[];
  /** The integration's access is revoked (every access and refresh token dies). */
  revokeAt: number;
  /** amoCRM's hooks go missing (never sent) for a while. */
  hooksOff: { at: number; ms: number };
}

export type Edit = 'touch' | 'paid' | 'won' | 'lost';
export type Action =
  | { at: number; kind: 'signup'; students: number[] }
  | { at: number; kind: 'lessons'; webinar: boolean; items: { student: number; lesson: number }[] }
  | { at: number; kind: 'edits'; items: { student: number; edit: Edit }[] }
  | { at: number; kind: 'outage'; on: boolean; fault: 'http503' | 'reset' }
  | { at: number; kind: 'revoke' }
  | { at: number; kind: 'hooks'; on: boolean }
  | { at: number; kind: 'sample'; day: number };

export interface MonthPlan {
  scale: MonthScale;
  incidents: Incidents;
  actions: Action[];
  students: number;
  /** Lessons planned, webinar and self-paced. */
  lessons: { webinar: number; selfPaced: number };
  edits: Record<Edit, number>;
}

export const LESSONS = [67, 68, 69] as const;
/** The academy's working day in UTC (08:00–23:00 in Almaty): sign-ups, lessons and edits happen in its half-hours. */
const WORK_FROM_HOUR = 3;
const WORK_SLOTS = 30;
const SLOT = 30 * MINUTE;
const WEBINAR_HOUR = 14;
const OUTAGE_LESSONS = 5;

/** The incidents at the same places in a month of any length (the 30-day month: days 8, 14, 17, 21). */
export function defaultIncidents(days: number): Incidents {
  const day = (share: number) => Math.min(days - 1, Math.round(days * share));
  return {
    webinarDays: [...new Set([0.12, 0.37, 0.6, 0.85].map(day))],
    outages: [
      { at: day(0.27) * DAY + 10 * HOUR, ms: 60 * MINUTE, fault: 'http503' },
      { at: day(0.7) * DAY + 11 * HOUR, ms: 150 * MINUTE, fault: 'reset' },
    ],
    revokeAt: day(0.45) * DAY + 7 * HOUR,
    hooksOff: { at: day(0.55) * DAY, ms: DAY },
  };
}

/** mulberry32: a small seeded generator, so a month can be run again exactly. */
function random(seed: number) {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

interface Model { signedUpAt: number; lessons: number; paid: boolean; closed: boolean }

interface Planning {
  scale: MonthScale;
  incidents: Incidents;
  rnd: () => number;
  model: Model[];
  actions: Action[];
  lessons: { webinar: number; selfPaced: number };
  edits: Record<Edit, number>;
}

export function planMonth(scale: MonthScale): MonthPlan {
  const p: Planning = {
    scale, incidents: scale.incidents ?? defaultIncidents(scale.days), rnd: random(scale.seed),
    model: [], actions: [], lessons: { webinar: 0, selfPaced: 0 }, edits: { touch: 0, paid: 0, won: 0, lost: 0 },
  };
  for (let day = 0; day < scale.days; day++) planDay(p, day);
  const { actions, incidents } = p;
  for (const o of incidents.outages) {
    actions.push({ at: o.at, kind: 'outage', on: true, fault: o.fault }, { at: o.at + o.ms, kind: 'outage', on: false, fault: o.fault });
  }
  actions.push({ at: incidents.revokeAt, kind: 'revoke' });
  actions.push({ at: incidents.hooksOff.at, kind: 'hooks', on: false }, { at: incidents.hooksOff.at + incidents.hooksOff.ms, kind: 'hooks', on: true });
  actions.sort((a, b) => a.at - b.at);
  return { scale, incidents, actions, students: p.model.length, lessons: p.lessons, edits: p.edits };
}

/**
 * One day: sign-ups and self-paced lessons each at its own minute of the working day; the
 * day's webinar; a few lessons early in an outage; the managers' edits, half-hour by half-hour.
 */
function planDay(p: Planning, day: number) {
  const { scale, incidents, rnd, model, actions } = p;
  const workAt = () => day * DAY + WORK_FROM_HOUR * HOUR + Math.floor(rnd() * WORK_SLOTS * SLOT / MINUTE) * MINUTE;
  for (let i = 0; i < scale.signupsPerDay; i++) {
    const at = workAt();
    actions.push({ at, kind: 'signup', students: [model.length] });
    model.push({ signedUpAt: at, lessons: 0, paid: false, closed: false });
  }
  // Self-paced: students signed up before today, one lesson at most per student and day;
  // on a webinar's day everyone waits for the webinar (so each student's lessons stay in order).
  const webinar = incidents.webinarDays.includes(day);
  const today = new Set<number>();
  model.forEach((m, student) => {
    if (webinar || m.signedUpAt >= day * DAY || m.lessons >= LESSONS.length || rnd() >= scale.selfPacedPerDay) return;
    actions.push({ at: workAt(), kind: 'lessons', webinar: false, items: [{ student, lesson: LESSONS[m.lessons++]! }] });
    p.lessons.selfPaced++;
    today.add(student);
  });
  if (webinar) {
    const at = day * DAY + WEBINAR_HOUR * HOUR;
    const items = model.flatMap((m, student) =>
      m.signedUpAt < at && m.lessons < LESSONS.length && rnd() < scale.webinarAttendance ? [{ student, lesson: LESSONS[m.lessons++]! }] : []);
    actions.push({ at: at + 15 * MINUTE, kind: 'lessons', webinar: true, items });
    p.lessons.webinar += items.length;
  }
  // Students do not know amoCRM is down: a few complete a lesson 10 minutes into each outage.
  for (const o of incidents.outages.filter((x) => Math.floor(x.at / DAY) === day)) {
    const items = model.flatMap((m, student) => (m.signedUpAt < o.at && m.lessons < LESSONS.length && !today.has(student) ? [student] : []))
      .slice(0, OUTAGE_LESSONS).map((student) => ({ student, lesson: LESSONS[model[student]!.lessons++]! }));
    if (items.length) actions.push({ at: o.at + 10 * MINUTE, kind: 'lessons', webinar: false, items });
    p.lessons.selfPaced += items.length;
  }
  for (let slot = 0; slot < WORK_SLOTS; slot++) planEdits(p, day * DAY + WORK_FROM_HOUR * HOUR + slot * SLOT + 20 * MINUTE);
  actions.push({ at: day * DAY + 23 * HOUR + 50 * MINUTE, kind: 'sample', day });
}

/** The managers' edits of one half-hour, each on a different open deal; none while amoCRM is down. */
function planEdits(p: Planning, at: number) {
  const { rnd, model, incidents } = p;
  if (incidents.outages.some((o) => at >= o.at && at < o.at + o.ms)) return;
  const open = model.map((m, i) => (m.signedUpAt < at && !m.closed ? i : -1)).filter((i) => i >= 0);
  const count = Math.min(open.length, Math.round(p.scale.editsPerDay / WORK_SLOTS + (rnd() - 0.5)));
  const chosen = new Set<number>();
  while (chosen.size < count) chosen.add(open[Math.floor(rnd() * open.length)]!);
  const items = [...chosen].map((student) => ({ student, edit: managerEdit(model[student]!, rnd) }));
  for (const it of items) p.edits[it.edit]++;
  if (items.length) p.actions.push({ at, kind: 'edits', items });
}

/**
 * What a manager does to an open deal: most edits change no stage (a note, a phone number);
 * a student through the three lessons may be moved to payment, a paid one won; now and
 * then a deal is lost.
 */
function managerEdit(m: Model, rnd: () => number): Edit {
  const r = rnd();
  let edit: Edit = 'touch';
  if (m.paid && r < 0.5) edit = 'won';
  else if (!m.paid && m.lessons === LESSONS.length && r < 0.35) edit = 'paid';
  else if (r < 0.03) edit = 'lost';
  if (edit === 'paid') m.paid = true;
  if (edit === 'won' || edit === 'lost') m.closed = true;
  return edit;
}
