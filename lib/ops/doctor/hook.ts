// amoCRM's account hook, the reverse direction: amoCRM must have a hook at exactly this
// deployment's crm-events URL, enabled, carrying status_lead. AMOCRM_HOOK_SECRET is part of
// that URL: every line shows it masked (lib/ops/hook-subscriptions.ts).
import { AmoError } from '../../amocrm/errors.ts';
import type { Runtime } from '../../runtime.ts';
import { failureText } from '../failure.ts';
import { assessHooks, HOOK_PATH, HOOK_SETTINGS, MASK, maskDestination, REENABLE, shownDestination, staleLine, TURN_ON } from '../hook-subscriptions.ts';
import { deploymentSite } from '../site.ts';
import type { DoctorFacts } from './facts.ts';
import type { Add, CheckStatus } from './report.ts';

/**
 * amoCRM has a hook at exactly this deployment's crm-events URL, enabled, carrying
 * status_lead. Every line shows the URL with the secret masked.
 */
export async function checkHook(runtime: Runtime, netlifyUrl: string | undefined, facts: DoctorFacts | undefined, secret: string, add: Add): Promise<void> {
  const scrub = (text: string) => text.split(secret).join(MASK);
  const check = (status: CheckStatus, detail: string, fix?: string) => add(status, 'amoCRM hook', scrub(detail), fix && scrub(fix));
  const site = deploymentSite({ URL: netlifyUrl }, facts?.webhook);
  if ('problem' in site) {
    check('fail', `${site.problem}: the hook's URL is <site>${HOOK_PATH}<AMOCRM_HOOK_SECRET>`, site.fix);
    return;
  }
  const shown = shownDestination(site.site);
  let hooks;
  try {
    hooks = await runtime.invocation(10_000).amo.listWebhooks();
  } catch (err) {
    if (err instanceof AmoError && err.details.status === 403) {
      check('warn', `not checked: amoCRM answers 403 to GET /api/v4/webhooks (only an administrator's token may list hooks); check by hand in amoCRM → Settings → Integrations → Web hooks that ${shown} is there, enabled, with status_lead`);
    } else {
      check('fail', `GET /api/v4/webhooks failed: ${failureText(err)}`, 'retry; npm run amocrm -- webhooks list shows the hooks');
    }
    return;
  }
  const a = assessHooks(hooks, site.site, secret);
  const stale = a.stale.length ? `; ${staleLine(a.stale, site.site).replace(/^⚠️ /, '')}` : '';
  if (!a.ours) {
    const others = hooks.length ? ` (the account has ${hooks.length}: ${hooks.map((h) => maskDestination(h.destination, [secret])).join(', ')})` : ' (the account has none)';
    check('fail', `no hook points at this deployment, ${shown} (site from ${site.from})${others}: amoCRM's changes do not reach the platform${stale}`,
      'npm run amocrm -- webhooks subscribe');
  } else if (a.ours.disabled) {
    check('fail', `the hook for ${shown} is disabled by amoCRM (more than 100 invalid answers within 2 hours): amoCRM's changes do not reach the platform${stale}`, REENABLE);
  } else if (!a.ours.settings.includes('status_lead')) {
    check('fail', `the hook for ${shown} does not carry status_lead (it has ${a.ours.settings.join(', ') || 'no events'}): stage changes are not sent`,
      'npm run amocrm -- webhooks subscribe (adds the missing events)');
  } else if (a.missing.length || stale) {
    check('warn', `the hook for ${shown} is enabled with status_lead${a.missing.length ? `, but lacks ${a.missing.join(', ')}: run npm run amocrm -- webhooks subscribe to add them` : ''}${stale}`);
  } else {
    check('ok', `${shown} (site from ${site.from}) enabled, with ${HOOK_SETTINGS.filter((s) => a.ours!.settings.includes(s)).join(', ')}`);
  }
}


/** The reverse direction's line(s): off (ℹ️), not checked, or the hook as amoCRM lists it. */
export async function checkReverse(runtime: Runtime | undefined, accountAnswered: boolean, secret: string | undefined,
  netlifyUrl: string | undefined, facts: DoctorFacts | undefined, add: Add): Promise<void> {
  if (!secret) {
    add('info', 'amoCRM hook', `off: AMOCRM_HOOK_SECRET is not set, so changes made in amoCRM (a deal won, lost or moved by hand) do not reach the platform; to turn it on: ${TURN_ON}`);
  } else if (!runtime || !accountAnswered) {
    add('warn', 'amoCRM hook', 'not checked: amoCRM was not reached (see above)');
  } else {
    await checkHook(runtime, netlifyUrl, facts, secret, add);
  }
}
