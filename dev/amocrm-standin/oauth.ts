// amoCRM's OAuth 2.0: the token endpoint (authorization code and refresh grants, single-use
// refresh tokens), bearer checks for /api/v4, and the issuing helpers tests use.
// Tokens are obviously fake (`standin-at-…`, `standin-rt-…`) and never leave these maps
// except through the issuing functions and the token endpoint's answer.
import { randomBytes } from 'node:crypto';
import type http from 'node:http';
import { ACCOUNT } from './hal.ts';
import type { Answer, Ctx } from './types.ts';

const AUTH_CODE_TTL_MS = 20 * 60 * 1000;
const REFRESH_TTL_MS = 90 * 24 * 3600 * 1000;

export const hex = (n: number) => randomBytes(n).toString('hex');

/** amoCRM's OAuth errors: problem+json with a `hint` (title and detail in Russian on RU accounts). */
function oauthProblem(status: number, hint: string): Answer {
  return {
    status,
    body: {
      hint, title: 'Некорректный запрос', status,
      type: 'https://developers.amocrm.ru/v3/errors/OAuthProblemJson',
      detail: 'В запросе отсутствует ряд параметров или параметры невалидны',
    },
  };
}

export interface OAuthOptions { clientId: string; clientSecret: string; redirectUri: string; accessTtlSec: number; now: () => number; onRefresh: () => void }

export function createOAuth({ clientId, clientSecret, redirectUri, accessTtlSec, now, onRefresh }: OAuthOptions) {
  const accessTokens = new Map<string, { expiresAt: number }>();
  const refreshTokens = new Map<string, { state: 'valid' | 'used' | 'revoked'; expiresAt: number }>();
  const authCodes = new Map<string, { used: boolean; expiresAt: number }>();

  function newPair() {
    const access_token = `standin-at-${hex(24)}`;
    const refresh_token = `standin-rt-${hex(32)}`;
    accessTokens.set(access_token, { expiresAt: now() + accessTtlSec * 1000 });
    refreshTokens.set(refresh_token, { state: 'valid', expiresAt: now() + REFRESH_TTL_MS });
    return { token_type: 'Bearer' as const, expires_in: accessTtlSec, access_token, refresh_token };
  }

  function readParams(ctx: Ctx): Record<string, unknown> | undefined {
    const text = ctx.body.toString('utf8').trim();
    if (!String(ctx.headers['content-type'] ?? '').includes('json') && !text.startsWith('{')) return Object.fromEntries(new URLSearchParams(text));
    try {
      const value: unknown = JSON.parse(text);
      return typeof value === 'object' && value !== null && !Array.isArray(value) ? (value as Record<string, unknown>) : undefined;
    } catch {
      return undefined;
    }
  }

  return {
    /** POST /oauth2/access_token */
    tokenEndpoint(ctx: Ctx): Answer {
      const params = readParams(ctx);
      if (!params) return oauthProblem(400, 'Check the `grant_type` parameter');
      const str = (k: string) => (typeof params[k] === 'string' ? (params[k] as string) : undefined);
      const grant = str('grant_type');
      if (!grant) return oauthProblem(400, 'Check the `grant_type` parameter');
      if (!str('client_id')) return oauthProblem(400, 'Check the `client_id` parameter');
      if (str('client_id') !== clientId || str('client_secret') !== clientSecret) return oauthProblem(401, 'Client authentication failed');
      const redirect = str('redirect_uri');
      if (redirect !== undefined && redirect !== redirectUri) return oauthProblem(400, 'Redirect URI mismatch');

      if (grant === 'authorization_code') {
        const code = str('code');
        if (!code) return oauthProblem(400, 'Check the `code` parameter');
        if (redirect === undefined) return oauthProblem(400, 'Check the `redirect_uri` parameter');
        const entry = authCodes.get(code);
        if (!entry) return oauthProblem(400, 'Cannot decrypt the authorization code');
        if (entry.used) return oauthProblem(400, 'Authorization code has been revoked');
        if (entry.expiresAt <= now()) return oauthProblem(400, 'Authorization code has expired');
        entry.used = true;
        return { status: 200, body: newPair() };
      }
      if (grant === 'refresh_token') {
        const token = str('refresh_token');
        if (!token) return oauthProblem(400, 'Check the `refresh_token` parameter');
        const entry = refreshTokens.get(token);
        if (!entry || entry.state !== 'valid') return oauthProblem(401, 'Token has been revoked');
        if (entry.expiresAt <= now()) return oauthProblem(401, 'Token has expired');
        entry.state = 'used'; // single use: dies now; the old access token lives on until its own expiry
        onRefresh();
        return { status: 200, body: newPair() };
      }
      return oauthProblem(400, 'The authorization grant type is not supported by the authorization server.');
    },

    /** How a request's Authorization header fares against the issued access tokens. */
    verdict(headers: http.IncomingHttpHeaders): 'ok' | 'missing' | 'invalid' {
      const h = headers.authorization;
      if (h === undefined || h.trim() === '') return 'missing';
      const m = /^Bearer\s+(\S+)\s*$/i.exec(h);
      if (!m) return 'invalid';
      const t = accessTokens.get(m[1] as string);
      return t && t.expiresAt > now() ? 'ok' : 'invalid';
    },

    issueTokens() {
      const { access_token, refresh_token, expires_in } = newPair();
      return { access_token, refresh_token, expires_in };
    },

    issueAuthCode() {
      const code = `standin-code-${hex(16)}`;
      authCodes.set(code, { used: false, expiresAt: now() + AUTH_CODE_TTL_MS });
      return code;
    },

    expireAccessTokens() {
      const past = now() - 1;
      for (const t of accessTokens.values()) t.expiresAt = Math.min(t.expiresAt, past);
    },

    revokeRefreshTokens() {
      for (const t of refreshTokens.values()) t.state = 'revoked';
    },

    issueLongLivedToken(validSec: number) {
      const iat = Math.floor(now() / 1000);
      const payload = {
        iss: 'amocrm-standin', aud: clientId, jti: hex(16), iat, nbf: iat, exp: iat + validSec,
        account_id: ACCOUNT.id, api_domain: 'api-b.amocrm.ru', scopes: ['crm'], long_lived: true,
      };
      // Not 'eyJ…' at the start: only the middle segment is base64url JSON (with exp).
      const token = `standin.${Buffer.from(JSON.stringify(payload)).toString('base64url')}.sig`;
      accessTokens.set(token, { expiresAt: (iat + validSec) * 1000 });
      return token;
    },
  };
}

export type StandinOAuth = ReturnType<typeof createOAuth>;
