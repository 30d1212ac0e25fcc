// POST /api/amocrm/replay — operators run failed/dead/parked/skipped events again. The HTTP
// layer of lib/sync/replay.ts (same name, one thing): the body in, the result out.
import { replayRequestSchema, runReplay } from '../sync/replay.ts';
import { parseJson, PayloadError, readBody } from './body.ts';
import { endpoint } from './handler.ts';
import { json } from './respond.ts';

export const handleReplay = endpoint({
  methods: ['POST'],
  usage: 'use POST with a JSON body, e.g. {"status":"failed","dryRun":true}',
  operator: true,
  async handle(req, rt) {
    const parsed = replayRequestSchema.safeParse(parseJson(await readBody(req, 64 * 1024)));
    if (!parsed.success) {
      const issue = parsed.error.issues[0]!;
      if (!issue.path.length && issue.code === 'invalid_type') throw new PayloadError('body: expected a JSON object, e.g. {"status":"failed","dryRun":true} or {"ids":[123]}');
      throw new PayloadError(`${issue.path.join('.') || 'body'}: ${issue.message}`);
    }
    const result = await runReplay(rt, parsed.data);
    return json(200, { ok: true, ...result, ...(result.next ? { continue_with: { ...stripDefaults(parsed.data), afterId: result.next.afterId } } : {}) });
  },
});

function stripDefaults(body: Record<string, unknown>) {
  return Object.fromEntries(Object.entries(body).filter(([, v]) => v !== undefined));
}
