// Where this deployment is served (Netlify's `URL`, else the origin of the database's
// webhook_url), and whether a host is this machine: what the hook commands and the
// doctor's webhook and hook checks judge an address by.
import { doctorFacts } from '../db/doctor-facts.ts';
import type { CommandContext, EnvSource } from './command.ts';

/** Where this deployment is served, or why that is not known. */
export type Site = { site: string; from: 'URL' | 'webhook_url' } | { site?: undefined; from?: undefined; problem: string; fix: string };

/** The webhook_url's parts amocrm_doctor_facts reports. */
type WebhookOrigin = { url_scheme: string | null; url_host: string | null };

/** localhost, 127.x.x.x or [::1], with or without a port. */
export const isLocalHost = (host: string): boolean => /^(localhost|127\.\d+\.\d+\.\d+|\[::1\])(:\d+)?$/i.test(host);

/** The host of `url` is this machine (false when it is not a URL). */
export function isLocalUrl(url: string): boolean {
  try {
    return isLocalHost(new URL(url).hostname);
  } catch {
    return false;
  }
}

/**
 * Netlify's `URL` when set, else the origin of webhook_url (its scheme and host, as
 * amocrm_doctor_facts reports them).
 */
export function deploymentSite(env: EnvSource, webhook?: WebhookOrigin | null): Site {
  const fromEnv = env.URL?.trim();
  if (fromEnv) {
    try {
      const u = new URL(fromEnv);
      if (u.protocol === 'https:' || u.protocol === 'http:') return { site: u.origin, from: 'URL' };
    } catch { /* reported below */ }
    return { problem: `URL is not an http(s) address (${fromEnv.length} chars)`, fix: 'set URL to the site address, e.g. https://<site>.netlify.app (Netlify sets it for the functions)' };
  }
  if (webhook?.url_host && (webhook.url_scheme === 'https' || webhook.url_scheme === 'http')) {
    try {
      return { site: new URL(`${webhook.url_scheme}://${webhook.url_host}`).origin, from: 'webhook_url' };
    } catch { /* reported below */ }
  }
  return {
    problem: 'the site address is unknown: URL is not set and the database has no http(s) webhook_url',
    fix: 'set URL=https://<site>.netlify.app in .env (Netlify sets it for the functions), or set webhook_url as npm run doctor says',
  };
}

/** The site, read from the environment or the database; facts are only read when URL is absent. */
export async function siteOf(ctx: CommandContext): Promise<Site> {
  if (ctx.env.URL?.trim()) return deploymentSite(ctx.env);
  try {
    const facts = await doctorFacts<{ webhook?: WebhookOrigin }>(ctx.db);
    return deploymentSite(ctx.env, facts.webhook);
  } catch {
    return deploymentSite(ctx.env);
  }
}
