// The runtime an operator command uses. `pipelines` is how one finds the pipeline and
// stage ids in the first place, so those (and the webhook/replay secrets, which no
// command uses) may be missing: they are filled with inert values and reported as not
// configured. The OAuth variables may not: a refresh with made-up client credentials
// would break the token chain.
import { ConfigError, loadConfig, parseEnv } from '../config.ts';
import { memoryLogger } from '../log.ts';
import { buildRuntime, type Runtime } from '../runtime.ts';
import type { CommandContext, EnvSource } from './command.ts';
import { STAGE_VARS } from './variables.ts';

/** Inert values: above any real amoCRM id, and secrets nothing accepts. */
const INERT: Record<string, string> = {
  AMOCRM_PIPELINE_ID: '9007199254740001',
  AMOCRM_STAGE_LESSON_1: '9007199254740002',
  AMOCRM_STAGE_LESSON_2: '9007199254740003',
  AMOCRM_STAGE_LESSON_3: '9007199254740004',
  AMOCRM_WEBHOOK_SECRET: 'not-configured-webhook-secret',
  AMOCRM_REPLAY_TOKEN: 'not-configured-replay-token',
};

export interface CommandRuntime {
  runtime: Runtime;
  /** Whether AMOCRM_PIPELINE_ID / AMOCRM_STAGE_LESSON_n came from the env (not filled in). */
  configured: { pipeline: boolean; stages: [boolean, boolean, boolean] };
}

/** Throws ConfigError naming only the variables a command cannot do without. */
export function commandRuntime(ctx: CommandContext): CommandRuntime {
  const patched: EnvSource = { ...ctx.env };
  const filled = new Set<string>();
  // zod reports the cross-field rules only once every field parses: fill, parse again.
  for (let round = 0; ; round++) {
    try {
      parseEnv(patched);
      break;
    } catch (err) {
      if (!(err instanceof ConfigError) || round > 2) throw err;
      const vars = err.problems.map((p) => p.variable);
      if (!vars.every((v) => v in INERT)) {
        throw new ConfigError(err.problems.filter((p) => !(p.variable in INERT)));
      }
      // Three distinct stages are required; a clash is reported on lesson 1: fill them all.
      const fill = vars.some((v) => STAGE_VARS.includes(v as never) && filled.has(v)) ? [...vars, ...STAGE_VARS] : vars;
      for (const v of fill) {
        patched[v] = INERT[v];
        filled.add(v);
      }
    }
  }
  // The command's own logger: a token refresh it causes is reported by its own lines.
  const runtime = buildRuntime(loadConfig(patched), ctx.db, { log: memoryLogger() });
  return {
    runtime,
    configured: {
      pipeline: !filled.has('AMOCRM_PIPELINE_ID'),
      stages: STAGE_VARS.map((v) => !filled.has(v)) as [boolean, boolean, boolean],
    },
  };
}
