// amoCRM as the explorer's actors reach it: the real request sender over the real stand-in,
// with each request a step, and the faults the schedule chose. Faults are made here, not in
// the stand-in, so that "applied late" happens at a moment the scheduler picks:
//   429, 503            answered instead of amoCRM (nothing applied)
//   timeout             never reaches amoCRM; the client gives up
//   late                amoCRM takes the request, the client gives up, amoCRM applies it later
//                       (a separate step; at most LATE_BOUND_MS of virtual time later)
//   lost_answer         applied, then 502 (the answer is lost)
//   slow                answered after a claim lease ran out (91 s pass during the request)
import { retryable } from '../../lib/amocrm/errors.ts';
import type { AmoRequest, Transport } from '../../lib/amocrm/http.ts';
import { newActor, type Actor, type Gates } from './gates.ts';

export type FaultKind = '429' | '503' | 'timeout' | 'late' | 'lost_answer' | 'slow';
export type RequestClass = 'patch' | 'read' | 'search' | 'any';
export interface AmoFault { on: RequestClass; nth: number; kind: FaultKind }

/** How long after it was sent amoCRM may still apply a request it took (virtual ms). */
export const LATE_BOUND_MS = 60_000;
export const SLOW_MS = 91_000;

const classOf = (req: AmoRequest): Exclude<RequestClass, 'any'> =>
  req.method === 'PATCH' ? 'patch' : req.path.startsWith('/api/v4/contacts') ? 'search' : 'read';

export interface AmoSide {
  send(req: AmoRequest, bearer?: string): Promise<{ status: number; data: unknown; headers: Record<string, string> }>;
  /** Before a change the stand-in makes: amoCRM's clock steps. */
  beforeChange(): void;
  /** After a request or a manager's action: the hooks it sent are collected (deterministically). */
  afterwards(): Promise<void>;
  passTime(ms: number, why: string): Promise<void>;
  passed(): number;
}

interface Late { sentAt: number; apply: () => Promise<void>; done: boolean }

export class FaultPlan {
  private seen: Record<RequestClass, number> = { patch: 0, read: 0, search: 0, any: 0 };
  private pending: AmoFault[];
  readonly lates: Late[] = [];
  injected429 = 0;
  on = true;
  constructor(faults: AmoFault[]) {
    this.pending = [...faults];
  }
  take(req: AmoRequest): AmoFault | undefined {
    if (!this.on) return undefined;
    const cls = classOf(req);
    const n = { cls: this.seen[cls]++, any: this.seen.any++ };
    const i = this.pending.findIndex((f) => (f.on === 'any' ? f.nth === n.any : f.on === cls && f.nth === n.cls));
    return i < 0 ? undefined : this.pending.splice(i, 1)[0];
  }
  /** Late applies that would be older than the bound once `ms` more pass: they happen first. */
  async settleLates(passedNow: number, ms: number): Promise<void> {
    for (const l of this.lates) if (!l.done && passedNow + ms - l.sentAt >= LATE_BOUND_MS) await l.apply();
  }
  async settleAllLates(): Promise<void> {
    for (const l of this.lates) if (!l.done) await l.apply();
  }
}

const answer = (status: number, data: unknown, headers: Record<string, string> = {}) => ({ status, data, headers });

export function exploredTransport(g: Gates, actor: Actor | undefined, amo: AmoSide, plan: FaultPlan, late: Promise<unknown>[]): Transport {
  const deliver = async (req: AmoRequest, bearer?: string) => {
    if (req.method === 'PATCH') amo.beforeChange();
    const res = await amo.send(req, bearer);
    await amo.afterwards();
    return res;
  };
  return {
    async ready() {
      // Loading axios and opening the connection are real work, not a choice.
    },
    send(req, bearer) {
      const label = `amoCRM ${req.method} ${req.path}${req.method === 'PATCH' && Array.isArray(req.body) ? ` ×${req.body.length}` : ''}`;
      return g.step(actor, label, async () => {
        const fault = plan.take(req);
        if (fault) g.trace.push(`  ⚡ ${fault.kind} on ${label}`);
        switch (fault?.kind) {
          case '429':
            plan.injected429++;
            return answer(429, { title: 'Too Many Requests', status: 429, retry_after: 1 }, { 'retry-after': '1' });
          case '503':
            return answer(503, { title: 'Service Unavailable', status: 503 });
          case 'timeout':
            throw retryable('timeout', 'amoCRM не ответил (explorer: timeout)');
          case 'late': {
            const entry: Late = { sentAt: amo.passed(), done: false, apply: async () => {
              if (entry.done) return;
              entry.done = true;
              g.trace.push(`  ⚡ amoCRM applies late: ${label}`);
              await deliver(req, bearer);
            } };
            plan.lates.push(entry);
            if (g.s) g.spawn(newActor(`amoCRM late ${label}`), 'apply', entry.apply, late);
            throw retryable('timeout', 'amoCRM не ответил (explorer: taken, applied late)');
          }
          case 'lost_answer':
            await deliver(req, bearer);
            return answer(502, null);
          case 'slow': {
            const res = await deliver(req, bearer);
            await amo.passTime(SLOW_MS, `amoCRM answers after ${SLOW_MS / 1000} s`);
            return res;
          }
          default:
            return deliver(req, bearer);
        }
      });
    },
  };
}
