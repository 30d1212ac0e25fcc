// Netlify transport for the lesson-completed webhook; the logic lives in lib/.
import type { Config } from '@netlify/functions';
import { handleLessonCompleted } from '../lib/http/lesson-completed.ts';
import { runtimeFromEnv } from '../lib/runtime.ts';

export default (req: Request) => handleLessonCompleted(req, runtimeFromEnv);

export const config: Config = { path: '/api/amocrm/lesson-completed' };
