// The stand-in's public types (exported from index.ts) and the internal request/reply shapes
// its modules pass to one another.
import type http from 'node:http';

export interface StandinOptions {
  port?: number; // 0 = random (default)
  clientId?: string; // default 'standin-client-id'
  clientSecret?: string; // default 'standin-client-secret'
  redirectUri?: string; // default 'https://example.test/oauth'
  accessTokenTtlSec?: number; // default 86400
  ratePerSecond?: number; // default 7 (per integration; sliding 1 s window)
  blockAfterViolations?: number; // default 0 = never block; N>0: after N 429s within 60 s, answer 403 to everything until reset()
  latencyMs?: [number, number]; // uniform random delay before answering, default [0, 0]
  /**
   * The stand-in's clock in ms (default Date.now): the rate window, the block's 60 s,
   * token and code expiry, updated_at and RecordedRequest.at all read it. Tests pass a
   * clock they move by hand, so limits are exact whatever the machine's load.
   */
  now?: () => number;
}
export interface StandinContact { id: number; name: string; emails: string[]; leadIds: number[]; updatedAt?: number }
export interface StandinLead { id: number; name: string; pipelineId: number; statusId: number; updatedAt: number; isDeleted?: boolean }
export interface StandinPipeline { id: number; name: string; statuses: { id: number; name: string; sort: number; type?: 0 | 1 }[] }
export type Fault =
  | { status: number; body?: unknown; headers?: Record<string, string> } // answer this instead
  | { kind: 'timeout' } // never answer (hold the socket until close / 60 s)
  | { kind: 'reset' } // destroy the socket without answering
  | { kind: 'after'; status: number }; // perform the real operation, then answer `status` (e.g. 'response lost' on refresh: rotate, then 502)
/** `at` is the stand-in's clock when the request arrived; `status` is 0 while unanswered or when never answered (timeout/reset). */
export interface RecordedRequest { method: string; path: string; query: string; at: number; status: number; auth?: 'ok' | 'missing' | 'invalid' }
export interface StandinCounts { total: number; byRoute: Record<string, number>; tooMany: number; unauthorized: number; refreshes: number; patches: number }
export interface AmoStandin {
  url: string; // e.g. http://127.0.0.1:43123 (base URL; API under /api/v4, OAuth under /oauth2)
  close(): Promise<void>;
  addPipeline(p: StandinPipeline): void;
  addContact(c: StandinContact): void;
  addLead(l: StandinLead): void;
  lead(id: number): StandinLead | undefined; // current state (a copy; tests assert on it)
  setLeadStatus(id: number, statusId: number): void; // a sales manager moving a deal by hand
  /** Issues a fresh token pair as if an authorization code had been exchanged; returns it. */
  issueTokens(): { access_token: string; refresh_token: string; expires_in: number };
  /** An authorization code valid 20 min, single use, for POST /oauth2/access_token grant_type=authorization_code. */
  issueAuthCode(): string;
  expireAccessTokens(): void; // all current access tokens (long-lived ones included) now answer 401
  revokeRefreshTokens(): void; // all current refresh tokens now answer 401 'Token has been revoked'
  issueLongLivedToken(validSec: number): string; // a JWT-shaped token with exp claim, no refresh token
  /** Faults for the next matching requests: route is e.g. 'POST /oauth2/access_token', 'GET /api/v4/contacts', 'PATCH /api/v4/leads/:id', or '*'. times defaults to 1. */
  inject(route: string, fault: Fault, times?: number): void;
  clearFaults(): void;
  requests: RecordedRequest[]; // every request received, in order (including 429/401 answers)
  /**
   * Since the last resetCounts(): total requests, requests per route key, 429 and 401 answers,
   * refresh-token rotations actually performed (a lost 'after' response still counts), and
   * PATCH requests to /api/v4/leads[/:id] that were applied (a batch counts once).
   */
  counts(): StandinCounts;
  /** Zeroes the counters and empties `requests` (in place). */
  resetCounts(): void;
  reset(): void; // unblock, clear faults and the rate-limit window (data and tokens stay)
  setLatency(range: [number, number]): void;
}

// --- internal ----------------------------------------------------------------------------------

/** What a request gets: an answer (a string body is sent raw as text/html), or no answer at all. */
export type Reply =
  | { status: number; body?: unknown; headers?: Record<string, string> }
  | { kind: 'timeout' }
  | { kind: 'reset' };

export type Answer = Extract<Reply, { status: number }>;

/** One request as the handlers see it. */
export interface Ctx {
  method: string;
  path: string;
  route: string; // 'GET /api/v4/leads/:id' for known paths, 'GET /the/path' otherwise
  params: string[];
  search: URLSearchParams;
  headers: http.IncomingHttpHeaders;
  body: Buffer;
  tooLarge: boolean;
  record: RecordedRequest;
}
