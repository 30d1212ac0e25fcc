// The environment variables the operator commands reason about by name, and the values
// .env.example ships with: a copied .env still holding them is not configured yet.

export const STAGE_VARS = ['AMOCRM_STAGE_LESSON_1', 'AMOCRM_STAGE_LESSON_2', 'AMOCRM_STAGE_LESSON_3'] as const;
export const OAUTH_VARS = ['AMOCRM_CLIENT_ID', 'AMOCRM_CLIENT_SECRET', 'AMOCRM_REDIRECT_URI'] as const;

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
