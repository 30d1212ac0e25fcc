// Netlify transport for the operator console; the logic lives in lib/http/console/.
import type { Config } from '@netlify/functions';
import { handleConsole } from '../lib/http/console/routes.ts';
import { runtimeFromEnv } from '../lib/runtime.ts';

export default (req: Request) => handleConsole(req, runtimeFromEnv);

// Netlify reads `path` from the source without running it, so it stays a literal. The
// view and the event id are path segments; the router in lib/ reads them from the URL.
export const config: Config = { path: ['/api/amocrm/console', '/api/amocrm/console/:view', '/api/amocrm/console/:view/:id'] };
