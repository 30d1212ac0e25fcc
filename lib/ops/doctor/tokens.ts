// The tokens the sync calls amoCRM with: the row in amocrm.system_settings (kind, expiry,
// whether the chain is broken), never a token value.
import type { Env } from '../../config.ts';
import { DAY_MS, inWords, iso } from '../time-words.ts';
import type { DoctorFacts } from './facts.ts';
import { REAUTH, type Add } from './report.ts';

/** The tokens row; returns whether amoCRM can be called with it. */
export function checkTokens(facts: DoctorFacts, values: Partial<Env>, now: () => number, add: Add): boolean {
  const t = facts.tokens;
  if (!t.present) {
    const seed = values.AMOCRM_LONG_LIVED_TOKEN ? 'AMOCRM_LONG_LIVED_TOKEN' : values.AMOCRM_REFRESH_TOKEN ? 'AMOCRM_REFRESH_TOKEN' : undefined;
    if (seed) {
      add('warn', 'tokens', `none in amocrm.system_settings yet: the first request stores them from ${seed}`);
      return true;
    }
    add('fail', 'tokens', 'none in amocrm.system_settings', `${REAUTH} (or, for a private integration, npm run amocrm -- store-long-lived <token>)`);
    return false;
  }
  if (t.auth_state === 'needs_reauth') {
    add('fail', 'tokens', `${t.kind} token chain broken: ${t.auth_problem ?? 'tokens revoked'} (auth_state needs_reauth)`,
      t.kind === 'long_lived' ? 'issue a new long-lived token and run npm run amocrm -- store-long-lived <token>' : REAUTH);
    return false;
  }
  const expires = t.expires_at ? Date.parse(t.expires_at) : NaN;
  const left = expires - now();
  if (t.kind === 'long_lived') {
    if (!Number.isFinite(expires)) add('warn', 'tokens', 'long-lived token stored, expiry unknown');
    else if (left <= 0) {
      add('fail', 'tokens', `long-lived token expired ${iso(expires)}`, 'issue a new long-lived token and run npm run amocrm -- store-long-lived <token>');
      return false;
    } else if (left < 30 * DAY_MS) add('warn', 'tokens', `long-lived token expires ${iso(expires)} (${inWords(left)}): issue a new one before then`);
    else add('ok', 'tokens', `long-lived token stored, expires ${iso(expires)} (${inWords(left)})`);
    return true;
  }
  if (!t.has_refresh_token) {
    add('fail', 'tokens', 'oauth token stored without a refresh token: it cannot be renewed', REAUTH);
    return false;
  }
  const updated = t.updated_at ? Date.parse(t.updated_at) : NaN;
  const idle = now() - updated;
  const access = !Number.isFinite(expires) ? 'access token expiry unknown'
    : left > 0 ? `access token valid until ${iso(expires)} (${inWords(left)})`
      : `access token expired ${iso(expires)}, the next request refreshes it`;
  if (Number.isFinite(idle) && idle > 75 * DAY_MS) {
    add('warn', 'tokens', `oauth, ${access}; refresh token last rotated ${inWords(-idle)}: amoCRM revokes it after 3 months unused, run npm run amocrm -- refresh`);
  } else {
    add('ok', 'tokens', `oauth, ${access}, refresh token stored${Number.isFinite(updated) ? `, updated ${iso(updated)}` : ''}`);
  }
  return true;
}
