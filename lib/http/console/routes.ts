// GET/POST /api/amocrm/console[/…] — the operator console. Built on endpoint(): the
// runtime, operator authentication (Basic in a browser, Bearer for scripts; a browser
// without credentials gets the 401 challenge) and the error mapping. Here: which view
// or action a path names, its method, and the page or JSON twin it answers.
import { PayloadError } from '../body.ts';
import { endpoint, type FunctionContext, type RuntimeSource } from '../handler.ts';
import { replayAction, resumeAction } from './actions.ts';
import { funnelsAction, funnelsPage, rollbackFunnelsAction } from './funnels.ts';
import { html } from './html.ts';
import { eventPage, eventsPage, funnelPage, healthPage, notFound, studentPage } from './pages.ts';
import { BASE, ConsoleInputError, href, parseRefresh } from './query.ts';
import { respond, wantsJson, type RenderContext, type Rendered } from './render.ts';
import { COMMON_HEADERS } from './security.ts';
import { problemView } from './views/actions.ts';
import type { Runtime } from '../../runtime.ts';

type Route = { methods: readonly string[]; run: (rt: Runtime, ctx: RenderContext) => Promise<Rendered | null> };

const VIEW = ['GET', 'HEAD'] as const;
const ACTION = ['POST'] as const;

function routeOf(path: string): Route | null {
  if (path === '' || path === '/funnel') return { methods: VIEW, run: funnelPage };
  if (path === '/funnels') return { methods: [...VIEW, ...ACTION], run: (rt, ctx) => (ctx.req.method === 'POST' ? funnelsAction(rt, ctx) : funnelsPage(rt)) };
  if (path === '/funnels/rollback') return { methods: ACTION, run: rollbackFunnelsAction };
  if (path === '/health') return { methods: VIEW, run: healthPage };
  if (path === '/events') return { methods: VIEW, run: eventsPage };
  const event = /^\/events\/([^/]+)$/.exec(path);
  if (event) return { methods: VIEW, run: (rt) => eventPage(rt, event[1]!) };
  if (path === '/student') return { methods: VIEW, run: studentPage };
  if (path === '/replay') return { methods: ACTION, run: replayAction };
  if (path === '/resume') return { methods: ACTION, run: resumeAction };
  return null;
}

const badInput = (err: ConsoleInputError | PayloadError): Rendered => ({
  status: err instanceof PayloadError ? err.status : 400, title: 'Неверный запрос', view: 'action',
  body: problemView('Неверный запрос', err.message),
  data: { error: err.message, ...(err instanceof ConsoleInputError ? { field: err.field } : {}) },
});

const inner = endpoint({
  methods: ['GET', 'HEAD', 'POST'],
  usage: `GET ${BASE} (funnel), /funnels, /health, /events, /events/<id>, /student?q=…; POST ${BASE}/replay, /resume, /funnels or /funnels/rollback. Browsers: HTTP Basic, password AMOCRM_REPLAY_TOKEN; scripts: Authorization: Bearer <AMOCRM_REPLAY_TOKEN>, ?format=json`,
  operator: true,
  async handle(req, rt) {
    const url = new URL(req.url);
    const path = (url.pathname.startsWith(BASE) ? url.pathname.slice(BASE.length) : '').replace(/\/+$/, '');
    const params = url.searchParams;
    let ctx: RenderContext = { req, params, asJson: true, refresh: 60, nowMs: rt.clock.now() };
    try {
      ctx = { ...ctx, asJson: wantsJson(req, params), refresh: parseRefresh(params) };
      const route = routeOf(path);
      if (!route) return respond(ctx, notFound(`нет страницы ${url.pathname}: консоль — ${BASE}`));
      if (!route.methods.includes(req.method)) {
        const res = respond(ctx, {
          status: 405, title: 'Метод не подходит', view: 'action',
          body: html`<h1>Метод не подходит</h1><p class="note warn" data-error>${url.pathname} принимает ${route.methods.join(', ')}. <a href="${href('')}">В консоль</a></p>`,
          data: { error: `${url.pathname} takes ${route.methods.join(', ')}` },
        });
        res.headers.set('allow', route.methods.join(', '));
        return res;
      }
      const rendered = await route.run(rt, ctx);
      return respond(ctx, rendered ?? notFound(`нет события ${path.split('/').pop()}`));
    } catch (err) {
      if (err instanceof ConsoleInputError || err instanceof PayloadError) return respond(ctx, badInput(err));
      throw err;
    }
  },
});

/** Every answer, the 401 challenge and errors included, is never cached and never sniffed. */
export async function handleConsole(req: Request, runtime: RuntimeSource, context?: FunctionContext): Promise<Response> {
  const res = await inner(req, runtime, context);
  for (const [k, v] of Object.entries(COMMON_HEADERS)) if (!res.headers.has(k)) res.headers.set(k, v);
  return res;
}
