// amoCRM's token endpoint, a resource over the request sender: exchange an authorization
// code or a refresh token for a new pair. The refresh token is single use: the caller must
// store the answer at once.
import type { Clock } from '../clock.ts';
import { needsOperator, retryable } from './errors.ts';
import type { AmoHttp } from './http.ts';

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

interface TokenAnswer {
  access_token?: string;
  refresh_token?: string;
  expires_in?: number;
  hint?: string;
}

export function createOAuthClient(http: AmoHttp, clock: Clock, settings: OAuthSettings): OAuthClient {
  return {
    async exchange(grant) {
      const { clientId, clientSecret, redirectUri } = settings;
      if (!clientId || !clientSecret || !redirectUri) {
        throw needsOperator('oauth_not_configured', 'не заданы AMOCRM_CLIENT_ID / AMOCRM_CLIENT_SECRET / AMOCRM_REDIRECT_URI',
          'задайте их в переменных окружения Netlify (раздел Functions)');
      }
      const body = {
        client_id: clientId,
        client_secret: clientSecret,
        redirect_uri: redirectUri,
        ...('code' in grant
          ? { grant_type: 'authorization_code', code: grant.code }
          : { grant_type: 'refresh_token', refresh_token: grant.refreshToken }),
      };
      // No bearer; ahead of the queue (every request waiting for a slot also waits for this
      // token), in a counted slot: never an 8th request in one of amoCRM's seconds
      // (rate-limit.ts). 400 and 401 are answers here: the grant is refused.
      const res = await http.request<TokenAnswer>({
        method: 'POST', path: '/oauth2/access_token', body, bearer: false, priority: true, answers: [400, 401],
      });
      const data = res.data;
      if (res.status === 400 || res.status === 401) {
        // Revoked/used refresh token, wrong client secret or redirect URI: a person must re-authorize.
        const hint = typeof data?.hint === 'string' ? data.hint.slice(0, 120) : `HTTP ${res.status}`;
        throw needsOperator('code' in grant ? 'auth_code_rejected' : 'refresh_rejected',
          `amoCRM отклонил ${'code' in grant ? 'код авторизации' : 'refresh-токен'}: ${hint}`,
          'авторизуйте интеграцию заново и сохраните токены: npm run amocrm -- exchange-code <код из amoCRM>',
          { status: res.status });
      }
      if (res.status === 200 && data?.access_token && data.refresh_token) {
        return {
          accessToken: data.access_token,
          refreshToken: data.refresh_token,
          expiresAt: new Date(clock.now() + (data.expires_in ?? 86400) * 1000),
        };
      }
      throw retryable('bad_token_response', 'amoCRM вернул ответ без токенов');
    },
  };
}
