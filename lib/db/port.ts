// The one narrow port between the sync's logic and its database: "call this SQL function
// with these named arguments". Every amocrm_* function returns jsonb, so all adapters
// (supabase-js in production, PGlite and pg locally) hand back the same parsed value.

export type RpcArgs = Record<string, unknown>;

export interface Db {
  rpc<T = unknown>(fn: string, args?: RpcArgs): Promise<T>;
}

/** A database call failed. `code` is the SQLSTATE or PostgREST code when known. */
export class DbError extends Error {
  override readonly name = 'DbError';
  constructor(readonly fn: string, message: string, readonly code?: string) {
    super(`database call ${fn} failed: ${message}`);
  }
}

const IDENT = /^[a-z_][a-z0-9_]*$/;

/**
 * Builds `select public.fn(p_a => $1, ...) as result`, PostgREST's named-argument call.
 * Undefined arguments are left out so the function's defaults apply, as PostgREST does.
 */
export function buildRpcSql(fn: string, args: RpcArgs = {}): { text: string; values: unknown[] } {
  if (!IDENT.test(fn)) throw new DbError(fn, 'invalid function name');
  const names: string[] = [];
  const values: unknown[] = [];
  for (const [name, value] of Object.entries(args)) {
    if (value === undefined) continue;
    if (!IDENT.test(name)) throw new DbError(fn, `invalid argument name ${name}`);
    values.push(toSqlValue(value));
    names.push(`${name} => $${values.length}`);
  }
  return { text: `select public.${fn}(${names.join(', ')}) as result`, values };
}

function toSqlValue(value: unknown): unknown {
  if (value instanceof Date) return value.toISOString();
  // As PostgREST does: a list of objects can only be a jsonb argument; a list of scalars
  // is a PostgreSQL array (text[], bigint[]). An empty list is ambiguous: pass null.
  if (Array.isArray(value) && value.some((item) => item !== null && typeof item === 'object')) return JSON.stringify(value);
  if (Array.isArray(value)) return toPgArrayLiteral(value);
  if (value !== null && typeof value === 'object') return JSON.stringify(value);
  return value;
}

// Arrays go as text literals ('{a,b}') so both drivers pass them the same way.
function toPgArrayLiteral(items: unknown[]): string {
  const quoted = items.map((item) =>
    item === null ? 'NULL' : `"${String(item).replace(/\\/g, '\\\\').replace(/"/g, '\\"')}"`,
  );
  return `{${quoted.join(',')}}`;
}
