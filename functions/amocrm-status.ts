// Netlify transport for the status endpoint (JSON for monitors); the logic lives in lib/.
import type { Config } from '@netlify/functions';
import { handleStatus } from '../lib/http/status.ts';
import { runtimeFromEnv } from '../lib/runtime.ts';

export default (req: Request) => handleStatus(req, runtimeFromEnv);

export const config: Config = { path: '/api/amocrm/status' };
