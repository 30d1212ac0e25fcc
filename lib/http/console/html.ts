// HTML built by one tagged template that escapes every interpolated value unless it is
// markup this module produced. A value from an event (an e-mail, a reason, an amoCRM
// message) can therefore only ever become text: forgetting to escape is not possible.
import { redact } from '../../log.ts';

export class Html {
  constructor(readonly value: string) {}
  toString(): string {
    return this.value;
  }
}

export type Part = Html | string | number | bigint | boolean | null | undefined | readonly Part[];

const ENTITIES: Record<string, string> = { '&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;', "'": '&#39;', '`': '&#96;' };

/** Text safe in element content and in a double-quoted attribute value. */
export const escapeHtml = (text: string) => text.replace(/[&<>"'`]/g, (c) => ENTITIES[c]!);

function render(part: Part): string {
  if (part instanceof Html) return part.value;
  if (Array.isArray(part)) return part.map(render).join('');
  if (part === null || part === undefined || part === false) return '';
  return escapeHtml(String(part));
}

export function html(strings: TemplateStringsArray, ...values: Part[]): Html {
  let out = strings[0]!;
  for (let i = 0; i < values.length; i++) out += render(values[i]) + strings[i + 1]!;
  return new Html(out);
}

/** Markup this module trusts as is (fixed strings and SVG it drew itself only). */
export const trusted = (markup: string) => new Html(markup);

export const join = (parts: readonly Part[], separator: Part = '') => {
  const out: Part[] = [];
  parts.forEach((p, i) => { if (i) out.push(separator); out.push(p); });
  return html`${out}`;
};

/** Free text that came from outside (reasons, amoCRM messages): token-shaped strings hidden, length bounded. */
export const outsideText = (text: string | null | undefined, max = 500) =>
  text == null ? null : redact(text.length > max ? `${text.slice(0, max)}…` : text);
