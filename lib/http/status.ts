// GET /api/amocrm/status — the sync at a glance as JSON, for monitors and scripts. A
// browser (Accept: text/html) is pointed at the console's health page, which shows the
// same and more; this endpoint has no page of its own.
import { syncStatus } from '../db/sync-status.ts';
import { endpoint, wantsHtml } from './handler.ts';
import { json } from './respond.ts';

export const CONSOLE_HEALTH = '/api/amocrm/console/health';

const toConsole = `<!doctype html><html lang="ru"><meta charset="utf-8"><title>amoCRM sync — статус</title>
<p>Статус синхронизации для людей — в консоли: <a href="${CONSOLE_HEALTH}">${CONSOLE_HEALTH}</a>. Этот адрес отвечает JSON для мониторинга.</p></html>`;

export const handleStatus = endpoint({
  methods: ['GET', 'HEAD'],
  usage: 'use GET (or HEAD) with Authorization: Bearer <AMOCRM_REPLAY_TOKEN>',
  operator: true,
  async handle(req, rt) {
    if (wantsHtml(req)) return new Response(toConsole, { headers: { 'content-type': 'text/html; charset=utf-8', 'cache-control': 'no-store' } });
    const status = await syncStatus(rt.db, 20);
    return json(200, { ok: true, ...status }, { 'cache-control': 'no-store' });
  },
});
