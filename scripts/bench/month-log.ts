// The sync's log over the month: every line tallied by its phrase (numbers folded), the
// alerts it announced with their virtual time, and the token chain's lines. Lines are not
// kept (a month is tens of thousands of them), except the ❌ ones, which are few.

export interface MonthLog {
  onLine(line: string): void;
  /** Every `Оповещение отправлено`: the condition, started/reminder/ended, and when (virtual ms). */
  alerts: { at: number; kind: string; state: string }[];
  /** Lines by phrase (numbers folded to #), ✅/❌/⚠️/ℹ️ included. */
  phrases: Map<string, number>;
  failures: { at: number; line: string }[];
  count(phrase: string): number;
}

const field = (line: string, key: string) => new RegExp(`\\b${key}=(\\S+)`).exec(line)?.[1];

export function monthLog(): MonthLog {
  const phrases = new Map<string, number>();
  const alerts: MonthLog['alerts'] = [];
  const failures: MonthLog['failures'] = [];
  return {
    alerts, phrases, failures,
    onLine(line) {
      const phrase = line.split(/ [a-z_]+=/)[0]!.replace(/\d+/g, '#');
      phrases.set(phrase, (phrases.get(phrase) ?? 0) + 1);
      if (line.includes('Оповещение отправлено')) alerts.push({ at: Date.now(), kind: field(line, 'kind') ?? '?', state: field(line, 'state') ?? '?' });
      if (line.startsWith('❌') && failures.length < 200) failures.push({ at: Date.now(), line: line.slice(0, 300) });
    },
    count(phrase) {
      let n = 0;
      for (const [p, k] of phrases) if (p.includes(phrase)) n += k;
      return n;
    },
  };
}
