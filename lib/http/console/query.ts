// The console's inputs live in the query string (so a refresh or a shared link keeps
// them). Each is checked here; a bad one is a 400 that names it and says what it takes.
import { EVENT_STATUSES } from './words.ts';

export class ConsoleInputError extends Error {
  override readonly name = 'ConsoleInputError';
  constructor(readonly field: string, message: string) {
    super(`${field}: ${message}`);
  }
}

export const BASE = '/api/amocrm/console';

const HOUR = 3_600_000;
const DAY = 24 * HOUR;
export const PERIOD_PRESETS: Record<string, { ms: number; label: string }> = {
  '24h': { ms: DAY, label: '24 часа' },
  '7d': { ms: 7 * DAY, label: '7 дней' },
  '30d': { ms: 30 * DAY, label: '30 дней' },
  '90d': { ms: 90 * DAY, label: '90 дней' },
};
const MAX_SPAN_MS = 366 * DAY;

export interface Period {
  from: string;
  to: string;
  /** The preset chosen, or 'custom' for from/to. */
  preset: string;
  /** Values for the form's date inputs (UTC days; `to` inclusive). */
  fromDay: string;
  toDay: string;
}

const day = (ms: number) => new Date(ms).toISOString().slice(0, 10);

function instant(field: 'from' | 'to', text: string): number {
  if (/^\d{4}-\d{2}-\d{2}$/.test(text)) {
    const ms = Date.parse(`${text}T00:00:00Z`);
    // A day given as `to` includes that day.
    if (Number.isFinite(ms)) return field === 'to' ? ms + DAY : ms;
  } else if (/^\d{4}-\d{2}-\d{2}T[\d:.]+(Z|[+-]\d{2}:?\d{2})$/.test(text)) {
    const ms = Date.parse(text);
    if (Number.isFinite(ms)) return ms;
  }
  throw new ConsoleInputError(field, 'ожидается дата ГГГГ-ММ-ДД (UTC) или время ISO, например 2026-12-01 или 2026-12-01T09:00:00Z');
}

/** The period from `period` (24h, 7d, 30d, 90d) or from/to; `fallback` when none is given. */
export function parsePeriod(params: URLSearchParams, nowMs: number, fallback = '7d'): Period {
  const fromText = params.get('from')?.trim();
  const toText = params.get('to')?.trim();
  if (fromText || toText) {
    const to = toText ? instant('to', toText) : nowMs;
    const from = fromText ? instant('from', fromText) : to - 7 * DAY;
    if (from >= to) throw new ConsoleInputError('to', 'конец периода должен быть позже начала');
    if (to - from > MAX_SPAN_MS) throw new ConsoleInputError('from', 'период не длиннее 366 дней');
    return { from: new Date(from).toISOString(), to: new Date(to).toISOString(), preset: 'custom', fromDay: day(from), toDay: day(to - 1) };
  }
  const preset = params.get('period')?.trim() || fallback;
  const chosen = PERIOD_PRESETS[preset];
  if (!chosen) throw new ConsoleInputError('period', `одно из ${Object.keys(PERIOD_PRESETS).join(', ')} (или from/to)`);
  const from = nowMs - chosen.ms;
  return { from: new Date(from).toISOString(), to: new Date(nowMs).toISOString(), preset, fromDay: day(from), toDay: day(nowMs) };
}

/** Events per hour for periods up to three days, per day beyond; `bucket` overrides. */
export function parseBucket(params: URLSearchParams, period: Period): 'hour' | 'day' {
  const given = params.get('bucket')?.trim();
  if (given === 'hour' || given === 'day') return given;
  if (given) throw new ConsoleInputError('bucket', 'hour или day');
  return Date.parse(period.to) - Date.parse(period.from) <= 3 * DAY ? 'hour' : 'day';
}

function integer(params: URLSearchParams, field: string, min: number, max: number): number | undefined {
  const text = params.get(field)?.trim();
  if (!text) return undefined;
  if (!/^\d{1,16}$/.test(text) || Number(text) < min || Number(text) > max) {
    throw new ConsoleInputError(field, `целое число от ${min} до ${max}`);
  }
  return Number(text);
}

export interface EventQuery {
  status?: string;
  code?: string;
  lesson?: number;
  q?: string;
  beforeId?: number;
  limit: number;
  /** Only when the query names a period: the list is otherwise all time. */
  period?: Period;
}

export function parseEventQuery(params: URLSearchParams, nowMs: number): EventQuery {
  const status = params.get('status')?.trim() || undefined;
  if (status && !(EVENT_STATUSES as readonly string[]).includes(status)) {
    throw new ConsoleInputError('status', `один из ${EVENT_STATUSES.join(', ')}`);
  }
  const code = params.get('code')?.trim() || undefined;
  if (code && !/^[a-z][a-z0-9_]{0,63}$/.test(code)) throw new ConsoleInputError('code', 'код ошибки: строчные латинские буквы, цифры и _, например contact_not_found');
  const q = params.get('q')?.trim() || undefined;
  if (q && q.length > 200) throw new ConsoleInputError('q', 'не длиннее 200 символов');
  const hasPeriod = ['from', 'to', 'period'].some((k) => params.get(k)?.trim());
  return {
    status, code, q,
    lesson: integer(params, 'lesson', 1, 2_147_483_647),
    beforeId: integer(params, 'before', 1, Number.MAX_SAFE_INTEGER),
    limit: integer(params, 'limit', 1, 200) ?? 50,
    period: hasPeriod ? parsePeriod(params, nowMs) : undefined,
  };
}

/** Seconds between automatic reloads; 0 turns them off. */
export function parseRefresh(params: URLSearchParams): number {
  const text = params.get('refresh')?.trim();
  if (!text) return 60;
  if (text === '0') return 0;
  const n = integer(params, 'refresh', 5, 3600);
  return n ?? 60;
}

/** A console link: the path plus the non-empty parameters, encoded. */
export function href(path: string, params: Record<string, string | number | undefined | null> = {}): string {
  const query = new URLSearchParams();
  for (const [k, v] of Object.entries(params)) if (v !== undefined && v !== null && v !== '') query.set(k, String(v));
  const text = query.toString();
  return `${BASE}${path}${text ? `?${text}` : ''}`;
}

/** The query parameters worth keeping in links (the period, refresh), from the request. */
export function keep(params: URLSearchParams, names: string[]): Record<string, string | undefined> {
  return Object.fromEntries(names.map((n) => [n, params.get(n)?.trim() || undefined]));
}

/** An action's from/to as the ISO time replay takes (a day as `to` includes that day). */
export const toIso = (field: 'from' | 'to', text: string) => new Date(instant(field, text)).toISOString();
