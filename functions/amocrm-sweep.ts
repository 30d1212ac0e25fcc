// Netlify scheduled function: retries, token upkeep and reconcile every two minutes.
import type { Config } from '@netlify/functions';
import { handleSweep } from '../lib/http/sweep.ts';
import { runtimeFromEnv } from '../lib/runtime.ts';

export default (req: Request) => handleSweep(req, runtimeFromEnv);

export const config: Config = { schedule: '*/2 * * * *' };
