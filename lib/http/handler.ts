// The steps every HTTP entry point shares, written once: the method check, the runtime
// (built lazily), the caller check, operator authentication, and the mapping of any
// failure to a clear status and message.
//
// Who is calling is checked before anything says what the deploy lacks. When the
// environment is incomplete, the endpoint runs on callerRuntime(): only its own secret is
// read, so a caller that fails its check gets exactly the answer a configured deploy gives
// (401, 404); one that passes gets the 503 that names the missing variables; where the
// endpoint's own secret is missing or malformed, every caller gets a bare 503. The log
// always gets the whole list, in one ❌ line.
import { ConfigError } from '../config.ts';
import { createLogger, type Logger } from '../log.ts';
import { CallerCheckUnavailable, callerRuntime, type Runtime } from '../runtime.ts';
import { operatorAuthFailure } from './operator-auth.ts';
import { errorResponse, failureResponse } from './respond.ts';

export type RuntimeSource = () => Promise<Runtime>;

/** What a function gets from Netlify besides the request (the parts used here). */
export interface FunctionContext {
  /** Keeps the invocation alive for work done after the response. */
  waitUntil?(promise: Promise<unknown>): void;
  params?: Record<string, string>;
}

export interface EndpointSpec {
  /** Allowed methods; anything else is a 405 with `usage`. */
  methods: readonly string[];
  /** What a caller should send instead, for the 405. */
  usage: string;
  /** Operator endpoints take AMOCRM_REPLAY_TOKEN (Bearer, or Basic when a browser asks). */
  operator?: boolean;
  /**
   * Checks its caller (signature, path secret) before it touches anything but that secret,
   * the clock and the log: with an incomplete environment the rest throws the ConfigError.
   */
  handle(req: Request, rt: Runtime, context: FunctionContext): Promise<Response>;
}

/** The answer where the caller cannot be checked: nothing about what is missing. */
const notConfigured = () => errorResponse(503, 'the function is not configured: its log says what to set');

export function endpoint(spec: EndpointSpec): (req: Request, runtime: RuntimeSource, context?: FunctionContext) => Promise<Response> {
  return async (req, runtime, context = {}) => {
    let log: Logger | undefined;
    /** The environment's problems, logged once per request whoever is calling. */
    let problem: ConfigError | undefined;
    let unchecked: string | undefined;
    try {
      if (!spec.methods.includes(req.method)) {
        const res = errorResponse(405, spec.usage, { allow: spec.methods.join(', ') });
        res.headers.set('allow', spec.methods.join(', '));
        return res;
      }
      const rt = await runtime().catch((err: unknown) => {
        if (!(err instanceof ConfigError)) throw err;
        problem = err;
        return callerRuntime(err);
      });
      log = rt.log;
      if (spec.operator) {
        const token = rt.config.replayToken;
        if (!token) {
          rt.log.fail('Операторский доступ выключен: AMOCRM_REPLAY_TOKEN не задан', {
            what_to_do: 'сгенерируйте токен (openssl rand -hex 32) и задайте AMOCRM_REPLAY_TOKEN в Netlify → Site configuration → Environment variables (Functions scope)',
          });
          return notConfigured();
        }
        const denied = operatorAuthFailure(req, token, wantsHtml(req));
        if (denied) return denied;
      }
      return await spec.handle(req, rt, context);
    } catch (err) {
      if (err instanceof CallerCheckUnavailable) {
        unchecked = err.variable;
        return notConfigured();
      }
      // A ConfigError is reached only past the caller check: the caller may see the names.
      if (err instanceof ConfigError) problem ??= err;
      return failureResponse(err);
    } finally {
      if (problem) logMisconfigured(log, problem, unchecked);
    }
  };
}

/** One ❌ line with every problem (names and rules, never a value). */
function logMisconfigured(log: Logger | undefined, problem: ConfigError, unchecked?: string) {
  const problems = [...problem.problems];
  if (unchecked && !problems.some((p) => p.variable === unchecked)) problems.push({ variable: unchecked, message: 'is not set: the endpoint cannot check its callers' });
  (log ?? createLogger()).fail('Функция не настроена: переменные окружения не заданы или неверны', {
    variables: problems.map((p) => p.variable).join(','),
    problems: problems.map((p) => `${p.variable}: ${p.message}`).join('; '),
    what_to_do: 'задайте их в Netlify → Site configuration → Environment variables (Functions scope) и опубликуйте сайт заново',
  });
}

export const wantsHtml = (req: Request) => (req.headers.get('accept') ?? '').includes('text/html');
