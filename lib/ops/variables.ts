// The environment variables the operator commands reason about by name, and the values
// .env.example ships with: a copied .env still holding them is not configured yet. The
// values themselves are read by lib/config.ts (readConfig) only.

// Named in lib/config.ts (the one reader of the environment), used here by name only.
export { OAUTH_VARS, STAGE_VARS } from '../config.ts';

/** Hosts of .env.example's URLs: nobody's project or site. */
export const EXAMPLE_HOSTS = ['your-project.supabase.co', 'your-site.netlify.app'] as const;

/**
 * .env.example's subdomain. It may be a real account (it is the academy's example), so
 * it is only a warning, and only until amoCRM has answered for it.
 */
export const EXAMPLE_SUBDOMAIN = 'onaiacademy';

/** The variables that hold a URL of the deployment (where an example host can hide). */
export const URL_VARS = ['SUPABASE_URL', 'SUPABASE_DATABASE_URL', 'AMOCRM_REDIRECT_URI', 'AMOCRM_BASE_URL', 'URL', 'AMOCRM_DRAIN_URL'] as const;

/** The example host `value` points at, if any. */
export function exampleHostOf(value: string | undefined): string | undefined {
  if (!value?.trim()) return undefined;
  let host: string;
  try {
    host = new URL(value.trim()).hostname.toLowerCase();
  } catch {
    return undefined;
  }
  return EXAMPLE_HOSTS.find((h) => host === h);
}
