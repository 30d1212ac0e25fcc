// The page around every view: navigation, the one stylesheet and the one small script
// (both allowed by the page's nonce and nothing else), and the auto-refresh.
import { html, trusted, type Html, type Part } from './html.ts';
import { href } from './query.ts';

const STYLE = `
:root{color-scheme:light;--b:#d0d4da;--m:#667;--ok:#1a7f37;--bad:#c62828;--warn:#b26a00}
*{box-sizing:border-box}
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:0;color:#1b1f24;background:#f6f7f9}
header{background:#1f2937;color:#fff;padding:.6em 1em;display:flex;flex-wrap:wrap;gap:.4em 1.2em;align-items:baseline}
header b{font-size:1.05em}header a{color:#cbd5e1;text-decoration:none;padding:.2em .1em}header a[aria-current]{color:#fff;border-bottom:2px solid #60a5fa}
header .meta{margin-left:auto;color:#9ca3af;font-size:.85em}header .meta a{color:#9ca3af}
main{padding:1em;max-width:80em;margin:0 auto}
h1{font-size:1.3em;margin:.2em 0 .6em}h2{font-size:1.1em;margin:1.4em 0 .5em}
section,.card{background:#fff;border:1px solid var(--b);border-radius:6px;padding:.8em 1em;margin:0 0 1em}
.grid{display:grid;grid-template-columns:repeat(auto-fit,minmax(13em,1fr));gap:.8em}
.stat{background:#fff;border:1px solid var(--b);border-radius:6px;padding:.6em .8em}
.stat .v{font-size:1.5em;font-weight:600}.stat .l{color:var(--m);font-size:.85em}
.scroll{overflow-x:auto}
table{border-collapse:collapse;width:100%}th,td{border-bottom:1px solid #e5e7eb;padding:.35em .5em;text-align:left;vertical-align:top}
th{font-weight:600;color:#374151;background:#f9fafb;white-space:nowrap}td.n,th.n{text-align:right;font-variant-numeric:tabular-nums}
.muted{color:var(--m)}.reason{max-width:28em;overflow-wrap:anywhere}.mono{font-family:ui-monospace,monospace;font-size:.92em;overflow-wrap:break-word}
.badge{display:inline-block;padding:0 .45em;border-radius:3px;font-size:.85em;white-space:nowrap;background:#e5e7eb}
.s-done{background:#dcfce7;color:#14532d}.s-failed,.s-dead{background:#fee2e2;color:#7f1d1d}.s-parked{background:#ffedd5;color:#7c2d12}
.s-skipped{background:#f3f4f6;color:#374151}.s-pending,.s-processing,.s-deferred{background:#dbeafe;color:#1e3a8a}
form.filters{display:flex;flex-wrap:wrap;gap:.5em .8em;align-items:end}form.filters label{display:flex;flex-direction:column;font-size:.85em;color:var(--m)}
textarea{display:block;width:100%;margin:.3em 0 .6em;padding:.4em;border:1px solid #9ca3af;border-radius:4px}
input,select,button{font:inherit;padding:.3em .45em;border:1px solid #9ca3af;border-radius:4px;background:#fff}
button{cursor:pointer;background:#2563eb;color:#fff;border-color:#2563eb}button.secondary{background:#fff;color:#1f2937;border-color:#9ca3af}
button.danger{background:#b91c1c;border-color:#b91c1c}
.actions{display:flex;flex-wrap:wrap;gap:.6em;align-items:center;margin:.6em 0}
.note{border-left:4px solid #60a5fa;padding:.4em .8em;background:#eff6ff;margin:.6em 0}
.warn{border-left-color:var(--warn);background:#fff7ed}.error{border-left-color:var(--bad);background:#fef2f2}
ul.note{padding-left:2em}
.chart{margin:0}.chart figcaption{font-size:.85em;color:var(--m)}.key{margin-left:.8em;white-space:nowrap}
ol.timeline{list-style:none;padding:0;margin:0}ol.timeline li{border-left:3px solid var(--b);padding:.2em .8em .6em;margin-left:.3em}
nav.pager{display:flex;gap:1em;margin:.8em 0}
@media (max-width:40em){main{padding:.5em}header .meta{margin-left:0}}
`;

// Times in the reader's zone; a reload every `data-refresh` seconds that keeps the URL
// (the filters live in it), skipped while the reader is choosing events or typing.
const SCRIPT = `
for (const t of document.querySelectorAll('time[datetime]')) {
  const d = new Date(t.getAttribute('datetime'));
  if (!isNaN(d)) { t.title = t.textContent; t.textContent = d.toLocaleString('ru-RU', { dateStyle: 'short', timeStyle: 'medium' }); }
}
const every = Number(document.body.dataset.refresh) * 1000;
if (every > 0) {
  const tick = () => {
    const busy = document.hidden || document.querySelector('input[name=ids]:checked') || (document.activeElement && document.activeElement.matches('input,select,textarea'));
    if (busy) setTimeout(tick, every); else location.reload();
  };
  setTimeout(tick, every);
}
`;

export type View = 'funnel' | 'funnels' | 'health' | 'events' | 'student' | 'action';

const NAV: [View, string, string][] = [
  ['funnel', 'Воронка', '/'],
  ['funnels', 'Настройка воронок', '/funnels'],
  ['health', 'Здоровье', '/health'],
  ['events', 'События', '/events'],
  ['student', 'Студент', '/student'],
];

export interface PageOptions {
  title: string;
  view: View;
  nonce: string;
  /** Seconds between reloads; 0 (action results, error pages): none. */
  refresh: number;
  /** Link to the same view without auto-refresh (or with it again). */
  refreshToggle?: { on: string; off: string };
  generatedAt: string;
  body: Part;
}

export function page(o: PageOptions): string {
  const nav = NAV.map(([view, label, path]) =>
    html`<a href="${href(path === '/' ? '' : path)}"${view === o.view ? trusted(' aria-current="page"') : ''}>${label}</a>`);
  const refreshNote = o.refreshToggle
    ? (o.refresh > 0
      ? html`автообновление: ${o.refresh} с · <a href="${o.refreshToggle.off}">выключить</a>`
      : html`автообновление выключено · <a href="${o.refreshToggle.on}">включить</a>`)
    : '';
  const doc: Html = html`<!doctype html>
<html lang="ru">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="referrer" content="same-origin">
<title>${o.title} — amoCRM ↔ уроки</title>
<style nonce="${o.nonce}">${trusted(STYLE)}</style>
</head>
<body data-refresh="${o.refresh}">
<header><b>amoCRM ↔ уроки</b>${nav}<span class="meta">данные на ${trustedTime(o.generatedAt)}${refreshNote ? html` · ${refreshNote}` : ''}</span></header>
<main>
${o.body}
</main>
<script nonce="${o.nonce}">${trusted(SCRIPT)}</script>
</body>
</html>`;
  return doc.value;
}

const trustedTime = (iso: string) => html`<time datetime="${iso}">${iso.replace('T', ' ').slice(0, 19)} UTC</time>`;
