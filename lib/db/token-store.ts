// The token store (amocrm.system_settings 'amocrm_tokens'): reads, the refresh lease,
// compare-and-swap of a rotated pair, and the operator's fresh pair. The only module that
// names these database functions.
import type { Db } from './port.ts';

export interface StoredTokens {
  present: boolean;
  kind?: 'oauth' | 'long_lived';
  access_token?: string;
  expires_at?: string | null;
  has_refresh_token?: boolean;
  auth_state?: 'ok' | 'needs_reauth';
  auth_problem?: string | null;
  version?: number;
  refreshing?: boolean;
  updated_at?: string;
}

export type TokenKind = 'oauth' | 'long_lived';

export interface TokenWrite {
  kind: TokenKind;
  accessToken: string;
  refreshToken: string | null;
  expiresAt: Date | null;
}

const writeArgs = (t: TokenWrite) => ({
  p_kind: t.kind, p_access_token: t.accessToken, p_refresh_token: t.refreshToken, p_expires_at: t.expiresAt,
});

/** The token to use now. Never carries the refresh token. */
export const getTokens = (db: Db) => db.rpc<StoredTokens>('amocrm_get_tokens');

/** Seeds the row from the environment only when there is none yet. */
export async function seedTokens(db: Db, t: TokenWrite): Promise<boolean> {
  return (await db.rpc<{ seeded: boolean }>('amocrm_seed_tokens', writeArgs(t))).seeded;
}

/** An operator's fresh pair: repairs the chain and resumes events parked on it. */
export function storeTokens(db: Db, t: TokenWrite) {
  return db.rpc<{ stored: boolean; version: number; resumed_events: number }>('amocrm_store_tokens', writeArgs(t));
}

export interface RefreshLease {
  acquired: boolean;
  version: number;
  /** Only for the holder of the lease. */
  refresh_token?: string;
  kind?: TokenKind;
  auth_state?: 'ok' | 'needs_reauth';
}

export const beginRefresh = (db: Db, holder: string, leaseSeconds: number) =>
  db.rpc<RefreshLease>('amocrm_begin_refresh', { p_holder: holder, p_lease_seconds: leaseSeconds });

/** Stores the rotated pair if the chain is still at `expectedVersion`; releases the lease. */
export function finishRefresh(db: Db, holder: string, expectedVersion: number, pair: { accessToken: string; refreshToken: string; expiresAt: Date }) {
  return db.rpc<{ stored: boolean; version?: number }>('amocrm_finish_refresh', {
    p_holder: holder, p_expected_version: expectedVersion,
    p_access_token: pair.accessToken, p_refresh_token: pair.refreshToken, p_expires_at: pair.expiresAt,
  });
}

/** Gives the lease back; with `problem`, marks the chain broken. became_broken is true once. */
export function abortRefresh(db: Db, holder: string, problem?: string) {
  return db.rpc<{ became_broken: boolean }>('amocrm_abort_refresh', {
    p_holder: holder, p_needs_reauth: problem !== undefined, p_problem: problem,
  });
}

/** Marks the chain broken without the lease (a long-lived token rejected). */
export const markNeedsReauth = (db: Db, problem: string) =>
  db.rpc<{ became_broken: boolean }>('amocrm_mark_needs_reauth', { p_problem: problem });
