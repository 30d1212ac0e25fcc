// GET /api/amocrm/status — the sync at a glance: JSON, or a small page for a browser.
import { syncStatus, type SyncStatus as Status } from '../db/settings.ts';
import { endpoint, wantsHtml } from './handler.ts';
import { json } from './respond.ts';

const escape = (v: unknown) => String(v ?? '—').replace(/[&<>"']/g, (c) => `&#${c.charCodeAt(0)};`);

function page(s: Status): string {
  const rows = s.recent_failures.map((f) => `<tr><td>${escape(f.id)}</td><td>${escape(f.status)}</td><td>${escape(f.email)}</td><td>${escape(f.lesson_id)}</td><td>${escape(f.attempts)}</td><td>${escape(f.code)}</td><td>${escape(f.reason)}</td><td>${escape(f.updated_at)}</td></tr>`).join('');
  const counts = Object.entries(s.counts).map(([k, v]) => `<li>${escape(k)}: <b>${escape(v)}</b></li>`).join('') || '<li>событий нет</li>';
  return `<!doctype html><html lang="ru"><meta charset="utf-8"><title>amoCRM sync — статус</title>
<style>body{font:14px system-ui,sans-serif;margin:2em;max-width:70em}table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:.3em .6em;text-align:left}</style>
<h1>amoCRM ↔ уроки: статус</h1>
<ul>${counts}</ul>
<p>Старейшее ожидающее событие: ${s.oldest_pending_age_seconds === null ? 'нет' : `${escape(s.oldest_pending_age_seconds)} с`}<br>
Последний успех: ${escape(s.last_success_at)}<br>Последняя ошибка: ${escape(s.last_failure_at)}<br>
Токен: ${s.token ? `${escape(s.token.kind)}, истекает ${escape(s.token.expires_at)}, состояние ${escape(s.token.auth_state)}${s.token.auth_problem ? ` (${escape(s.token.auth_problem)})` : ''}` : 'нет'}</p>
<h2>Последние ошибки</h2>
<table><tr><th>id</th><th>статус</th><th>e-mail</th><th>урок</th><th>попыток</th><th>код</th><th>причина</th><th>когда</th></tr>${rows || '<tr><td colspan="8">нет</td></tr>'}</table></html>`;
}

export const handleStatus = endpoint({
  methods: ['GET', 'HEAD'],
  usage: 'use GET (or HEAD) with Authorization: Bearer <AMOCRM_REPLAY_TOKEN>',
  operator: true,
  async handle(req, rt) {
    const status = await syncStatus(rt.db, 20);
    if (wantsHtml(req)) return new Response(page(status), { headers: { 'content-type': 'text/html; charset=utf-8', 'cache-control': 'no-store' } });
    return json(200, { ok: true, ...status }, { 'cache-control': 'no-store' });
  },
});
