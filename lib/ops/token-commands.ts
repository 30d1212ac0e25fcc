// The token commands: `exchange-code <code>` (first pair of an OAuth integration),
// `store-long-lived <token>` (a private integration) and `refresh` (rotate now). They
// print expiries, versions and counts, never a token value.
import { AmoError } from '../amocrm/errors.ts';
import type { AmoResources } from '../amocrm/resources.ts';
import { jwtExpiry } from '../jwt.ts';
import { storeTokens } from '../db/token-store.ts';
import type { Runtime } from '../runtime.ts';
import { failed, finish, type CommandContext, type CommandResult } from './command.ts';
import { failureLines } from './failure.ts';
import { commandRuntime } from './lenient-runtime.ts';
import { DAY_MS, inWords, iso } from './time-words.ts';

export interface StoreResult extends CommandResult {
  resumedEvents?: number;
}

export async function exchangeCodeCommand(ctx: CommandContext, code: string): Promise<StoreResult> {
  if (!code?.trim()) return finish(2, ['❌ no code → npm run amocrm -- exchange-code <code from the redirect, valid 20 minutes>']);
  try {
    const { runtime } = commandRuntime(ctx);
    const inv = runtime.invocation(10_000);
    const pair = await inv.oauth.exchange({ code: code.trim() });
    // Stored the moment amoCRM answers: the pair exists nowhere else.
    const stored = await storeTokens(ctx.db, { kind: 'oauth', accessToken: pair.accessToken, refreshToken: pair.refreshToken, expiresAt: pair.expiresAt });
    const now = (ctx.now ?? Date.now)();
    const lines = [
      `✅ tokens stored (oauth, version ${stored.version}): access token valid until ${iso(pair.expiresAt.getTime())} (${inWords(pair.expiresAt.getTime() - now)}), refresh token stored (renewed automatically, valid 3 months while in use)`,
      `✅ parked events resumed: ${stored.resumed_events}${stored.resumed_events ? ' (back to pending; the webhook/scheduled run delivers them)' : ''}`,
      ...(await accountLine(inv.amo)),
    ];
    return { ...finish(0, lines), resumedEvents: stored.resumed_events };
  } catch (err) {
    return failed(err);
  }
}

export async function storeLongLivedCommand(ctx: CommandContext, token: string): Promise<StoreResult> {
  const value = token?.trim();
  if (!value) return finish(2, ['❌ no token → npm run amocrm -- store-long-lived <token from the integration\'s Keys and scopes tab>']);
  const now = (ctx.now ?? Date.now)();
  const exp = jwtExpiry(value);
  if (exp && exp.getTime() <= now) {
    return finish(1, [`❌ this long-lived token expired ${iso(exp.getTime())} → issue a new one in amoCRM (integration → Keys and scopes)`]);
  }
  try {
    // Checked against amoCRM first when the env says where amoCRM is: a wrong token
    // stored would park every event. Without the OAuth settings it is stored unverified.
    let runtime: Runtime | undefined;
    try {
      runtime = commandRuntime(ctx).runtime;
    } catch {
      runtime = undefined;
    }
    // Through the runtime's sender like every amoCRM request (the shared limit, 7 req/s per integration).
    const verified = runtime ? await verify(runtime.invocation(10_000).amo, value) : undefined;
    if (verified === 'rejected') return finish(1, ['❌ amoCRM rejects this token (401): not stored → copy the long-lived token again, or issue a new one']);
    const stored = await storeTokens(ctx.db, { kind: 'long_lived', accessToken: value, refreshToken: null, expiresAt: exp ?? null });
    const expiry = exp ? `expires ${iso(exp.getTime())} (${inWords(exp.getTime() - now)})` : 'expiry not readable from the token';
    const lines = [
      `✅ long-lived token stored (version ${stored.version}): ${expiry}`,
      `✅ parked events resumed: ${stored.resumed_events}`,
    ];
    if (verified) lines.push(`${verified.ok ? '✅' : '⚠️'} ${verified.text}`);
    if (exp && exp.getTime() - now < 30 * DAY_MS) lines.push('⚠️ it expires within 30 days: issue a longer-lived one soon');
    return { ...finish(0, lines), resumedEvents: stored.resumed_events };
  } catch (err) {
    return failed(err);
  }
}

export async function refreshCommand(ctx: CommandContext): Promise<CommandResult> {
  try {
    const { runtime } = commandRuntime(ctx);
    const tokens = runtime.invocation(10_000).tokens;
    const before = await tokens.read();
    await tokens.forceRefresh();
    const after = await tokens.read();
    const now = (ctx.now ?? Date.now)();
    const expires = after.expires_at ? Date.parse(after.expires_at) : NaN;
    return finish(0, [
      `✅ tokens refreshed: version ${before.version} → ${after.version}, access token valid until ${Number.isFinite(expires) ? `${iso(expires)} (${inWords(expires - now)})` : 'unknown'}; the new refresh token is stored`,
    ]);
  } catch (err) {
    return failed(err);
  }
}

/**
 * What amoCRM says to the account read with `token`: 'rejected' (401: not to be stored); any
 * other status it answered is a warning, the token is stored anyway. No answer at all throws.
 */
async function verify(amo: AmoResources, token: string): Promise<{ ok: boolean; text: string } | 'rejected'> {
  try {
    const account = await amo.getAccountWith(token);
    if (!account) return 'rejected';
    return { ok: true, text: `amoCRM accepts it: account '${account.name}' (${account.subdomain})` };
  } catch (err) {
    const status = err instanceof AmoError ? err.details.status : undefined;
    if (status === undefined) throw err;
    return { ok: false, text: `amoCRM answered ${status} to GET /api/v4/account` };
  }
}

async function accountLine(amo: AmoResources): Promise<string[]> {
  try {
    const account = await amo.getAccount();
    return [`✅ amoCRM answers with the new token: account '${account.name}' (${account.subdomain})`];
  } catch (err) {
    return [`⚠️ stored, but GET /api/v4/account failed: ${failureLines(err)[0]!.replace(/^❌ /, '')}`];
  }
}
