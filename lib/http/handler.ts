// The steps every HTTP entry point shares, written once: the method check, the runtime
// (built lazily, so a broken environment is a 503 that names the variables), operator
// authentication, and the mapping of any failure to a clear status and message.
import type { Runtime } from '../runtime.ts';
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
  handle(req: Request, rt: Runtime, context: FunctionContext): Promise<Response>;
}

export function endpoint(spec: EndpointSpec): (req: Request, runtime: RuntimeSource, context?: FunctionContext) => Promise<Response> {
  return async (req, runtime, context = {}) => {
    try {
      if (!spec.methods.includes(req.method)) {
        const res = errorResponse(405, spec.usage, { allow: spec.methods.join(', ') });
        res.headers.set('allow', spec.methods.join(', '));
        return res;
      }
      const rt = await runtime();
      if (spec.operator) {
        const denied = operatorAuthFailure(req, rt.config.replayToken, wantsHtml(req));
        if (denied) return denied;
      }
      return await spec.handle(req, rt, context);
    } catch (err) {
      return failureResponse(err);
    }
  };
}

export const wantsHtml = (req: Request) => (req.headers.get('accept') ?? '').includes('text/html');
