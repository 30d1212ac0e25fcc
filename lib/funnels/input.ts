// A funnels file as an operator writes it (the CLI's file, the console's edit box): either
// `{"funnels": [...], "note": "..."}` or the bare list of funnels. Its shape is model.ts's
// schema; every shape problem is listed at once, each with the place it is at, so the
// whole file can be fixed in one go before the checks against amoCRM run.
import { z } from 'zod';
import { funnelsSchema, type Funnel } from './model.ts';

export type FunnelsInput = { funnels: Funnel[]; note?: string } | { problems: string[] };

/** At most this many shape problems are listed (a wrong file can have thousands). */
const MAX_PROBLEMS = 20;

const fileSchema = z.object({ funnels: z.unknown(), note: z.string().trim().max(500).optional() }).strict();

/** `steps[1].task.text` for the path zod gives. */
function place(path: readonly PropertyKey[]): string {
  return path.reduce<string>((at, part) => (typeof part === 'number' ? `${at}[${part}]` : `${at}${at ? '.' : ''}${String(part)}`), '');
}

export function parseFunnelsText(text: string): FunnelsInput {
  if (!text.trim()) return { problems: ['empty: expected JSON, {"funnels": [...]}'] };
  let value: unknown;
  try {
    value = JSON.parse(text);
  } catch (err) {
    return { problems: [`not JSON: ${(err as Error).message.slice(0, 200)}`] };
  }
  return parseFunnelsValue(value);
}

export function parseFunnelsValue(value: unknown): FunnelsInput {
  let list = value;
  let note: string | undefined;
  if (!Array.isArray(value)) {
    const file = fileSchema.safeParse(value);
    if (!file.success) return { problems: ['expected {"funnels": [...], "note": "…"} or a list of funnels'] };
    list = file.data.funnels;
    note = file.data.note || undefined;
  }
  const parsed = funnelsSchema.safeParse(list);
  if (!parsed.success) {
    const problems = parsed.error.issues.slice(0, MAX_PROBLEMS).map((i) => `funnels${i.path.length ? place(i.path).replace(/^(?!\[)/, '.') : ''}: ${i.message}`);
    return { problems };
  }
  return { funnels: parsed.data as Funnel[], ...(note ? { note } : {}) };
}
