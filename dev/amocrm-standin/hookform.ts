// The body of an amoCRM account webhook: application/x-www-form-urlencoded with bracketed keys
// in the old API v2 field names (custom_fields, last_modified, date_create, …), as amoCRM's
// webhooks-format page describes ({entity: {action: {0: {fields}}}}) and captured deliveries
// show. Encoded like PHP's http_build_query (brackets percent-encoded, spaces as '+'), which
// is what qs.stringify does with indices and RFC1738.
import qs from 'qs';

import { ACCOUNT } from './hal.ts';
import type { LeadChange } from './state.ts';
import type { HookAction, HookForm, StandinCustomField } from './types.ts';

/** What a hook says about one lead, taken when it changed (the lead may change again before sending). */
export interface LeadSnapshot {
  id: number; name: string; statusId: number; pipelineId: number; oldStatusId: number; oldPipelineId: number;
  price: number; responsibleUserId: number; modifiedUserId: number; createdUserId: number;
  createdAt: number; updatedAt: number; customFields: StandinCustomField[];
}

export function snapshot(change: LeadChange): LeadSnapshot {
  const l = change.lead;
  return {
    id: l.id, name: l.name, statusId: l.statusId, pipelineId: l.pipelineId,
    oldStatusId: change.before.statusId, oldPipelineId: change.before.pipelineId,
    price: l.price, responsibleUserId: l.responsibleUserId, modifiedUserId: change.userId, createdUserId: l.createdBy,
    createdAt: l.createdAt, updatedAt: change.at,
    customFields: l.customFields.map((f) => ({ ...f, values: f.values.map((v) => ({ ...v })) })),
  };
}

/** One lead's fields in the order captured deliveries list them. */
function leadFields(s: LeadSnapshot, action: HookAction, form: HookForm): Record<string, unknown> {
  if (action === 'delete') return { id: s.id }; // a deletion carries the id only
  if (action === 'status' && form === 'short') {
    return { id: s.id, status_id: s.statusId, pipeline_id: s.pipelineId, old_status_id: s.oldStatusId, old_pipeline_id: s.oldPipelineId };
  }
  const fields: Record<string, unknown> = { id: s.id, name: s.name, status_id: s.statusId };
  if (action === 'status') fields.old_status_id = s.oldStatusId;
  Object.assign(fields, {
    price: s.price, responsible_user_id: s.responsibleUserId, last_modified: s.updatedAt,
    modified_user_id: s.modifiedUserId, created_user_id: s.createdUserId, date_create: s.createdAt,
    pipeline_id: s.pipelineId,
  });
  if (action === 'status') fields.old_pipeline_id = s.oldPipelineId;
  fields.account_id = ACCOUNT.id;
  if (s.customFields.length > 0) {
    fields.custom_fields = s.customFields.map((f) => ({
      id: f.id, name: f.name,
      values: f.values.map((v) => (v.enum === undefined ? { value: v.value } : { value: v.value, enum: v.enum })),
    }));
  }
  fields.created_at = s.createdAt;
  fields.updated_at = s.updatedAt;
  return fields;
}

/** The form body of one delivery: several leads of one action, then the account. */
export function hookBody(action: HookAction, leads: LeadSnapshot[], form: HookForm): string {
  const account: Record<string, unknown> = { subdomain: ACCOUNT.subdomain, id: ACCOUNT.id };
  if (form === 'full') account._links = { self: `https://${ACCOUNT.subdomain}.amocrm.ru` };
  const body = { leads: { [action]: leads.map((s) => leadFields(s, action, form)) }, account };
  return qs.stringify(body, { arrayFormat: 'indices', format: 'RFC1738' });
}
