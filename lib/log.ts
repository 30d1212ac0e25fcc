// One greppable line per outcome, in the academy runbook's wording:
//   ✅ [AmoCRM] Сделка 123 успешно перемещена на этап 456 event=7 lesson=68 email=a@b.ru
//   ❌ [AmoCRM] <what failed> code=... what_to_do="..."
// Fields are key=value after the phrase. Values are scrubbed of anything token-shaped,
// so a secret cannot reach a log line even by mistake.

export type Fields = Record<string, string | number | boolean | null | undefined>;

export interface Logger {
  ok(phrase: string, fields?: Fields): void;
  fail(phrase: string, fields?: Fields): void;
  warn(phrase: string, fields?: Fields): void;
  info(phrase: string, fields?: Fields): void;
}

const SECRET_PATTERNS: RegExp[] = [
  /\beyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]*\.?[A-Za-z0-9_-]*/g, // JWTs (amoCRM access tokens)
  /\bdef50200[0-9a-f]{8,}/gi, // amoCRM refresh tokens
  /\bwhsec_[A-Za-z0-9+/=]+/g, // webhook secrets
  /\bBearer\s+[^\s"',}]+/gi, // Authorization header values
  /\b(standin-(?:at|rt)-)[0-9a-f]+/g, // the local stand-in's tokens
  /\b\d{6,}:[A-Za-z0-9_-]{30,}/g, // Telegram bot tokens (alerts)
];

export function redact(text: string): string {
  return SECRET_PATTERNS.reduce((out, pattern) => out.replace(pattern, '[скрыто]'), text);
}

/** What went wrong, as text: an Error's message, or the thrown value itself. */
export const errorText = (err: unknown): string => String((err as Error)?.message ?? err);

function formatValue(value: string | number | boolean | null): string {
  const text = redact(String(value));
  return /^[^\s"=]+$/.test(text) ? text : JSON.stringify(text);
}

export function formatLine(mark: string, phrase: string, fields: Fields = {}): string {
  const parts = Object.entries(fields)
    .filter(([, v]) => v !== undefined)
    .map(([k, v]) => `${k}=${formatValue(v as string | number | boolean | null)}`);
  return [`${mark} [AmoCRM] ${redact(phrase)}`, ...parts].join(' ');
}

export function createLogger(write: (line: string) => void = (line) => console.log(line)): Logger {
  return {
    ok: (phrase, fields) => write(formatLine('✅', phrase, fields)),
    fail: (phrase, fields) => write(formatLine('❌', phrase, fields)),
    warn: (phrase, fields) => write(formatLine('⚠️', phrase, fields)),
    info: (phrase, fields) => write(formatLine('ℹ️', phrase, fields)),
  };
}

/** A logger that keeps its lines (tests, the replay/status answers). */
export function memoryLogger(): Logger & { lines: string[] } {
  const lines: string[] = [];
  return Object.assign(createLogger((line) => lines.push(line)), { lines });
}
