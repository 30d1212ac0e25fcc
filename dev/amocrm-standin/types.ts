// The stand-in's public types (exported from index.ts) and the internal request/reply shapes
// its modules pass to one another.
import type http from 'node:http';
import type { StandinNote, StandinTask } from './notes.ts';

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
  /** How long a webhook delivery may take before it counts as failed (amoCRM waits at most 2 s). Real time. Default 2000. */
  hookTimeoutMs?: number;
  /**
   * Delays before the 2nd and 3rd attempt of a failed delivery, on the stand-in's clock:
   * `invalid` for no answer below 100 or ≥ 300 (default 5 and 15 minutes), `server` for
   * 499 and 5xx, a timeout included (default 15 minutes and 1 hour).
   */
  hookRetryDelaysMs?: { invalid?: number[]; server?: number[] };
  /** A hook is disabled once more than this many invalid answers came within 2 hours (default 100). */
  hookDisableAfter?: number;
  /**
   * Which status_lead form to send: 'full' (default; every field captures show, plus
   * old_pipeline_id) or 'short' (only id, status_id, pipeline_id, old_status_id, old_pipeline_id
   * and account[id|subdomain], as other captures show: no name, no modification time).
   */
  hookForm?: HookForm;
}
export type HookForm = 'full' | 'short';
export interface StandinCustomField { id: number; name: string; values: { value: string; enum?: number }[] }
export interface StandinContact { id: number; name: string; emails: string[]; leadIds: number[]; updatedAt?: number }
export interface StandinLead {
  id: number; name: string; pipelineId: number; statusId: number; updatedAt: number; isDeleted?: boolean;
  price?: number; // default 0
  responsibleUserId?: number; // default the token's user (123)
  createdBy?: number; // default the token's user (123)
  customFields?: StandinCustomField[]; // sent in hooks as custom_fields (old v2 names)
  updatedBy?: number; // read only: who changed it last
}
/** An event of the feed (GET /api/v4/events), as amoCRM renders it minus _links/_embedded. */
export interface StandinEvent {
  id: string; type: 'lead_status_changed' | 'lead_deleted'; entity_id: number; entity_type: 'lead';
  created_by: number; created_at: number; account_id: number;
  value_before: { lead_status: { id: number; pipeline_id: number } }[];
  value_after: { lead_status: { id: number; pipeline_id: number } }[];
}
/** A webhook subscription (GET /api/v4/webhooks renders these, snake_cased). */
export interface StandinWebhook { id: number; destination: string; settings: string[]; sort: number; disabled: boolean; createdBy: number; createdAt: number; updatedAt: number }
/** What a delivery reports: add_lead → 'add', update_lead → 'update', status_lead → 'status', delete_lead → 'delete'. */
export type HookAction = 'add' | 'update' | 'status' | 'delete';
/**
 * One attempt to deliver a hook. `at` is the stand-in's clock (ms) when it was sent; `status`
 * the answer's code, 0 when none came (connection failed, or dropped), 499 when amoCRM's 2 s
 * ran out; `ok` for 100–299. A dropped delivery (hooksOff, dropNextHooks) is recorded once with
 * dropped: true and never sent. `attempt` counts 1, 2, 3 for one delivery (`deliveryId`).
 */
export interface HookAttempt {
  deliveryId: number; attempt: number; hookId: number; destination: string; action: HookAction; leadIds: number[];
  requestId: string; at: number; status: number; ok: boolean; error?: 'timeout' | 'network'; dropped?: true;
  body: string; // the form body as sent
}
/** How a manager's call names its author (default MANAGER_USER_ID). */
export interface ManagerOptions { userId?: number }
export interface StandinPipeline { id: number; name: string; statuses: { id: number; name: string; sort: number; type?: 0 | 1 }[] }
export type Fault =
  | { status: number; body?: unknown; headers?: Record<string, string> } // answer this instead
  | { kind: 'timeout' } // never answer (hold the socket until close / 60 s)
  | { kind: 'reset' } // destroy the socket without answering
  | { kind: 'after'; status: number } // perform the real operation, then answer `status` (e.g. 'response lost' on refresh: rotate, then 502)
  | { kind: 'late'; applyAfterMs: number }; // never answer, and perform the operation this much later (taken, then applied late)
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
  setLeadStatus(id: number, statusId: number): void; // a sales manager moving a deal by hand (managerMove without options)
  /**
   * A sales manager moves the deal by hand (sends the hooks, records the event). Without
   * pipelineId: the deal's pipeline when it has the stage, else the pipeline that has it.
   * Throws for an unknown or deleted lead and for a stage the pipeline does not have.
   */
  managerMove(leadId: number, to: { statusId: number; pipelineId?: number; userId?: number }): StandinLead;
  managerWin(leadId: number, opts?: ManagerOptions): StandinLead; // to 142 in its pipeline
  managerLose(leadId: number, opts?: ManagerOptions): StandinLead; // to 143 in its pipeline
  managerDelete(leadId: number, opts?: ManagerOptions): StandinLead; // into the trash (delete_lead, lead_deleted)

  // --- account webhooks (also served at /api/v4/webhooks) ---
  webhooks(): StandinWebhook[]; // copies, in the order GET lists them
  /** Subscribes `destination` (or updates the settings of its existing hook; `disabled` stays). Throws on bad input or the 101st hook. */
  subscribe(destination: string, settings: string[]): StandinWebhook;
  unsubscribe(destination: string): boolean; // false when there was no such hook
  /** An admin re-enabling a disabled hook by hand (amoCRM never does it by itself). */
  enableHook(destination: string): void;
  /** While off, every delivery is dropped (recorded as dropped, never sent, never retried). */
  hooksOff(): void;
  hooksOn(): void;
  /** The next n deliveries (of `action` only, when given) go missing: recorded as dropped, never sent. */
  dropNextHooks(n: number, action?: HookAction): void;
  setHookForm(form: HookForm): void;
  /** Every delivery attempt, in order (live array; resetCounts does not clear it). */
  hookAttempts: HookAttempt[];
  /** Resolves when no delivery is in flight or due on the stand-in's clock (runs the due retries first). */
  hooksSettled(): Promise<void>;
  /** false: every token answers 403 on /api/v4/webhooks, as a non-admin's token does. Default true. */
  setAdminRights(admin: boolean): void;
  /** The events feed's records, oldest first (copies). */
  leadEvents(): StandinEvent[];
  /** Notes added through the API (of one lead), oldest first (copies): what a manager sees in the deal's timeline. */
  notes(leadId?: number): StandinNote[];
  /** Tasks added through the API (of one lead), oldest first (copies). */
  tasks(leadId?: number): StandinTask[];
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
