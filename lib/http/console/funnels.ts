// The funnels page (GET /funnels) and its actions (POST /funnels: check, or check and save;
// POST /funnels/rollback). The actions take the same same-origin check as replay and go
// through lib/funnels/edit.ts like the CLI: a change with a problem is refused with every
// problem shown and the operator's text kept in the box, a change made from an older
// version than the one in force is refused, and each outcome is one log line.
import { envFunnelOf } from '../../config.ts';
import { funnelHistory } from '../../db/funnels.ts';
import type { FunnelProblem } from '../../funnels/check.ts';
import { applyFunnels, loadFunnels, readFacts, reviewFunnels, rollbackTo, type EditDeps, type EditOutcome, type FunnelFacts } from '../../funnels/edit.ts';
import { parseFunnelsText, parseFunnelsValue } from '../../funnels/input.ts';
import type { Funnel, FunnelConfig } from '../../funnels/model.ts';
import type { Runtime } from '../../runtime.ts';
import { parseJson, PayloadError, readBody } from '../body.ts';
import { guard, operatorName } from './actions.ts';
import { html } from './html.ts';
import { ConsoleInputError } from './query.ts';
import type { RenderContext, Rendered } from './render.ts';
import { configText, funnelsView, type EditBox } from './views/funnels.ts';

const editDeps = (rt: Runtime): EditDeps => {
  const amo = rt.invocation(10_000).amo;
  return { db: rt.db, listPipelines: () => amo.listPipelines() };
};

/** The configuration in force (today's variables become version 1 the first time, as in the sync). */
export const funnelsInForce = (rt: Runtime) => loadFunnels(rt.db, envFunnelOf(rt.config));

/** Names for a view: amoCRM not answering leaves ids only, never a broken page. */
export async function displayFacts(rt: Runtime, funnels: readonly Funnel[]): Promise<FunnelFacts & { amoError?: string }> {
  try {
    return await readFacts(editDeps(rt), funnels);
  } catch (err) {
    const facts = await readFacts({ db: rt.db, listPipelines: async () => [] }, funnels);
    return { ...facts, amoError: (err as Error).message.slice(0, 200) };
  }
}

interface PageState { box?: EditBox; problems?: readonly (FunnelProblem | string)[]; message?: ReturnType<typeof html>; status?: number; data?: Record<string, unknown> }

async function renderFunnels(rt: Runtime, state: PageState = {}): Promise<Rendered> {
  const config = await funnelsInForce(rt);
  const [facts, versions] = await Promise.all([displayFacts(rt, config?.funnels ?? []), funnelHistory(rt.db, 20)]);
  const box = state.box ?? { text: configText(config?.funnels ?? []), version: config?.version ?? 0 };
  const unreachable = facts.amoError ? html`<p class="note warn">amoCRM не ответил (${facts.amoError}): этапы показаны без названий.</p>` : '';
  return {
    status: state.status, title: 'Настройка воронок', view: 'funnels',
    body: funnelsView({ config, facts, box, problems: state.problems, message: html`${unreachable}${state.message ?? ''}`, versions }),
    data: { ...(state.data ?? {}), config, versions: versions.map(({ funnels, ...v }) => ({ ...v, keys: funnels.map((f) => f.key) })) },
  };
}

export const funnelsPage = (rt: Runtime): Promise<Rendered> => renderFunnels(rt);

interface EditRequest { text?: string; value?: unknown; version: number; note?: string; save: boolean }

/** A form (the page) or JSON (a script: {"funnels": [...], "expectedVersion": n, "save": true}). */
async function readEditRequest(req: Request): Promise<EditRequest> {
  const text = await readBody(req, 256 * 1024);
  const version = (v: unknown) => {
    if (!/^\d{1,9}$/.test(String(v ?? ''))) throw new ConsoleInputError('version', 'номер версии, с которой начата правка (целое число)');
    return Number(v);
  };
  if ((req.headers.get('content-type') ?? '').includes('application/json')) {
    const body = parseJson(text);
    if (!body || typeof body !== 'object' || Array.isArray(body)) throw new PayloadError('body: expected {"funnels": [...], "expectedVersion": 3, "note": "…", "save": true}');
    const { funnels, expectedVersion, note, save } = body as Record<string, unknown>;
    return { value: { funnels, ...(typeof note === 'string' ? { note } : {}) }, version: version(expectedVersion), save: save === true };
  }
  const form = new URLSearchParams(text);
  const note = form.get('note')?.trim() || undefined;
  return { text: form.get('funnels') ?? '', version: version(form.get('version')), ...(note ? { note } : {}), save: form.get('step') === 'save' };
}

export async function funnelsAction(rt: Runtime, ctx: RenderContext): Promise<Rendered> {
  const denied = guard(rt, ctx, 'funnels');
  if (denied) return denied;
  const edit = await readEditRequest(ctx.req);
  const user = operatorName(ctx.req);
  const box: EditBox = { text: edit.text ?? JSON.stringify(edit.value, null, 2), version: edit.version, note: edit.note };
  const input = edit.text !== undefined ? parseFunnelsText(edit.text) : parseFunnelsValue(edit.value);
  if ('problems' in input) {
    rt.log.warn('Консоль: воронки не сохранены, файл не разобран', { problems: input.problems.length, user });
    return renderFunnels(rt, { box, problems: input.problems, status: 422, data: { saved: false, problems: input.problems } });
  }
  const note = edit.note ?? input.note;
  if (!edit.save) {
    const problems = await reviewFunnels(editDeps(rt), input.funnels);
    const message = problems.length ? undefined : html`<p class="note" data-outcome="checked">Проверка пройдена: воронки можно сохранить. Ничего не сохранено.</p>`;
    return renderFunnels(rt, { box, problems, message, status: problems.length ? 422 : 200, data: { saved: false, checked: true, problems } });
  }
  const outcome = await applyFunnels(editDeps(rt), { funnels: input.funnels, changedBy: `консоль: ${user ?? 'оператор'}`, expectedVersion: edit.version, ...(note ? { note } : {}) });
  logOutcome(rt, 'сохранены', outcome, { user, from_version: edit.version });
  return renderOutcome(rt, outcome, box);
}

export async function rollbackFunnelsAction(rt: Runtime, ctx: RenderContext): Promise<Rendered> {
  const denied = guard(rt, ctx, 'funnels-rollback');
  if (denied) return denied;
  const text = await readBody(ctx.req, 4 * 1024);
  const json = (ctx.req.headers.get('content-type') ?? '').includes('application/json');
  const raw = json ? (parseJson(text) as { version?: unknown } | null)?.version : new URLSearchParams(text).get('version');
  if (!/^[1-9]\d{0,8}$/.test(String(raw ?? ''))) throw new ConsoleInputError('version', 'номер версии из истории');
  const version = Number(raw);
  const user = operatorName(ctx.req);
  const outcome = await rollbackTo(editDeps(rt), version, `консоль: ${user ?? 'оператор'}`);
  logOutcome(rt, `возвращены к версии ${version}`, outcome, { user });
  return renderOutcome(rt, outcome);
}

function logOutcome(rt: Runtime, what: string, outcome: EditOutcome, fields: Record<string, string | number | undefined>): void {
  if (outcome.kind === 'saved') rt.log.ok(`Консоль: воронки ${what}`, { version: outcome.version, funnels: outcome.funnels.map((f) => f.key).join(','), ...fields });
  else if (outcome.kind === 'refused') rt.log.warn(`Консоль: воронки не ${what}: проверки не пройдены`, { problems: outcome.problems.length, ...fields });
  else rt.log.warn(`Консоль: воронки не ${what}`, { reason: outcome.kind, ...fields });
}

function renderOutcome(rt: Runtime, outcome: EditOutcome, box?: EditBox): Promise<Rendered> {
  switch (outcome.kind) {
    case 'saved':
      return renderFunnels(rt, {
        message: html`<p class="note" data-outcome="saved" data-version="${outcome.version}">Сохранена версия ${outcome.version}: ${outcome.funnels.map((f) => f.key).join(', ')}. Новые уроки записываются с ближайшего прохождения.</p>`,
        data: { saved: true, version: outcome.version },
      });
    case 'refused':
      return renderFunnels(rt, { box, problems: outcome.problems, status: 422, data: { saved: false, problems: outcome.problems } });
    case 'invalid':
      return renderFunnels(rt, { box, problems: [outcome.problem], status: 422, data: { saved: false, problems: [outcome.problem] } });
    case 'stale': {
      const current = outcome.current as FunnelConfig | null;
      const who = current ? `версию ${current.version} сохранил(а) ${current.changedBy}` : 'воронки изменены';
      return renderFunnels(rt, {
        box,
        message: html`<p class="note error" role="alert" data-outcome="stale">Не сохранено: пока вы правили версию ${outcome.expectedVersion}, ${who}. Посмотрите действующие воронки ниже и перенесите свою правку на них (ваш текст остался в поле).</p>`,
        status: 409, data: { saved: false, reason: 'stale', current_version: current?.version ?? null },
      });
    }
    case 'unknown_version':
      return renderFunnels(rt, {
        message: html`<p class="note error" role="alert" data-outcome="unknown">Версии ${outcome.version} нет в истории: ничего не изменено.</p>`,
        status: 404, data: { saved: false, reason: 'unknown_version' },
      });
  }
}
