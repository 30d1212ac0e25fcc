// How the database rings the sync: pg_net, the webhook URL and the webhook secret (equal
// to AMOCRM_WEBHOOK_SECRET, compared through the sha256 the database reports, never read back).
import { createHash } from 'node:crypto';
import { NETLIFY_ENV } from '../../config.ts';
import { isLocalHost } from '../site.ts';
import type { DoctorFacts } from './facts.ts';
import type { Add } from './report.ts';

const SET_URL = "insert into amocrm.system_settings (key, value) values ('webhook_url', to_jsonb('https://<site>.netlify.app/api/amocrm/lesson-completed'::text)) on conflict (key) do update set value = excluded.value;";
const SET_SECRET = "insert into amocrm.system_settings (key, value) values ('webhook_secret', to_jsonb('<the value of AMOCRM_WEBHOOK_SECRET>'::text)) on conflict (key) do update set value = excluded.value;";

/** `envSecret`: AMOCRM_WEBHOOK_SECRET as configured (absent when missing or invalid); `deployed`: checking production. */
export function checkWebhook(facts: DoctorFacts, envSecret: string | undefined, deployed: boolean, add: Add): void {
  if (facts.pg_net.installed) add('ok', 'pg_net', 'installed (net.http_post): the trigger rings the webhook at once');
  else add('fail', 'pg_net', 'not installed: the trigger cannot ring the webhook, events wait for the scheduled run', 'Supabase → Database → Extensions → enable pg_net');
  checkUrl(facts.webhook, deployed, add);
  checkSecret(facts.webhook, envSecret, add);
}

/** The facts carry scheme, host and path only. */
function checkUrl(w: DoctorFacts['webhook'], deployed: boolean, add: Add): void {
  if (!w.url_set) {
    add('fail', 'webhook URL', 'webhook_url is not set in amocrm.system_settings', SET_URL);
  } else if (!w.url_host || !w.url_scheme || !['http', 'https'].includes(w.url_scheme)) {
    add('fail', 'webhook URL', 'webhook_url is not an http(s) URL', SET_URL);
  } else {
    const local = isLocalHost(w.url_host);
    const shown = `${w.url_scheme}://${w.url_host}${w.url_path ?? ''}`;
    if (local && deployed) add('warn', 'webhook URL', `${shown}: points at a local machine, the database cannot reach it; use the site URL https://<site>.netlify.app/api/amocrm/lesson-completed`);
    else if (w.url_scheme !== 'https' && !local) add('warn', 'webhook URL', `${shown}: not https, the events travel unencrypted`);
    else if (!(w.url_path ?? '').endsWith('/api/amocrm/lesson-completed')) add('warn', 'webhook URL', `${shown}: the function is served at /api/amocrm/lesson-completed`);
    else add('ok', 'webhook URL', `${shown}${local ? ' (local)' : ''}`);
  }
}

function checkSecret(w: DoctorFacts['webhook'], envSecret: string | undefined, add: Add): void {
  if (!w.secret_set || !w.secret_sha256) {
    add('fail', 'webhook secret', 'webhook_secret is not set in amocrm.system_settings', SET_SECRET);
  } else if (envSecret === undefined) {
    add('warn', 'webhook secret', `set in the database (${w.secret_length} chars); not compared, AMOCRM_WEBHOOK_SECRET is missing or invalid`);
  } else if (createHash('sha256').update(envSecret, 'utf8').digest('hex') !== w.secret_sha256) {
    add('fail', 'AMOCRM_WEBHOOK_SECRET', `differs from webhook_secret in the database (lengths ${envSecret.length} and ${w.secret_length}): every webhook would be rejected with 401`,
      `make them equal: set AMOCRM_WEBHOOK_SECRET in ${NETLIFY_ENV} or update the row: ${SET_SECRET}`);
  } else {
    add('ok', 'webhook secret', `set in the database and equal to AMOCRM_WEBHOOK_SECRET (${w.secret_length} chars, compared by sha256)`);
  }
}
