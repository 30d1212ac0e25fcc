// How operator output shows a moment and a distance in time: ISO to the second, and
// "in 3 days" / "2 h ago" (precise enough to act on, short enough for one line).

export const DAY_MS = 86_400_000;

export const iso = (ms: number): string => new Date(ms).toISOString().replace(/\.\d{3}Z$/, 'Z');

export function inWords(ms: number): string {
  const abs = Math.abs(ms);
  const text = abs >= 2 * DAY_MS ? `${Math.round(abs / DAY_MS)} days`
    : abs >= 3_600_000 ? `${Math.round(abs / 3_600_000)} h`
      : `${Math.max(1, Math.round(abs / 60_000))} min`;
  return ms >= 0 ? `in ${text}` : `${text} ago`;
}
