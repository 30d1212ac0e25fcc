// What the database should hold, read from supabase/migrations at run time (the doctor is
// a CLI run from the repository): every public.amocrm_* function with its argument types,
// every amocrm.* table and every amocrm_* trigger the migrations create, less what a later
// statement drops. The files are read in name order, as they are applied, and no file is
// known by name: folding or adding migrations changes what is expected, not this code.
import { readdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';

export const MIGRATIONS_DIR = fileURLToPath(new URL('../../../supabase/migrations', import.meta.url));

/** Where an expected object is created: the migration file's name. */
export interface Expected {
  /** 'amocrm_claim_due(text, integer)' → file. */
  functions: Map<string, string>;
  /** 'sync_events' (in schema amocrm) → file. */
  tables: Map<string, string>;
  /** 'public.lesson_progress amocrm_lesson_completed' → file. */
  triggers: Map<string, string>;
}

const STATEMENTS = new RegExp([
  String.raw`\b(create)\s+(?:or\s+replace\s+)?function\s+public\.(amocrm_\w+)\s*\(`,
  String.raw`\b(drop)\s+function\s+(?:if\s+exists\s+)?public\.(amocrm_\w+)\s*(\()?`,
  String.raw`\b(create)\s+table\s+(?:if\s+not\s+exists\s+)?amocrm\.(\w+)`,
  String.raw`\b(drop)\s+table\s+(?:if\s+exists\s+)?amocrm\.(\w+)`,
  String.raw`\b(create)\s+(?:or\s+replace\s+)?(?:constraint\s+)?trigger\s+(amocrm_\w+)\s[^;]*?\bon\s+(\w+\.\w+)`,
  String.raw`\b(drop)\s+trigger\s+(?:if\s+exists\s+)?(amocrm_\w+)\s+on\s+(\w+\.\w+)`,
].join('|'), 'gi');

/** The expectations of every *.sql in `dir`, in the order they are applied. */
export function expectedSchema(dir = MIGRATIONS_DIR): Expected {
  const expected: Expected = { functions: new Map(), tables: new Map(), triggers: new Map() };
  const files = readdirSync(dir).filter((f) => f.endsWith('.sql')).sort();
  for (const file of files) apply(expected, file, readFileSync(join(dir, file), 'utf8').replace(/--[^\n]*/g, ''));
  return expected;
}

function apply(expected: Expected, file: string, sql: string): void {
  for (const m of sql.matchAll(STATEMENTS)) {
    const at = m.index + m[0].length;
    if (m[1]) { // create function
      expected.functions.set(signature(m[2]!, argumentsAt(sql, at), true), file);
    } else if (m[3]) { // drop function: one overload, or every one of that name
      if (m[5]) expected.functions.delete(signature(m[4]!, argumentsAt(sql, at), false));
      else for (const key of [...expected.functions.keys()]) if (key.startsWith(`${m[4]}(`)) expected.functions.delete(key);
    } else if (m[6]) expected.tables.set(m[7]!, file);
    else if (m[8]) expected.tables.delete(m[9]!);
    else if (m[10]) expected.triggers.set(`${m[12]} ${m[11]}`, file);
    else if (m[13]) expected.triggers.delete(`${m[15]} ${m[14]}`);
  }
}

/** The text between the parenthesis just before `at` and the one that closes it. */
function argumentsAt(sql: string, at: number): string {
  let depth = 1;
  let quoted = false;
  for (let i = at; i < sql.length; i++) {
    const c = sql[i];
    if (c === "'") quoted = !quoted;
    else if (!quoted && c === '(') depth++;
    else if (!quoted && c === ')' && --depth === 0) return sql.slice(at, i);
  }
  return sql.slice(at);
}

/** Splits at the commas outside parentheses and quotes. */
function topLevel(list: string): string[] {
  const parts: string[] = [];
  let depth = 0;
  let quoted = false;
  let start = 0;
  for (let i = 0; i < list.length; i++) {
    const c = list[i];
    if (c === "'") quoted = !quoted;
    else if (!quoted && c === '(') depth++;
    else if (!quoted && c === ')') depth--;
    else if (!quoted && depth === 0 && c === ',') {
      parts.push(list.slice(start, i));
      start = i + 1;
    }
  }
  parts.push(list.slice(start));
  return parts.map((p) => p.trim()).filter(Boolean);
}

/** Words a type starts with that take more words (so the first word is not a parameter name). */
const TYPE_WORDS = new Set(['double', 'timestamp', 'time', 'character', 'bit', 'interval', 'national']);
const ALIASES: Record<string, string> = {
  int: 'integer', int4: 'integer', int8: 'bigint', int2: 'smallint', bool: 'boolean', float8: 'double precision',
  float4: 'real', decimal: 'numeric', varchar: 'character varying', timestamptz: 'timestamp with time zone',
  timestamp: 'timestamp without time zone', timetz: 'time with time zone', time: 'time without time zone',
};

/** 'name(type, type)' as PostgreSQL writes the argument types (IN, INOUT and VARIADIC ones; no names, no defaults). */
function signature(name: string, args: string, named: boolean): string {
  const types: string[] = [];
  for (const arg of topLevel(args)) {
    let words = arg.replace(/\s+default\s[\s\S]*$/i, '').replace(/\s*=[\s\S]*$/, '').trim().split(/\s+/);
    const mode = /^(in|out|inout|variadic)$/i.test(words[0]!) ? words.shift()!.toLowerCase() : 'in';
    if (mode === 'out') continue;
    if (named && words.length > 1 && !TYPE_WORDS.has(words[0]!.toLowerCase())) words = words.slice(1);
    types.push(normalType(words.join(' ')));
  }
  return `${name}(${types.join(', ')})`;
}

function normalType(type: string): string {
  const text = type.toLowerCase().replace(/\s*\([^)]*\)/g, '').replace(/\s+/g, ' ').trim();
  const array = text.match(/(\[\])+$/)?.[0] ?? '';
  const base = text.slice(0, text.length - array.length).trim();
  return `${ALIASES[base] ?? base}${array}`;
}
