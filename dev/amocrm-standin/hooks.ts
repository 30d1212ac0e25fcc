// amoCRM's account webhooks: the subscriptions (at most 100 per account, one per destination)
// and their delivery, with the rules amoCRM's webhooks page gives:
//   - an answer must come within 2 s; 100–299 is success, anything else (or none) is invalid;
//   - an invalid delivery is tried again after 5 and 15 minutes, after 15 minutes and 1 hour
//     for 499 and 5xx (a timeout is recorded as 499: amoCRM is the client that closed);
//   - more than 100 invalid answers within 2 hours disable the hook until an admin re-enables it.
// Changes made in one tick (one batch PATCH, one manager call) go out as one delivery per hook
// and action, leads indexed 0…n-1. Retries wait on the stand-in's clock: a real timer wakes
// the queue, and hooksSettled() runs whatever is due after a test moved its clock.
// Deliveries are sent with fetch; a fresh X-Amocrm-Requestid per attempt (whether amoCRM keeps
// it across retries is undocumented, so receivers must not rely on it).
import { randomUUID } from 'node:crypto';

import { hookBody, snapshot, type LeadSnapshot } from './hookform.ts';
import { API_USER_ID, type LeadChange } from './state.ts';
import type { HookAction, HookAttempt, HookForm, StandinWebhook } from './types.ts';

export const MAX_HOOKS = 100;
export const USER_AGENT = 'amoCRM-Webhooks/3.0';
const MINUTE = 60_000;
const DISABLE_WINDOW_MS = 2 * 60 * MINUTE;
const ACTIONS: HookAction[] = ['add', 'update', 'status', 'delete'];

/** Subscription names amoCRM accepts (leads, contacts, companies, tasks); only lead ones are delivered here. */
export const KNOWN_SETTINGS = new Set(
  ['lead', 'contact', 'company'].flatMap((e) => ['add', 'update', 'delete', 'restore', 'responsible', 'note'].map((a) => `${a}_${e}`))
    .concat(['status_lead', 'add_task', 'update_task', 'delete_task', 'responsible_task']),
);

export interface HookOptions {
  now: () => number;
  timeoutMs: number;
  retryDelaysMs: { invalid: number[]; server: number[] };
  disableAfter: number;
  form: HookForm;
}

interface Hook extends StandinWebhook { failures: number[] }
interface Delivery { id: number; hook: Hook; action: HookAction; leads: LeadSnapshot[]; body: string; attempt: number; dueAt: number }

/** A subscription request that amoCRM would refuse: what to tell the caller. */
export class HookInputError extends Error {
  constructor(readonly path: string, readonly code: string, detail: string) {
    super(detail);
  }
}

const isSuccess = (status: number) => status >= 100 && status <= 299;
const isServerSide = (status: number) => status === 499 || status >= 500;

export function validDestination(destination: unknown): destination is string {
  if (typeof destination !== 'string' || destination.length === 0 || destination.length > 2048) return false;
  try {
    const u = new URL(destination);
    return (u.protocol === 'https:' || u.protocol === 'http:') && u.hostname !== '';
  } catch {
    return false;
  }
}

export function createHooks(opts: HookOptions) {
  const { now } = opts;
  const hooks = new Map<string, Hook>(); // by destination
  const attempts: HookAttempt[] = [];
  const due: Delivery[] = [];
  const inFlight = new Map<Promise<void>, AbortController>();
  const timers = new Set<NodeJS.Timeout>();
  let nextHookId = 1;
  let nextDeliveryId = 1;
  let off = false;
  let form = opts.form;
  let drops: { action?: HookAction }[] = [];
  let pending: { action: HookAction; lead: LeadSnapshot }[] = [];
  let closed = false;

  const copy = (h: Hook): StandinWebhook => ({
    id: h.id, destination: h.destination, settings: [...h.settings], sort: h.sort, disabled: h.disabled,
    createdBy: h.createdBy, createdAt: h.createdAt, updatedAt: h.updatedAt,
  });

  function record(d: Delivery, fields: Pick<HookAttempt, 'status' | 'ok'> & Partial<HookAttempt>): HookAttempt {
    const a: HookAttempt = {
      deliveryId: d.id, attempt: d.attempt, hookId: d.hook.id, destination: d.hook.destination, action: d.action,
      leadIds: d.leads.map((l) => l.id), requestId: randomUUID(), at: now(), body: d.body, ...fields,
    };
    attempts.push(a);
    return a;
  }

  function failed(d: Delivery, status: number) {
    const h = d.hook;
    const t = now();
    h.failures = h.failures.filter((at) => at > t - DISABLE_WINDOW_MS);
    h.failures.push(t);
    if (h.failures.length > opts.disableAfter) {
      h.disabled = true;
      for (let i = due.length - 1; i >= 0; i--) if (due[i]!.hook === h) due.splice(i, 1);
      return;
    }
    const delays = isServerSide(status) ? opts.retryDelaysMs.server : opts.retryDelaysMs.invalid;
    const delay = delays[d.attempt - 1];
    if (delay === undefined) return; // the last attempt: amoCRM gives up on this one
    schedule({ ...d, attempt: d.attempt + 1, dueAt: t + delay });
  }

  function schedule(d: Delivery) {
    due.push(d);
    // Wakes the queue when the time comes on a real clock; with a clock moved by hand,
    // hooksSettled() runs what is due.
    const timer = setTimeout(() => {
      timers.delete(timer);
      runDue();
    }, Math.max(0, d.dueAt - now()));
    timer.unref();
    timers.add(timer);
  }

  function send(d: Delivery) {
    if (closed || d.hook.disabled || !hooks.has(d.hook.destination) || hooks.get(d.hook.destination) !== d.hook) return;
    const requestId = randomUUID();
    const controller = new AbortController();
    const timer = setTimeout(() => controller.abort(), opts.timeoutMs);
    const at = now();
    const task = (async () => {
      let status = 0;
      let error: HookAttempt['error'];
      try {
        const res = await fetch(d.hook.destination, {
          method: 'POST',
          redirect: 'manual',
          signal: controller.signal,
          headers: {
            'content-type': 'application/x-www-form-urlencoded',
            'user-agent': USER_AGENT,
            'x-amocrm-requestid': requestId,
          },
          body: d.body,
        });
        status = res.status;
        await res.body?.cancel().catch(() => undefined);
      } catch {
        if (controller.signal.aborted) {
          status = 499;
          error = 'timeout';
        } else error = 'network';
      } finally {
        clearTimeout(timer);
      }
      if (closed) return;
      const ok = isSuccess(status);
      record(d, { status, ok, requestId, at, ...(error ? { error } : {}) });
      if (!ok) failed(d, status);
    })();
    inFlight.set(task, controller);
    void task.finally(() => inFlight.delete(task));
  }

  function runDue() {
    if (closed) return;
    const t = now();
    for (let i = 0; i < due.length; ) {
      const d = due[i]!;
      if (d.dueAt <= t) {
        due.splice(i, 1);
        send(d);
      } else i++;
    }
  }

  /** Whether this delivery goes missing (hooksOff, dropNextHooks); uses up a drop. */
  function dropped(action: HookAction): boolean {
    if (off) return true;
    const i = drops.findIndex((d) => d.action === undefined || d.action === action);
    if (i < 0) return false;
    drops.splice(i, 1);
    return true;
  }

  /** Sends what the changes of this tick add up to: per hook and action, one delivery. */
  function flush() {
    const batch = pending;
    pending = [];
    if (batch.length === 0 || closed) return;
    for (const hook of [...hooks.values()].sort((a, b) => a.sort - b.sort || a.id - b.id)) {
      if (hook.disabled) continue;
      for (const action of ACTIONS) {
        if (!hook.settings.includes(`${action}_lead`)) continue;
        const leads = batch.filter((p) => p.action === action).map((p) => p.lead);
        if (leads.length === 0) continue;
        const d: Delivery = { id: nextDeliveryId++, hook, action, leads, body: hookBody(action, leads, form), attempt: 1, dueAt: now() };
        if (dropped(action)) record(d, { status: 0, ok: false, dropped: true });
        else send(d);
      }
    }
  }

  return {
    attempts,

    /** Listener for state.onLeadChange: what amoCRM would report about this change. */
    onLeadChange(change: LeadChange) {
      if (hooks.size === 0) return;
      const s = snapshot(change);
      const actions: HookAction[] =
        change.kind === 'add' ? ['add'] :
        change.kind === 'delete' ? ['delete'] :
        s.statusId !== s.oldStatusId || s.pipelineId !== s.oldPipelineId ? ['update', 'status'] : ['update'];
      if (pending.length === 0) queueMicrotask(flush);
      for (const action of actions) pending.push({ action, lead: s });
    },

    list(destination?: string): StandinWebhook[] {
      return [...hooks.values()]
        .filter((h) => destination === undefined || h.destination === destination)
        .sort((a, b) => a.sort - b.sort || a.id - b.id)
        .map(copy);
    },

    /** Creates the hook, or updates the settings (and sort) of the destination's hook. */
    subscribe(destination: unknown, settings: unknown, sort?: unknown): StandinWebhook {
      if (!validDestination(destination)) throw new HookInputError('destination', 'InvalidUrl', 'destination must be a valid http(s) URL');
      if (!Array.isArray(settings) || settings.length === 0) throw new HookInputError('settings', 'NotBlank', 'settings must be a non-empty array of event names');
      settings.forEach((s, i) => {
        if (typeof s !== 'string' || !KNOWN_SETTINGS.has(s)) throw new HookInputError(`settings.${i}`, 'NotSupportedChoice', "The value you've selected is not supported");
      });
      if (sort !== undefined && !(typeof sort === 'number' && Number.isSafeInteger(sort))) throw new HookInputError('sort', 'InvalidType', 'sort must be an integer');
      const t = Math.floor(now() / 1000);
      const existing = hooks.get(destination);
      const unique = [...new Set(settings as string[])];
      if (existing) {
        existing.settings = unique;
        if (sort !== undefined) existing.sort = sort as number;
        existing.updatedAt = t;
        return copy(existing);
      }
      if (hooks.size >= MAX_HOOKS) throw new HookInputError('destination', 'LimitExceeded', `An account can have at most ${MAX_HOOKS} webhooks`);
      const hook: Hook = {
        id: nextHookId++, destination, settings: unique, sort: (sort as number | undefined) ?? 1, disabled: false,
        createdBy: API_USER_ID, createdAt: t, updatedAt: t, failures: [],
      };
      hooks.set(destination, hook);
      return copy(hook);
    },

    unsubscribe(destination: string): boolean {
      const hook = hooks.get(destination);
      if (!hook) return false;
      hooks.delete(destination);
      for (let i = due.length - 1; i >= 0; i--) if (due[i]!.hook === hook) due.splice(i, 1);
      return true;
    },

    enable(destination: string) {
      const hook = hooks.get(destination);
      if (!hook) throw new Error(`stand-in: no webhook for ${destination}`);
      hook.disabled = false;
      hook.failures = [];
      hook.updatedAt = Math.floor(now() / 1000);
    },

    setOff(value: boolean) {
      off = value;
    },

    dropNext(n: number, action?: HookAction) {
      for (let i = 0; i < n; i++) drops.push(action === undefined ? {} : { action });
    },

    setForm(f: HookForm) {
      form = f;
    },

    /** Runs what is due, then waits until nothing is in flight or due. */
    async settled() {
      for (;;) {
        flush();
        runDue();
        if (inFlight.size === 0) {
          const t = now();
          if (!due.some((d) => d.dueAt <= t) && pending.length === 0) return;
          continue;
        }
        await Promise.allSettled([...inFlight.keys()]);
      }
    },

    close() {
      closed = true;
      for (const t of timers) clearTimeout(t);
      timers.clear();
      for (const c of inFlight.values()) c.abort();
      due.length = 0;
      pending = [];
      drops = [];
    },
  };
}

export type StandinHooks = ReturnType<typeof createHooks>;
