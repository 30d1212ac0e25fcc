// How values read on a page: times (UTC on the server; the page's script shows them in
// the reader's zone), durations, shares, amoCRM stages and the deal's address in amoCRM.
import type { Config } from '../../config.ts';
import { html, type Html } from './html.ts';

/** amoCRM's fixed statuses of every pipeline. */
export const WON_STATUS = 142;
export const LOST_STATUS = 143;

export function time(iso: string | null | undefined): Html {
  if (!iso) return html`<span class="muted">—</span>`;
  const ms = Date.parse(iso);
  if (!Number.isFinite(ms)) return html`${iso}`;
  const text = new Date(ms).toISOString().replace('T', ' ').slice(0, 19);
  return html`<time datetime="${new Date(ms).toISOString()}">${text} UTC</time>`;
}

export function duration(ms: number | null | undefined): string {
  if (ms === null || ms === undefined) return '—';
  if (ms < 1000) return `${Math.round(ms)} мс`;
  const s = ms / 1000;
  if (s < 60) return `${s.toFixed(s < 10 ? 1 : 0).replace('.', ',')} с`;
  const m = Math.floor(s / 60);
  if (m < 60) return `${m} мин ${Math.round(s % 60)} с`;
  const h = Math.floor(m / 60);
  if (h < 48) return `${h} ч ${m % 60} мин`;
  return `${Math.floor(h / 24)} дн ${h % 24} ч`;
}

export const share = (part: number, whole: number) => (whole > 0 ? `${Math.round((part / whole) * 100)}%` : '—');

export const count = (n: number | null | undefined) => (n === null || n === undefined ? '—' : n.toLocaleString('ru-RU'));

/** A deal's status in words: the lesson stages this sync moves deals to, won and lost. */
export function stageName(config: Config, statusId: number | null | undefined): string {
  if (statusId === null || statusId === undefined) return '—';
  const lesson = (config.stageIds ?? ([] as number[])).indexOf(statusId);
  if (lesson >= 0) return `этап урока ${lesson + 1} (${statusId})`;
  if (statusId === WON_STATUS) return `успешно реализовано (${statusId})`;
  if (statusId === LOST_STATUS) return `закрыто и не реализовано (${statusId})`;
  return `этап ${statusId}`;
}

/** The deal's page in amoCRM: https://<subdomain>.<domain>/leads/detail/<id>. */
export const dealUrl = (config: Config, leadId: number) => `${config.amocrm.baseUrl}/leads/detail/${leadId}`;
