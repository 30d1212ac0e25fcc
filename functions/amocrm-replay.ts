// Netlify transport for replay; the logic lives in lib/.
import type { Config } from '@netlify/functions';
import { handleReplay } from '../lib/http/replay.ts';
import { runtimeFromEnv } from '../lib/runtime.ts';

export default (req: Request) => handleReplay(req, runtimeFromEnv);

export const config: Config = { path: '/api/amocrm/replay' };
