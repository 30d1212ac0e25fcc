// The runtime an operator command uses. `pipelines` is how one finds the pipeline and
// stage ids in the first place, so those (and the webhook/replay secrets, which no
// command uses) may be missing: they are filled with inert values and reported as not
// configured. The OAuth variables may not: a refresh with made-up client credentials
// would break the token chain. One reading of the environment (readConfig) lists every
// problem at once, the rules across variables included, so the fill is decided in one go.
import { ConfigError, readConfig, STAGE_VARS } from '../config.ts';
import { memoryLogger } from '../log.ts';
import { buildRuntime, type Runtime } from '../runtime.ts';
import type { CommandContext, EnvSource } from './command.ts';

/** Inert values: above any real amoCRM id (and different from each other), and secrets nothing accepts. */
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
  const reading = readConfig(ctx.env);
  const essential = reading.problems.filter((p) => !(p.variable in INERT));
  if (essential.length) throw new ConfigError(essential);
  const filled = new Set(reading.problems.map((p) => p.variable));
  // Three different stages are required: if the ones kept still clash, none is kept.
  const kept = STAGE_VARS.filter((v) => !filled.has(v)).map((v) => reading.values[v]).filter((id) => id !== undefined);
  if (new Set(kept).size !== kept.length) for (const v of STAGE_VARS) filled.add(v);
  const patched: EnvSource = { ...ctx.env };
  for (const v of filled) patched[v] = INERT[v];
  const { config, problems } = readConfig(patched);
  if (!config) throw new ConfigError(problems);
  // The command's own logger: a token refresh it causes is reported by its own lines.
  const runtime = buildRuntime(config, ctx.db, { log: memoryLogger() });
  return {
    runtime,
    configured: {
      pipeline: !filled.has('AMOCRM_PIPELINE_ID') && config.pipelineId !== undefined,
      stages: STAGE_VARS.map((v) => !filled.has(v) && config.stageIds !== undefined) as [boolean, boolean, boolean],
    },
  };
}
