// What fast-check chooses for a schedule, besides the interleaving itself: who acts, which
// faults happen, and what becomes of each of amoCRM's hook deliveries. Each profile is one
// property; "lessons" is the forward sync under faults, "hooks" amoCRM's changes coming
// back, "all" both at once.
import fc from 'fast-check';
import type { AmoFault } from './transport.ts';

export const LESSONS = [67, 68, 69] as const;
export type ManagerAction = 'win' | 'lose' | 'paid' | 'back';
export interface StudentPlan {
  /** Lessons in the order the student completes them. */
  lessons: number[];
  /** Doorbells (webhook deliveries) per completion, by position: 0 = lost, 2 = delivered twice. */
  webhooks: number[];
  manager?: ManagerAction;
}
/** One of amoCRM's deliveries: copies 0 = lost; short = the status form without a time; sameId = a retry with the same request id. */
export interface HookPlan { copies: number; form: 'full' | 'short'; sameId: boolean }
export interface Kill { actor: 'drainer' | 'sweep' | 'webhook'; which: number; atStep: number }

export interface Scenario {
  students: StudentPlan[];
  drainers: number;
  sweeps: number;
  feedReads: number;
  replay?: { student: number; force: boolean };
  faults: AmoFault[];
  /** Time passing at a moment the scheduler picks, in seconds (61: the drain lease and the grace run out; 91: claims too). */
  timePasses: number[];
  outage: boolean;
  kills: Kill[];
  /** Applied to the deliveries in the order amoCRM makes them (cycled). */
  hooks: HookPlan[];
}

export type Profile = 'lessons' | 'hooks' | 'all';
export const PROFILES: Profile[] = ['lessons', 'hooks', 'all'];

const student = (manager: boolean) => fc.record({
  lessons: fc.shuffledSubarray([...LESSONS], { minLength: 1 }),
  webhooks: fc.array(fc.integer({ min: 0, max: 2 }), { minLength: 3, maxLength: 3 }),
  manager: manager ? fc.option(fc.constantFrom<ManagerAction>('win', 'lose', 'paid', 'back'), { nil: undefined, freq: 2 }) : fc.constant(undefined),
}, { requiredKeys: ['lessons', 'webhooks'] });

const fault = fc.record({
  on: fc.constantFrom('patch', 'read', 'search', 'any'),
  nth: fc.integer({ min: 0, max: 3 }),
  kind: fc.constantFrom('429', '503', 'timeout', 'late', 'lost_answer', 'slow'),
}) as fc.Arbitrary<AmoFault>;

const hook = fc.record({
  copies: fc.constantFrom(1, 1, 0, 2, 3),
  form: fc.constantFrom('full', 'short'),
  sameId: fc.boolean(),
}) as fc.Arbitrary<HookPlan>;

const kill = fc.record({
  actor: fc.constantFrom('drainer', 'sweep', 'webhook'),
  which: fc.integer({ min: 0, max: 2 }),
  atStep: fc.integer({ min: 1, max: 12 }),
}) as fc.Arbitrary<Kill>;

export function scenarioArb(profile: Profile): fc.Arbitrary<Scenario> {
  const forward = profile !== 'hooks';
  const back = profile !== 'lessons';
  return fc.record({
    students: fc.array(student(back), { minLength: 1, maxLength: 2 }),
    drainers: fc.integer({ min: 0, max: forward ? 2 : 0 }),
    sweeps: fc.integer({ min: 0, max: 1 }),
    feedReads: fc.integer({ min: 0, max: back ? 2 : 0 }),
    replay: forward ? fc.option(fc.record({ student: fc.integer({ min: 0, max: 1 }), force: fc.boolean() }), { nil: undefined }) : fc.constant(undefined),
    faults: fc.array(fault, { maxLength: forward ? 3 : 1 }),
    timePasses: fc.array(fc.constantFrom(61, 91), { maxLength: forward ? 2 : 0 }),
    outage: forward ? fc.boolean() : fc.constant(false),
    kills: fc.array(kill, { maxLength: forward ? 1 : 0 }),
    // In "lessons" every hook is lost: the mirror is filled in by the events feed alone.
    hooks: back ? fc.array(hook, { minLength: 1, maxLength: 6 }) : fc.constant([{ copies: 0, form: 'full', sameId: true } as HookPlan]),
  }, { requiredKeys: ['students', 'drainers', 'sweeps', 'feedReads', 'faults', 'timePasses', 'outage', 'kills', 'hooks'] });
}
