// amoCRM's token endpoint: exchange an authorization code or a refresh token for a new
// pair. The refresh token is single use: the caller must store the answer at once.
import type { Clock } from '../clock.ts';
import { needsOperator, retryable } from './errors.ts';
import { classifyStatus, type Transport } from './http.ts';
import type { RateLimiter } from './rate-limit.ts';

export interface TokenPair {
  accessToken: string;
  refreshToken: string;
  expiresAt: Date;
}

export interface OAuthClient {
  exchange(grant: { refreshToken: string } | { code: string }): Promise<TokenPair>;
}

export interface OAuthSettings {
  clientId?: string;
  clientSecret?: string;
  redirectUri?: string;
}

export function createOAuthClient(transport: Transport, limiter: RateLimiter, clock: Clock, settings: OAuthSettings): OAuthClient {
  return {
    async exchange(grant) {
      const { clientId, clientSecret, redirectUri } = settings;
      if (!clientId || !clientSecret || !redirectUri) {
        throw needsOperator('oauth_not_configured', 'не заданы AMOCRM_CLIENT_ID / AMOCRM_CLIENT_SECRET / AMOCRM_REDIRECT_URI',
          'задайте их в переменных окружения Netlify (раздел Functions)');
      }
      // Ahead of the queue (every request waiting for a slot also waits for this token), in a
      // counted slot: never an 8th request in one of amoCRM's seconds (rate-limit.ts).
      await transport.ready?.();
      await limiter.acquire({ priority: true });
      const body = {
        client_id: clientId,
        client_secret: clientSecret,
        redirect_uri: redirectUri,
        ...('code' in grant
          ? { grant_type: 'authorization_code', code: grant.code }
          : { grant_type: 'refresh_token', refresh_token: grant.refreshToken }),
      };
      const res = await transport.send({ method: 'POST', path: '/oauth2/access_token', body });
      const data = res.data as { access_token?: string; refresh_token?: string; expires_in?: number; hint?: string } | null;
      if (res.status === 200 && data?.access_token && data.refresh_token) {
        return {
          accessToken: data.access_token,
          refreshToken: data.refresh_token,
          expiresAt: new Date(clock.now() + (data.expires_in ?? 86400) * 1000),
        };
      }
      if (res.status === 400 || res.status === 401) {
        // Revoked/used refresh token, wrong client secret or redirect URI: a person must re-authorize.
        const hint = typeof data?.hint === 'string' ? data.hint.slice(0, 120) : `HTTP ${res.status}`;
        throw needsOperator('code' in grant ? 'auth_code_rejected' : 'refresh_rejected',
          `amoCRM отклонил ${'code' in grant ? 'код авторизации' : 'refresh-токен'}: ${hint}`,
          'авторизуйте интеграцию заново и сохраните токены: npm run amocrm -- exchange-code <код из amoCRM>',
          { status: res.status });
      }
      if (res.status === 200) throw retryable('bad_token_response', 'amoCRM вернул ответ без токенов');
      const error = classifyStatus(res.status, res.headers, res.data);
      if (res.status === 429) await limiter.rateLimited(error.details.retryAfterMs).catch(() => undefined);
      throw error;
    },
  };
}
