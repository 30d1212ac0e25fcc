// Netlify background function (the -background suffix): the one drainer, up to 15 minutes.
import { handleDrain } from '../lib/http/drain-background.ts';
import { runtimeFromEnv } from '../lib/runtime.ts';

export default (req: Request) => handleDrain(req, runtimeFromEnv);
