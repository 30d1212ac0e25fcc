// The console's actions (POST): replay (a dry run first, then the same events after a
// confirmation) and resuming parked events. Each is logged in one runbook-style line.
// What each shows is views/actions.ts (same name, one thing: the action and its page).
import { resumeParked } from '../../db/outbox.ts';
import type { Fields } from '../../log.ts';
import type { Runtime } from '../../runtime.ts';
import { replayRequestSchema, runReplay, type ReplayResult } from '../../sync/replay.ts';
import { parseJson, PayloadError, readBody } from '../body.ts';
import { basicCredentials } from '../operator-auth.ts';
import { ConsoleInputError, toIso } from './query.ts';
import type { RenderContext, Rendered } from './render.ts';
import { crossOriginRefusal } from './security.ts';
import { dryRunView, problemView, replayResultView, resumeResultView } from './views/actions.ts';

/** The Basic auth user name the operator typed (any name is accepted), for the log line. */
export function operatorName(req: Request): string | undefined {
  const credentials = basicCredentials(req.headers);
  if (!credentials) return /^Bearer\s/i.test(req.headers.get('authorization') ?? '') ? 'bearer' : undefined;
  return credentials.user.replace(/[^\p{L}\p{N}._@-]/gu, '').slice(0, 40) || 'basic';
}

/** A form's fields as replay takes them; a browser's first POST is always a dry run. */
function replayBodyFromForm(form: URLSearchParams): Record<string, unknown> {
  const body: Record<string, unknown> = {};
  const ids = form.getAll('ids').flatMap((v) => v.split(/[\s,]+/)).filter(Boolean);
  if (ids.length) {
    body.ids = ids.map((id) => {
      if (!/^\d{1,16}$/.test(id)) throw new ConsoleInputError('ids', `«${id.slice(0, 20)}» — не номер события`);
      return Number(id);
    });
  }
  const text = (k: string) => form.get(k)?.trim() || undefined;
  if (text('status')) body.status = text('status');
  if (text('from')) body.from = toIso('from', text('from')!);
  if (text('to')) body.to = toIso('to', text('to')!);
  for (const k of ['limit', 'afterId']) {
    const v = text(k);
    if (v !== undefined) {
      if (!/^\d{1,16}$/.test(v)) throw new ConsoleInputError(k, 'целое число');
      body[k] = Number(v);
    }
  }
  if (['1', 'on', 'true'].includes(text('force') ?? '')) body.force = true;
  body.dryRun = text('step') !== 'confirm';
  return body;
}

async function readReplayBody(req: Request): Promise<Record<string, unknown>> {
  const text = await readBody(req, 64 * 1024);
  const type = req.headers.get('content-type') ?? '';
  if (type.includes('application/json')) {
    const value = parseJson(text);
    if (!value || typeof value !== 'object' || Array.isArray(value)) throw new PayloadError('body: expected a JSON object, e.g. {"ids":[123]} (dryRun is true unless you send "dryRun": false)');
    // Scripts get the same order as the page: a dry run unless they say otherwise.
    return { dryRun: true, ...(value as Record<string, unknown>) };
  }
  if (!text.trim()) throw new ConsoleInputError('ids', 'выберите события (ids) или статус (status)');
  return replayBodyFromForm(new URLSearchParams(text));
}

function outcomes(result: ReplayResult): Fields {
  const counted = new Map<string, number>();
  for (const r of result.results) counted.set(r.outcome, (counted.get(r.outcome) ?? 0) + 1);
  return { outcomes: [...counted].map(([k, n]) => `${k}:${n}`).join(',') || 'none' };
}

const refused = (reason: string): Rendered => ({
  status: 403, title: 'Действие отклонено', view: 'action',
  body: problemView('Действие отклонено', `${reason}. Откройте консоль и повторите действие с её страницы.`),
  data: { error: `refused: ${reason}` },
});

/** Same-origin check first; every refusal is logged. */
export function guard(rt: Runtime, ctx: RenderContext, action: string): Rendered | null {
  const reason = crossOriginRefusal(ctx.req, rt.config.replayToken);
  if (!reason) return null;
  rt.log.warn('Консоль: действие отклонено', { action, reason, user: operatorName(ctx.req) });
  return refused(reason);
}

export async function replayAction(rt: Runtime, ctx: RenderContext): Promise<Rendered> {
  const denied = guard(rt, ctx, 'replay');
  if (denied) return denied;
  const parsed = replayRequestSchema.safeParse(await readReplayBody(ctx.req));
  if (!parsed.success) {
    const issue = parsed.error.issues[0]!;
    throw new ConsoleInputError(issue.path.join('.') || 'body', issue.message);
  }
  const req = parsed.data;
  const result = await runReplay(rt, req);
  const ids = result.results.map((r) => r.id).slice(0, 20).join(',');
  const user = operatorName(ctx.req);
  if (req.dryRun) {
    const would = result.results.filter((r) => r.outcome === 'would_replay').length;
    rt.log.info('Консоль: пробный повтор', { selected: result.selected, would_replay: would, status: req.status, ids, user });
    return { title: 'Пробный повтор', view: 'action', body: dryRunView(rt.config, req, result), data: { ...result } };
  }
  const failed = result.results.some((r) => ['failed', 'dead', 'parked'].includes(r.outcome));
  const fields = { selected: result.selected, replayed: result.replayed, ...outcomes(result), ids, user };
  if (failed) rt.log.warn('Консоль: события повторены, не все успешно', fields);
  else rt.log.ok('Консоль: события повторены', fields);
  return { title: 'Повтор выполнен', view: 'action', body: replayResultView(rt.config, result), data: { ...result } };
}

export async function resumeAction(rt: Runtime, ctx: RenderContext): Promise<Rendered> {
  const denied = guard(rt, ctx, 'resume');
  if (denied) return denied;
  const resumed = await resumeParked(rt.db);
  rt.log.ok('Консоль: события, ждущие оператора, возвращены в очередь', { resumed, user: operatorName(ctx.req) });
  return { title: 'Возврат в очередь', view: 'action', body: resumeResultView(resumed), data: { resumed } };
}
