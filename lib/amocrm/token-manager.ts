// The token chain across stateless invocations. The database row is the truth; the env
// only seeds an empty table. Exactly one invocation refreshes at a time (a lease in the
// database); the others wait for its result and use the new token. The rotated pair is
// stored (compare-and-swap on version) the moment amoCRM returns it.
import type { Clock } from '../clock.ts';
import type { Db } from '../db/port.ts';
import * as store from '../db/token-store.ts';
import type { StoredTokens } from '../db/token-store.ts';
import type { Logger } from '../log.ts';
import { jwtExpiry } from '../jwt.ts';
import { AmoError, needsOperator, retryable } from './errors.ts';
import type { AccessToken, TokenSource } from './http.ts';
import type { OAuthClient, TokenPair } from './oauth.ts';

export interface TokenSeed {
  accessToken?: string;
  refreshToken?: string;
  longLivedToken?: string;
}

export interface TokenManagerOptions {
  db: Db;
  oauth: OAuthClient;
  clock: Clock;
  log: Logger;
  /** Who holds the refresh lease (invocation id), for the database's bookkeeping. */
  holder: string;
  seed?: TokenSeed;
  /** Refresh this long before expiry. */
  marginMs?: number;
  /** How long a waiting invocation waits for another's refresh. */
  waitMs?: number;
  leaseSeconds?: number;
}

const REAUTH_HINT = 'авторизуйте интеграцию заново: npm run amocrm -- exchange-code <код из amoCRM>';

export class TokenManager implements TokenSource {
  /**
   * A pair this invocation got from amoCRM but could not store. amoCRM has already
   * rotated, so it is the only live token: use it for the rest of this invocation.
   */
  private unstored?: AccessToken;
  /**
   * The token this invocation last read or got, until it nears expiry: an invocation
   * makes several amoCRM requests, and re-reading the database before each would double
   * the round trips on the hot path. A 401 drops it.
   */
  private cached?: { token: AccessToken; usableUntil: number };
  private readonly marginMs: number;
  private readonly waitMs: number;
  private readonly leaseSeconds: number;

  constructor(private readonly o: TokenManagerOptions) {
    this.marginMs = o.marginMs ?? 10 * 60_000;
    this.waitMs = o.waitMs ?? 15_000;
    this.leaseSeconds = o.leaseSeconds ?? 30;
  }

  async read(): Promise<StoredTokens> {
    let stored = await store.getTokens(this.o.db);
    if (!stored.present && (await this.seed())) stored = await store.getTokens(this.o.db);
    return stored;
  }

  async current(): Promise<AccessToken> {
    if (this.unstored) return this.unstored;
    if (this.cached && this.cached.usableUntil > this.o.clock.now()) return this.cached.token;
    const stored = await this.read();
    const usable = this.usable(stored);
    if (usable) return usable;
    return this.refresh(stored.version!, 'expired');
  }

  async afterUnauthorized(used: AccessToken): Promise<AccessToken> {
    this.unstored = undefined;
    this.cached = undefined;
    const stored = await this.read();
    if (stored.version !== used.version) {
      const usable = this.usable(stored);
      if (usable) return usable; // someone refreshed meanwhile
    }
    if (stored.kind === 'long_lived') {
      await this.breakChain('long_lived_rejected', 'amoCRM отклонил долгосрочный токен (401)',
        'выпустите новый долгосрочный токен в настройках интеграции и сохраните его: npm run amocrm -- store-long-lived <токен>', false);
    }
    return this.refresh(stored.version!, 'unauthorized');
  }

  /** Refreshes now (scheduled upkeep, `npm run amocrm -- refresh`), whatever the expiry. */
  async forceRefresh(): Promise<AccessToken> {
    const stored = await this.read();
    this.assertChainUsable(stored);
    return this.refresh(stored.version!, 'forced');
  }

  /** Refreshes if the token expires within `withinMs` (the scheduled run's upkeep). */
  async refreshIfExpiringWithin(withinMs: number): Promise<{ refreshed: boolean; expiresAt?: string | null }> {
    const stored = await this.read();
    this.assertChainUsable(stored);
    if (stored.kind !== 'oauth') return { refreshed: false, expiresAt: stored.expires_at };
    const left = stored.expires_at ? Date.parse(stored.expires_at) - this.o.clock.now() : -1;
    if (left > withinMs) return { refreshed: false, expiresAt: stored.expires_at };
    await this.refresh(stored.version!, left <= 0 ? 'expired' : 'upkeep');
    return { refreshed: true, expiresAt: (await this.read()).expires_at };
  }

  private usable(stored: StoredTokens): AccessToken | undefined {
    this.assertChainUsable(stored);
    const left = stored.expires_at ? Date.parse(stored.expires_at) - this.o.clock.now() : Infinity;
    if (stored.kind === 'long_lived') {
      if (left <= 0) {
        throw needsOperator('long_lived_expired', `срок долгосрочного токена истёк ${stored.expires_at}`,
          'выпустите новый долгосрочный токен и сохраните его: npm run amocrm -- store-long-lived <токен>');
      }
      return this.remember({ accessToken: stored.access_token!, version: stored.version! }, this.o.clock.now() + left);
    }
    if (left > this.marginMs) return this.remember({ accessToken: stored.access_token!, version: stored.version! }, this.o.clock.now() + left - this.marginMs);
    return undefined;
  }

  private remember(token: AccessToken, usableUntil: number): AccessToken {
    this.cached = { token, usableUntil };
    return token;
  }

  private assertChainUsable(stored: StoredTokens): void {
    if (!stored.present) {
      throw needsOperator('no_tokens', 'в system_settings нет токенов amoCRM',
        `${REAUTH_HINT} (или задайте AMOCRM_ACCESS_TOKEN/AMOCRM_REFRESH_TOKEN для первого запуска)`);
    }
    if (stored.auth_state === 'needs_reauth') {
      throw needsOperator('needs_reauth', `цепочка токенов прервана: ${stored.auth_problem ?? 'токен отозван'}`, REAUTH_HINT);
    }
  }

  private async seed(): Promise<boolean> {
    const { seed, db, clock } = this.o;
    if (seed?.longLivedToken) {
      const expiresAt = jwtExpiry(seed.longLivedToken) ?? null;
      return store.seedTokens(db, { kind: 'long_lived', accessToken: seed.longLivedToken, refreshToken: null, expiresAt });
    }
    if (seed?.refreshToken) {
      // Without a known expiry, treat the seeded access token as expired: the first use refreshes.
      const expiresAt = (seed.accessToken && jwtExpiry(seed.accessToken)) || new Date(clock.now() - 1000);
      return store.seedTokens(db, { kind: 'oauth', accessToken: seed.accessToken ?? '', refreshToken: seed.refreshToken, expiresAt });
    }
    return false;
  }

  private async refresh(seenVersion: number, reason: 'expired' | 'unauthorized' | 'upkeep' | 'forced'): Promise<AccessToken> {
    const { db, clock, log, holder } = this.o;
    const deadline = clock.now() + this.waitMs;
    // Waiters back off (100 ms → 1 s, with jitter): twenty of them polling every 100 ms
    // would crowd the database the refresh itself needs.
    let pollMs = 100;
    while (true) {
      const lease = await store.beginRefresh(db, holder, this.leaseSeconds);

      if (lease.acquired) {
        if (lease.version !== seenVersion) {
          // Another invocation refreshed between our read and our lease: use its token.
          await store.abortRefresh(db, holder);
          const fresh = this.usable(await this.read());
          if (fresh) return fresh;
          seenVersion = lease.version;
          continue;
        }
        if (reason === 'expired' || reason === 'unauthorized') {
          log.warn(reason === 'expired' ? 'Токен истёк, обновляю' : 'Токен истёк или отозван (401), обновляю', { version: seenVersion });
        }
        return this.refreshHoldingLease(lease.version, lease.refresh_token ?? '');
      }

      if (lease.kind !== 'oauth') throw needsOperator('no_refresh', 'долгосрочный токен не обновляется', 'выпустите новый долгосрочный токен');
      if (lease.auth_state === 'needs_reauth') this.assertChainUsable(await this.read());
      if (lease.version !== seenVersion) {
        const fresh = this.usable(await this.read());
        if (fresh) return fresh;
        seenVersion = lease.version;
      }
      if (clock.now() > deadline) {
        throw retryable('refresh_wait_timeout', 'не дождались обновления токена другим запуском');
      }
      await clock.sleep(pollMs + Math.floor(Math.random() * pollMs));
      pollMs = Math.min(1_000, pollMs * 2);
    }
  }

  private async refreshHoldingLease(version: number, refreshToken: string): Promise<AccessToken> {
    const { db, oauth, log, holder } = this.o;
    let pair: TokenPair;
    try {
      pair = await oauth.exchange({ refreshToken });
    } catch (err) {
      const error = err instanceof AmoError ? err : retryable('refresh_failed', String(err));
      if (error.kind === 'operator') {
        // Before calling the chain broken, re-read: another worker may have refreshed it.
        const now = await this.read();
        if (now.version !== version) {
          await store.abortRefresh(db, holder);
          const fresh = this.usable(now);
          if (fresh) return fresh;
        }
        await this.breakChain(error.code, error.message, error.details.whatToDo ?? REAUTH_HINT, true);
      }
      // Network/5xx/lost answer: the lease goes back and the event is retried. Kommo's docs
      // say the old refresh token stays valid until the new pair is first used, so the
      // next attempt may still complete the rotation; if amoCRM refuses it instead (single
      // use), that attempt breaks the chain above and tells the operator, once.
      await store.abortRefresh(db, holder);
      throw error;
    }
    const stored = await this.storeRotated(version, pair);
    if (stored === undefined) {
      this.unstored = { accessToken: pair.accessToken, version: -1 };
      return this.unstored;
    }
    log.ok('Токены успешно обновлены', { expires_at: pair.expiresAt.toISOString(), version: stored });
    return this.remember({ accessToken: pair.accessToken, version: stored }, pair.expiresAt.getTime() - this.marginMs);
  }

  /**
   * Stores the rotated pair, retrying a failed write: losing it would break the chain.
   * Returns the stored version, or undefined when the pair could not be stored (the
   * operator has been told, once, what to do).
   */
  private async storeRotated(version: number, pair: TokenPair): Promise<number | undefined> {
    const { db, clock, log, holder } = this.o;
    let lastError: unknown;
    for (const delay of [0, 200, 1000, 3000]) {
      if (delay) await clock.sleep(delay);
      try {
        const r = await store.finishRefresh(db, holder, version, pair);
        if (r.stored) return r.version!;
        // Someone stored another pair since our lease began (our lease had expired). Give
        // back whatever lease we may still hold, so the next refresh need not wait it out.
        await store.abortRefresh(db, holder).catch(() => undefined);
        log.fail('Новые токены не сохранены: цепочку уже обновил другой запуск', {
          code: 'refresh_cas_conflict', what_to_do: 'если дальше появятся 401, авторизуйте интеграцию заново: npm run amocrm -- exchange-code <код>',
        });
        return undefined;
      } catch (err) {
        lastError = err;
      }
    }
    // amoCRM has rotated: the stored refresh token is dead and the new pair exists only in
    // this process. Best possible outcome: finish this invocation's work with the new
    // access token, mark the chain for re-authorization (if the database takes the write),
    // and tell the operator once, clearly. The token itself is never logged.
    log.fail('Новые токены получены, но не сохранены в system_settings: цепочка прервётся', {
      code: 'token_store_failed', error: String((lastError as Error)?.message ?? lastError).slice(0, 200),
      what_to_do: 'проверьте базу (Supabase доступен?), затем авторизуйте интеграцию заново: npm run amocrm -- exchange-code <код>',
    });
    await store.abortRefresh(db, holder, 'новые токены не сохранены (ошибка записи в базу)').catch(() => undefined);
    return undefined;
  }

  private async breakChain(code: string, problem: string, whatToDo: string, holdingLease: boolean): Promise<never> {
    const { db, log, holder } = this.o;
    const r = holdingLease ? await store.abortRefresh(db, holder, problem) : await store.markNeedsReauth(db, problem);
    // One line for the operator, not one per event: only the caller that broke the chain logs.
    if (r.became_broken) log.fail(`Цепочка токенов прервана: ${problem}`, { code, what_to_do: whatToDo });
    throw needsOperator(code, problem, whatToDo);
  }
}
