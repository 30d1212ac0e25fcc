// Server-drawn SVG: no charting library to ship, nothing to load, nothing for the CSP to
// allow. Labels and tooltips go through the escaping template like every other value.
import { html, type Html } from './html.ts';

export interface Series { key: string; label: string; color: string }
export interface Column { label: string; title: string; values: Record<string, number> }

const W = 720;
const H = 180;
const PAD = { left: 36, right: 8, top: 8, bottom: 22 };

/** A stacked bar per column (e.g. an hour), one colour per series, a tooltip per bar. */
export function stackedBars(columns: Column[], series: Series[], caption: string): Html {
  const totals = columns.map((c) => series.reduce((n, s) => n + (c.values[s.key] ?? 0), 0));
  const max = Math.max(1, ...totals);
  const plotW = W - PAD.left - PAD.right;
  const plotH = H - PAD.top - PAD.bottom;
  const step = plotW / Math.max(1, columns.length);
  const barW = Math.max(1, step * 0.8);
  const bars = columns.map((c, i) => {
    let y = PAD.top + plotH;
    const x = PAD.left + i * step + (step - barW) / 2;
    const parts = series.map((s) => {
      const v = c.values[s.key] ?? 0;
      if (!v) return '';
      const h = (v / max) * plotH;
      y -= h;
      return html`<rect x="${x.toFixed(1)}" y="${y.toFixed(1)}" width="${barW.toFixed(1)}" height="${h.toFixed(1)}" fill="${s.color}"><title>${c.title}: ${s.label} — ${v}</title></rect>`;
    });
    return html`<g>${parts}</g>`;
  });
  const labelAt = (i: number, anchor: string) =>
    html`<text x="${(PAD.left + i * step + step / 2).toFixed(1)}" y="${H - 6}" text-anchor="${anchor}" font-size="11" fill="#555">${columns[i]!.label}</text>`;
  const xLabels = columns.length ? [labelAt(0, 'start'), columns.length > 2 ? labelAt(Math.floor(columns.length / 2), 'middle') : '', columns.length > 1 ? labelAt(columns.length - 1, 'end') : ''] : [];
  const legend = series.map((s) => html`<span class="key"><svg width="10" height="10" aria-hidden="true"><rect width="10" height="10" fill="${s.color}"/></svg> ${s.label}</span>`);
  return html`<figure class="chart">
<svg viewBox="0 0 ${W} ${H}" width="100%" role="img" aria-label="${caption}">
<line x1="${PAD.left}" y1="${PAD.top + plotH}" x2="${W - PAD.right}" y2="${PAD.top + plotH}" stroke="#999"/>
<text x="${PAD.left - 4}" y="${PAD.top + 10}" text-anchor="end" font-size="11" fill="#555">${max}</text>
<text x="${PAD.left - 4}" y="${PAD.top + plotH}" text-anchor="end" font-size="11" fill="#555">0</text>
${bars}${xLabels}
</svg>
<figcaption>${caption}: ${legend}</figcaption>
</figure>`;
}

/** A horizontal bar of `value` out of `max`, for the funnel's rows. */
export function meterBar(value: number, max: number, color: string): Html {
  const width = max > 0 ? Math.max(value > 0 ? 1 : 0, (value / max) * 200) : 0;
  return html`<svg width="200" height="14" viewBox="0 0 200 14" aria-hidden="true"><rect width="200" height="14" fill="#eee"/><rect width="${width.toFixed(1)}" height="14" fill="${color}"/></svg>`;
}
