// Where the explorer takes control. Every database call, every amoCRM request and every
// long sleep of an actor is a step: it waits until fast-check's scheduler releases it, then
// runs to completion while nothing else runs (`quiesce`). So the only source of order is
// the scheduler's choice, and a seed and a path replay a schedule exactly.
import type { Scheduler } from 'fast-check';

export interface Actor {
  name: string;
  /** Steps released so far. */
  steps: number;
  /** Killed (a function instance stopped by the platform) when its step number `killAt` is released. */
  killAt?: number;
  killed: boolean;
}

export const newActor = (name: string, killAt?: number): Actor => ({ name, steps: 0, killAt, killed: false });

const tick = () => new Promise<void>((resolve) => setImmediate(resolve));

export class Gates {
  /** The schedule's scheduler; undefined while the explorer runs things itself (set-up, quiet). */
  s: Scheduler | undefined;
  /** What happened, in order: the schedule as released. */
  trace: string[] = [];
  private inflight = new Set<Promise<unknown>>();

  /** Real work a step started (I/O, a short real sleep): quiesce waits for it. */
  track<T>(p: Promise<T>): Promise<T> {
    this.inflight.add(p);
    const done = () => this.inflight.delete(p);
    p.then(done, done);
    return p;
  }

  /** Until every started piece of work has ended and every continuation waits at a gate. */
  async quiesce(): Promise<void> {
    for (let calm = 0; calm < 2; ) {
      await tick();
      if (this.inflight.size) {
        calm = 0;
        await Promise.allSettled([...this.inflight]);
      } else calm++;
    }
  }

  /** fast-check's act: release one task, then let it run to its next gate. */
  act = async (release: () => Promise<void>): Promise<void> => {
    await release();
    await this.quiesce();
  };

  /** A step of `actor`: waits for the scheduler, then runs `io` (a killed actor never returns). */
  async step<T>(actor: Actor | undefined, label: string, io: () => Promise<T>): Promise<T> {
    if (this.s && actor) {
      await this.s.schedule(Promise.resolve(), `${actor.name}: ${label}`);
      actor.steps++;
      if (actor.killed) return new Promise<T>(() => undefined);
      if (actor.killAt !== undefined && actor.steps >= actor.killAt) {
        actor.killed = true;
        this.trace.push(`✖ ${actor.name} killed before: ${label}`);
        return new Promise<T>(() => undefined);
      }
    }
    if (actor) this.trace.push(`${actor.name}: ${label}`);
    return this.track(io());
  }

  /** Starts `task` as its own step of `actor` (an actor's first move, or a fault at a time the scheduler picks). */
  spawn(actor: Actor, label: string, task: () => Promise<unknown>, results: Promise<unknown>[]): void {
    results.push(this.step(actor, label, async () => undefined).then(task).catch((err) => {
      this.trace.push(`! ${actor.name}: ${String((err as Error)?.message ?? err).slice(0, 160)}`);
    }));
  }
}
