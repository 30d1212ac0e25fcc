// Reading a JWT-shaped token without verifying it: only to tell a key's role (config.ts)
// and a token's expiry (the token chain, the doctor, the token commands), never to trust it.

/** The claims of a JWT-shaped token, unverified; undefined when it has none to read. */
export function jwtClaims(token: string): Record<string, unknown> | undefined {
  const payload = token.split('.')[1];
  if (!payload) return undefined;
  try {
    const claims: unknown = JSON.parse(Buffer.from(payload, 'base64url').toString('utf8'));
    return claims && typeof claims === 'object' ? (claims as Record<string, unknown>) : undefined;
  } catch {
    return undefined;
  }
}

/** The `exp` claim of a JWT-shaped token, unverified (we only need the date). */
export function jwtExpiry(token: string): Date | undefined {
  const exp = Number(jwtClaims(token)?.exp);
  return Number.isFinite(exp) && exp > 0 ? new Date(exp * 1000) : undefined;
}
