// What the doctor reports: one result per check, printed as one line
//   ✅ <check>: <detail>      ⚠️ <check>: <detail>      ❌ <check>: <detail> → <what to do>
// A result never carries a secret (each area reports "set"/"missing" or a length), and
// every line is redacted once more as it is recorded and as it is printed.
import { redact } from '../../log.ts';

/** info: a choice worth knowing about (an optional part switched off), not a problem. */
export type CheckStatus = 'ok' | 'info' | 'warn' | 'fail';

export interface CheckResult {
  status: CheckStatus;
  /** What was checked: a variable name (AMOCRM_STAGE_LESSON_2) or an area (tokens, RLS). */
  check: string;
  detail: string;
  /** What to do; every failure has one. */
  fix?: string;
}

export type Add = (status: CheckStatus, check: string, detail: string, fix?: string) => void;

export const MARK: Record<CheckStatus, string> = { ok: '✅', info: 'ℹ️', warn: '⚠️', fail: '❌' };

/** The one printed line of a result (redacted once more, as a safety net). */
export function formatCheck(r: CheckResult): string {
  const line = `${MARK[r.status]} ${r.check}: ${r.detail}${r.status === 'fail' && r.fix ? ` → ${r.fix}` : ''}`;
  return redact(line);
}

export const hasFailures = (results: CheckResult[]) => results.some((r) => r.status === 'fail');
export const exitCodeOf = (results: CheckResult[]): 0 | 1 => (hasFailures(results) ? 1 : 0);

/** The results of one run and the one way to add to them. */
export function collector(): { results: CheckResult[]; add: Add } {
  const results: CheckResult[] = [];
  const add: Add = (status, check, detail, fix) => {
    results.push({ status, check, detail: redact(detail), ...(fix ? { fix: redact(fix) } : {}) });
  };
  return { results, add };
}

export const MIGRATE = 'apply the migrations in supabase/migrations (supabase db push, or paste them into the SQL editor in order)';
export const REAUTH = 'authorize again and store the tokens: npm run amocrm -- exchange-code <code from amoCRM>';
