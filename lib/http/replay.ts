// POST /api/amocrm/replay — operators run failed/dead/parked/skipped events again.
import type { Runtime } from '../runtime.ts';
import { replayRequestSchema, runReplay } from '../sync/replay.ts';
import { parseJson, PayloadError, readBody } from '../webhook/payload.ts';
import { operatorAuthFailure } from './operator-auth.ts';
import { errorResponse, failureResponse, json } from './respond.ts';

export async function handleReplay(req: Request, runtime: () => Promise<Runtime>): Promise<Response> {
  try {
    if (req.method !== 'POST') return errorResponse(405, 'use POST with a JSON body, e.g. {"status":"failed","dryRun":true}', { allow: 'POST' });
    const rt = await runtime();
    const denied = operatorAuthFailure(req, rt.config.replayToken);
    if (denied) return denied;
    const parsed = replayRequestSchema.safeParse(parseJson(await readBody(req, 64 * 1024)));
    if (!parsed.success) {
      const issue = parsed.error.issues[0]!;
      if (!issue.path.length && issue.code === 'invalid_type') throw new PayloadError('body: expected a JSON object, e.g. {"status":"failed","dryRun":true} or {"ids":[123]}');
      throw new PayloadError(`${issue.path.join('.') || 'body'}: ${issue.message}`);
    }
    const result = await runReplay(rt, parsed.data);
    return json(200, { ok: true, ...result, ...(result.next ? { continue_with: { ...stripDefaults(parsed.data), afterId: result.next.afterId } } : {}) });
  } catch (err) {
    return failureResponse(err);
  }
}

function stripDefaults(body: Record<string, unknown>) {
  return Object.fromEntries(Object.entries(body).filter(([, v]) => v !== undefined));
}
