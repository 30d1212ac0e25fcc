// amoCRM's account webhooks as the sync reads them (the stand-in writes the same form in
// dev/amocrm-standin/hookform.ts): a form body with bracketed keys in the old v2 field
// names (leads[status][0][status_id]=…, account[subdomain]=…), parsed with qs into objects
// and validated with zod into typed lead changes. Unsigned: the endpoint's URL secret and
// the account check are the authentication (http/crm-events.ts).
import qs from 'qs';
import { z } from 'zod';

export type LeadAction = 'status' | 'update' | 'add' | 'delete' | 'restore';
const ACTIONS: LeadAction[] = ['status', 'update', 'add', 'delete', 'restore'];

/** One lead change, as amocrm.apply_lead_change takes it (snake_case, unix seconds). */
export interface LeadChange {
  lead_id: number;
  action: LeadAction;
  pipeline_id?: number;
  status_id?: number;
  old_pipeline_id?: number;
  old_status_id?: number;
  modified_at?: number;
  modified_by?: number;
  name?: string;
}

export interface ParsedHook {
  account: { id?: number; subdomain?: string };
  changes: LeadChange[];
}

const MAX_ID = Number.MAX_SAFE_INTEGER;
const id = z.string().regex(/^\d{1,16}$/, 'must be a numeric id').transform(Number).refine((n) => n > 0 && n <= MAX_ID, 'is out of range');
const unix = z.string().regex(/^\d{1,11}$/, 'must be unix seconds').transform(Number);

const leadItem = z.object({
  id,
  status_id: id.optional(),
  pipeline_id: id.optional(),
  old_status_id: id.optional(),
  old_pipeline_id: id.optional(),
  last_modified: unix.optional(),
  updated_at: unix.optional(),
  modified_user_id: z.string().regex(/^\d{1,16}$/).transform(Number).optional(),
  // PostgreSQL text cannot hold a NUL: refuse it here, so the delivery is flagged, not lost.
  name: z.string().max(10_000).refine((v) => !v.includes('\u0000'), 'contains a NUL character').optional(),
});

const account = z.object({
  id: id.optional(),
  subdomain: z.string().regex(/^[a-z0-9-]{1,63}$/i, 'must be an amoCRM subdomain').optional(),
}).optional();

export class HookContentError extends Error {
  override readonly name = 'HookContentError';
}

/** qs turns long or sparse index lists into objects ({"0":…,"25":…}): both mean a list. */
function items(value: unknown): unknown[] {
  if (value === undefined) return [];
  if (Array.isArray(value)) return value;
  if (value && typeof value === 'object') return Object.values(value);
  throw new HookContentError('expected a list of leads');
}

/**
 * Parses one delivery. Throws HookContentError with a precise message for content it
 * cannot use (the endpoint keeps such a delivery and flags it; it never answers amoCRM
 * with an error for it).
 */
export function parseHookBody(body: string): ParsedHook {
  const trimmed = body.trimStart();
  if (trimmed.startsWith('{') || trimmed.startsWith('[')) throw new HookContentError('expected a form body (application/x-www-form-urlencoded), got JSON');
  // Duplicate keys become arrays, which the schema then refuses where a scalar belongs.
  const form = qs.parse(body, { depth: 6, arrayLimit: 1000, parameterLimit: 20_000, allowPrototypes: false, allowDots: false });
  const parsedAccount = account.safeParse(form.account);
  if (!parsedAccount.success) throw new HookContentError(`account: ${describe(parsedAccount.error)}`);
  const leads = form.leads;
  if (leads !== undefined && (typeof leads !== 'object' || leads === null || Array.isArray(leads))) {
    throw new HookContentError('leads: expected leads[<action>][<n>][<field>] keys');
  }
  const changes: LeadChange[] = [];
  for (const action of ACTIONS) {
    const list = items((leads as Record<string, unknown> | undefined)?.[action]);
    list.forEach((raw, n) => {
      const parsed = leadItem.safeParse(raw);
      if (!parsed.success) throw new HookContentError(`leads[${action}][${n}]: ${describe(parsed.error)}`);
      const l = parsed.data;
      changes.push(strip({
        lead_id: l.id, action, pipeline_id: l.pipeline_id, status_id: l.status_id,
        old_pipeline_id: l.old_pipeline_id, old_status_id: l.old_status_id,
        modified_at: l.updated_at ?? l.last_modified, modified_by: l.modified_user_id, name: l.name,
      }));
    });
  }
  return { account: parsedAccount.data ?? {}, changes };
}

function describe(error: z.ZodError): string {
  const issue = error.issues[0]!;
  return `${issue.path.join('.') || 'value'} ${issue.message}`;
}

const strip = <T extends object>(o: T): T => Object.fromEntries(Object.entries(o).filter(([, v]) => v !== undefined)) as T;
