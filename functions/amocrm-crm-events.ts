// Netlify transport for amoCRM's account webhooks; the logic lives in lib/. The path is a
// literal: Netlify reads `config` from the source without running it.
import type { Config, Context } from '@netlify/functions';
import { handleCrmEvents } from '../lib/http/crm-events.ts';
import { runtimeFromEnv } from '../lib/runtime.ts';

export default (req: Request, context: Context) => handleCrmEvents(req, runtimeFromEnv, context);

export const config: Config = { path: '/api/amocrm/crm-events/:secret' };
