// `webhooks list|subscribe|unsubscribe`: amoCRM's account hook for this deployment, at
// <site>/api/amocrm/crm-events/<AMOCRM_HOOK_SECRET>. <site> is Netlify's `URL`, else the
// origin of the database's webhook_url (the lesson-completed webhook lives on the same
// site; amocrm_doctor_facts reports only its scheme and host). The secret is the hook's only
// authentication, so it is never printed: destinations are shown with anything
// secret-looking masked, ours and everyone else's (another integration's hook may carry
// its own secret). The doctor's hook check (lib/ops/doctor/hook.ts) reads the same assessment.
// Where the site is, and whether an address is this machine: site.ts.
import { AmoError } from '../amocrm/errors.ts';
import type { AmoResources, AmoWebhook } from '../amocrm/resources.ts';
import { finish, type CommandContext, type CommandResult } from './command.ts';
import { failureLines } from './failure.ts';
import { commandRuntime } from './lenient-runtime.ts';
import { isLocalHost, isLocalUrl, siteOf, type Site } from './site.ts';

export const HOOK_PATH = '/api/amocrm/crm-events/';
/** amoCRM's subscription names: the stage change, and what the mirror also follows. */
export const HOOK_SETTINGS = ['status_lead', 'update_lead', 'delete_lead', 'restore_lead'] as const;
export const MASK = '***';
export const ACTIONS = ['list', 'subscribe', 'unsubscribe'] as const;

const SUBSCRIBE = 'npm run amocrm -- webhooks subscribe';
const HOOKS_PAGE = 'amoCRM → Settings → Integrations → Web hooks';
export const TURN_ON = `set AMOCRM_HOOK_SECRET (openssl rand -hex 24) in Netlify → Site configuration → Environment variables and .env, deploy, then ${SUBSCRIBE}`;
export const REENABLE = `find out why it was answered with errors (npm run doctor, the crm-events function's log), then re-enable it in ${HOOKS_PAGE} (or: npm run amocrm -- webhooks unsubscribe, then ${SUBSCRIBE})`;

export const hookDestination = (site: string, secret: string) => `${site}${HOOK_PATH}${secret}`;
/** Our destination as it may be shown. */
export const shownDestination = (site: string) => `${site}${HOOK_PATH}${MASK}`;

const safeDecode = (s: string) => {
  try {
    return decodeURIComponent(s);
  } catch {
    return s;
  }
};

/**
 * A URL part that could be a credential: one of `secrets`, or 16+ characters with a digit
 * in them or a 16+ character run without a separator (a token, not a slug of words).
 */
function looksSecret(part: string, secrets: string[]): boolean {
  const text = safeDecode(part);
  if (secrets.some((s) => s && text.includes(s))) return true;
  return text.length >= 16 && (/\d/.test(text) || /[^-_.~\s/]{16}/.test(text));
}

/** A destination fit to print: secret-looking path segments, query values, user info and fragment masked. */
export function maskDestination(destination: string, secrets: string[] = []): string {
  let u: URL;
  try {
    u = new URL(destination);
  } catch {
    return `(not a URL, ${destination.length} chars)`;
  }
  const path = u.pathname.split('/').map((seg) => (looksSecret(seg, secrets) ? MASK : seg)).join('/');
  const query = [...u.searchParams.keys()].map((k) => `${looksSecret(k, secrets) ? MASK : k}=${MASK}`).join('&');
  const user = u.username || u.password ? `${MASK}@` : '';
  return `${u.protocol}//${user}${u.host}${path}${query ? `?${query}` : ''}${u.hash ? `#${MASK}` : ''}`;
}

/** What the account's hooks say about this deployment's. */
export interface HookAssessment {
  ours?: AmoWebhook;
  /** Our settings the hook lacks (HOOK_SETTINGS order). */
  missing: string[];
  /** Other hooks at this site's crm-events endpoint (an old secret): answered 404, bound to be disabled. */
  stale: AmoWebhook[];
}

export function assessHooks(hooks: AmoWebhook[], site: string, secret: string): HookAssessment {
  const destination = hookDestination(site, secret);
  const ours = hooks.find((h) => h.destination === destination);
  const prefix = `${site}${HOOK_PATH}`;
  const stale = hooks.filter((h) => h !== ours && h.destination.startsWith(prefix));
  return { ours, missing: HOOK_SETTINGS.filter((s) => !ours?.settings.includes(s)), stale };
}

export const staleLine = (stale: AmoWebhook[], site: string) =>
  `⚠️ ${stale.length} other hook(s) point at ${shownDestination(site)} with another secret (an old AMOCRM_HOOK_SECRET?): they are answered 404 and amoCRM will disable them → delete them in ${HOOKS_PAGE}`;

/** The 403 amoCRM gives a token that is not an administrator's, in words. */
const isForbidden = (err: unknown) => err instanceof AmoError && err.details.status === 403;
const forbiddenLine = (site: string | undefined, what: string) =>
  `❌ amoCRM answered 403 to /api/v4/webhooks: managing webhooks needs an account administrator's token (or the account is blocked) → authorize the integration as an administrator (npm run amocrm -- exchange-code <code>), or ${what} in ${HOOKS_PAGE}` +
  (what.startsWith('add') ? `: ${site ?? '<site>'}${HOOK_PATH} followed by the value of AMOCRM_HOOK_SECRET, events ${HOOK_SETTINGS.join(', ')}` : '');

const describeHook = (h: AmoWebhook, secrets: string[], mark: string) =>
  `  ${String(h.id ?? '-').padEnd(6)} ${maskDestination(h.destination, secrets)}  [${h.settings.join(', ') || 'no events'}]  ${h.disabled ? 'DISABLED' : 'enabled'}${mark}`;

/** What a command has once the secret, the site and amoCRM are known. */
interface HookRun {
  amo: AmoResources;
  baseUrl: string;
  secret?: string;
  site: Site;
  done: (code: number, lines: string[]) => CommandResult;
}

export async function webhooksCommand(ctx: CommandContext, action: string): Promise<CommandResult> {
  let secret: string | undefined;
  // Every line passes here: whatever an error message echoes, the secret is not in it.
  const done = (code: number, lines: string[]) => finish(code, secret ? lines.map((l) => l.split(secret!).join(MASK)) : lines);
  if (!(ACTIONS as readonly string[]).includes(action)) {
    return finish(2, [`❌ unknown webhooks command "${action}" → npm run amocrm -- webhooks list|subscribe|unsubscribe`]);
  }
  let site: Site | undefined;
  try {
    const { runtime } = commandRuntime(ctx);
    secret = runtime.config.hooks.secret;
    if (!secret && action !== 'list') {
      return done(1, [`❌ AMOCRM_HOOK_SECRET is not set: the hook's URL is <site>${HOOK_PATH}<AMOCRM_HOOK_SECRET> → ${TURN_ON.replace(`, then ${SUBSCRIBE}`, `, then run this again`)}`]);
    }
    site = await siteOf(ctx);
    if ('problem' in site && action !== 'list') return done(1, [`❌ ${site.problem} → ${site.fix}`]);
    const run: HookRun = { amo: runtime.invocation(15_000).amo, baseUrl: runtime.config.amocrm.baseUrl, secret, site, done };
    if (action === 'list') return await listHooks(run);
    if (action === 'unsubscribe') return await unsubscribe(run);
    return await subscribe(run);
  } catch (err) {
    if (isForbidden(err)) {
      return done(1, [forbiddenLine(site?.site, action === 'subscribe' ? 'add the hook by hand' : action === 'unsubscribe' ? 'delete the hook by hand' : 'look at the hooks')]);
    }
    return done(1, failureLines(err));
  }
}

/** Every hook of the account, ours and stale ones marked, and what ours lacks. */
async function listHooks({ amo, baseUrl, secret, site, done }: HookRun): Promise<CommandResult> {
  const hooks = await amo.listWebhooks();
  const a = site.site && secret ? assessHooks(hooks, site.site, secret) : undefined;
  const lines = [`Webhooks of ${baseUrl}: ${hooks.length}`];
  for (const h of hooks) {
    const mark = h === a?.ours ? '   ← this deployment' : a?.stale.includes(h) ? '   ← this site, another secret (stale)' : '';
    lines.push(describeHook(h, secret ? [secret] : [], mark));
  }
  if (a?.stale.length) lines.push(staleLine(a.stale, site.site!));
  if (!secret) return done(0, [...lines, `ℹ️ AMOCRM_HOOK_SECRET is not set: the reverse direction is off and none of these is this deployment's → to turn it on: ${TURN_ON}`]);
  if ('problem' in site) return done(1, [...lines, `❌ ${site.problem}, so this deployment's hook cannot be told apart → ${site.fix}`]);
  const shown = shownDestination(site.site);
  if (!a!.ours) return done(1, [...lines, `❌ no hook points at this deployment (${shown}) → ${SUBSCRIBE}`]);
  if (a!.ours.disabled) return done(1, [...lines, `❌ this deployment's hook (${shown}) is disabled by amoCRM → ${REENABLE}`]);
  if (a!.missing.length) return done(0, [...lines, `⚠️ this deployment's hook (${shown}) is enabled but lacks ${a!.missing.join(', ')} → ${SUBSCRIBE}`]);
  return done(0, [...lines, `✅ this deployment's hook (${shown}) is enabled with ${a!.ours.settings.join(', ')}`]);
}

async function unsubscribe({ amo, secret, site, done }: HookRun): Promise<CommandResult> {
  const shown = shownDestination(site.site!);
  const removed = await amo.unsubscribeWebhook(hookDestination(site.site!, secret!));
  return done(0, [removed
    ? `✅ unsubscribed: amoCRM no longer calls ${shown}`
    : `✅ nothing to unsubscribe: no hook points at ${shown}`]);
}

async function subscribe({ amo, baseUrl, secret, site, done }: HookRun): Promise<CommandResult> {
  const siteUrl = site.site!;
  const shown = shownDestination(siteUrl);
  const local = isLocalHost(new URL(siteUrl).hostname);
  if (local && !isLocalUrl(baseUrl)) {
    return done(1, [`❌ ${siteUrl} (from ${site.from}) is this machine: amoCRM cannot call it → set URL to the deployed site, e.g. URL=https://<site>.netlify.app`]);
  }
  const lines: string[] = [];
  if (siteUrl.startsWith('http:') && !local) lines.push(`⚠️ ${siteUrl} is not https: the secret in the hook's URL would travel unencrypted`);
  const before = assessHooks(await amo.listWebhooks(), siteUrl, secret!);
  if (before.stale.length) lines.push(staleLine(before.stale, siteUrl));
  if (before.ours?.disabled) return done(1, [...lines, `❌ the hook for ${shown} exists but amoCRM disabled it → ${REENABLE}`]);
  if (before.ours && before.missing.length === 0) {
    return done(0, [...lines, `✅ already subscribed: ${shown} (hook ${before.ours.id ?? '?'}, enabled) with ${before.ours.settings.join(', ')}; nothing changed`]);
  }
  // An existing hook keeps the events someone added to it by hand.
  const settings = [...new Set([...(before.ours?.settings ?? []), ...HOOK_SETTINGS])];
  await amo.subscribeWebhook(hookDestination(siteUrl, secret!), settings);
  const after = assessHooks(await amo.listWebhooks(), siteUrl, secret!);
  if (!after.ours) return done(1, [...lines, `❌ amoCRM accepted the subscription but does not list a hook for ${shown} → check ${HOOKS_PAGE}, then run this again`]);
  if (after.missing.length) return done(1, [...lines, `❌ the hook for ${shown} lacks ${after.missing.join(', ')} after subscribing → add them in ${HOOKS_PAGE}`]);
  return done(0, [...lines, `✅ subscribed ${shown} (from ${site.from}) to ${after.ours.settings.join(', ')} (hook ${after.ours.id ?? '?'}, ${after.ours.disabled ? 'DISABLED' : 'enabled'})`]);
}
