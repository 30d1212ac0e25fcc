// The alert conditions, decided from the database's facts (lib/db/alerts.ts), and the
// text each alert says: what happened, since when, what it affects, what to do, in
// Russian like the log lines. Pure: no I/O.
import type { ActiveCondition, AlertFacts, AlertTransition } from '../db/alerts.ts';

export type ConditionKey =
  | 'token_chain' | 'account_refused' | 'events_dead' | 'events_waiting'
  | 'drainer_not_starting' | 'feed_lagging' | 'hook_silent' | 'storage_near_limit';

interface Condition {
  /** What happened (one line). */
  title: (detail: Record<string, any>) => string;
  /** What it affects, given the number affected. */
  affects: (n: number, detail: Record<string, any>) => string;
  todo: string;
}

const students = (n: number) => `${n} ${plural(n, 'ученик', 'ученика', 'учеников')}`;
export const CONDITIONS: Record<ConditionKey, Condition> = {
  token_chain: {
    title: (d) => `Цепочка токенов amoCRM разорвана: нужна повторная авторизация${d.problem ? ` (${d.problem})` : ''}`,
    affects: (n) => `${students(n)} ждут перевода сделки; ничего не уходит в amoCRM`,
    todo: 'выдайте доступ заново: npm run amocrm -- exchange-code <код из redirect> (частная интеграция: npm run amocrm -- store-long-lived <токен>); проверка: npm run doctor',
  },
  account_refused: {
    title: (d) => `amoCRM отказывает аккаунту: ${d.code === 'payment_required' ? 'не оплачен (402)' : 'заблокирован (403)'}`,
    affects: (n, d) => `${students(n)}, ${d.count} ${plural(d.count, 'событие отложено', 'события отложены', 'событий отложено')}; вернутся в очередь сами, когда amoCRM ответит`,
    todo: 'оплатите аккаунт или снимите блокировку в amoCRM (403 после частых 429: подождите, amoCRM снимает её сам); проверка: npm run doctor',
  },
  events_dead: {
    title: (d) => `${d.count} ${plural(d.count, 'событие исчерпало', 'события исчерпали', 'событий исчерпали')} попытки (dead)`,
    affects: (n) => `${students(n)}: их сделки не переведены`,
    todo: 'посмотрите причину в консоли (/console, фильтр dead) и повторите: npm run replay -- --status dead',
  },
  events_waiting: {
    title: (d) => `События ждут дольше ${d.minutes} мин (самое старое: ${d.oldest_minutes} мин)`,
    affects: (n) => `${students(n)} ждут перевода сделки`,
    todo: 'проверьте, что плановый запуск (amocrm-sync-sweep) работает и amoCRM отвечает: npm run doctor, журнал функций Netlify',
  },
  drainer_not_starting: {
    title: () => 'Фоновый обработчик очереди вызывается, но не запускается',
    affects: (n) => `${students(n)} ждут; события доставляет только плановый запуск, медленнее`,
    todo: 'проверьте функцию amocrm-drain-background в Netlify (есть ли она в деплое, доступны ли фоновые функции на тарифе) и AMOCRM_DRAIN_URL; npm run doctor',
  },
  feed_lagging: {
    title: (d) => `Лента событий amoCRM читается с отставанием: ${d.lag}`,
    affects: () => 'изменения сделок, пропущенные хуками, доходят до платформы с опозданием',
    todo: 'проверьте плановый запуск и ошибки «Лента событий amoCRM не прочитана» в журнале; npm run doctor',
  },
  hook_silent: {
    title: (d) => `Хук amoCRM молчит ${d.silent}, а лента событий показывает ${d.changes} ${plural(d.changes, 'изменение', 'изменения', 'изменений')}`,
    affects: () => 'изменения сделок доходят до платформы только через ленту, с опозданием',
    todo: 'amoCRM мог отключить хук: amoCRM → Настройки → Интеграции → Веб-хуки; npm run amocrm -- webhooks list, npm run doctor',
  },
  storage_near_limit: {
    title: (d) => `База данных близка к пределу: ${d.mb} МБ из ${d.limit_mb} МБ`,
    affects: () => 'при переполнении запись событий остановится',
    todo: 'очистите старые записи (история событий, доставки хуков) или поднимите тариф; предел: alert_settings.storage_limit_mb',
  },
};

function plural(n: number, one: string, few: string, many: string): string {
  const m10 = n % 10, m100 = n % 100;
  if (m10 === 1 && m100 !== 11) return one;
  if (m10 >= 2 && m10 <= 4 && (m100 < 12 || m100 > 14)) return few;
  return many;
}

/** A duration in words: "3 ч 5 мин", "12 мин", "2 дн 4 ч". */
export function duration(ms: number): string {
  const min = Math.max(0, Math.round(ms / 60_000));
  if (min < 60) return `${min} мин`;
  const h = Math.floor(min / 60);
  if (h < 48) return `${h} ч${min % 60 ? ` ${min % 60} мин` : ''}`;
  return `${Math.floor(h / 24)} дн${h % 24 ? ` ${h % 24} ч` : ''}`;
}

const setting = (f: AlertFacts, key: string, fallback: number) => Number(f.settings?.[key] ?? fallback);
const ACCOUNT_CODES = ['payment_required', 'account_blocked'];

/** The conditions that hold, from the facts. `hooks`: the reverse direction is on (AMOCRM_HOOK_SECRET). */
export function activeConditions(f: AlertFacts, options: { hooks: boolean }): ActiveCondition[] {
  const now = Date.parse(f.now);
  const out: ActiveCondition[] = [];
  const add = (key: ConditionKey, since: string | null | undefined, affected: number, detail: Record<string, unknown> = {}) =>
    out.push({ key, since: since ?? null, affected, detail });

  if (f.tokens?.auth_state === 'needs_reauth') add('token_chain', f.tokens.updated_at, f.students_waiting, { problem: f.tokens.auth_problem });
  for (const code of ACCOUNT_CODES) {
    const p = f.parked[code];
    if (p) add('account_refused', p.since, p.students, { code, count: p.count });
  }
  // One key for the account: both codes are one condition (the first one found).
  const account = out.filter((c) => c.key === 'account_refused');
  if (account.length > 1) out.splice(out.indexOf(account[1]!), 1);
  if (f.dead.count > 0) add('events_dead', f.dead.since, f.dead.students, { count: f.dead.count });
  // Once told, it lasts while any event waits: the outage's younger events are the same wait.
  const waiting = f.waiting.count > 0 ? f.waiting : f.open?.events_waiting ? f.waiting_any : undefined;
  if (waiting && waiting.count > 0 && waiting.oldest) {
    add('events_waiting', waiting.oldest, waiting.students,
      { minutes: setting(f, 'waiting_minutes', 30), oldest_minutes: Math.round((now - Date.parse(waiting.oldest)) / 60_000) });
  }
  const d = f.drainer;
  if (d?.last_woken_at && !d.held) {
    const woken = Date.parse(d.last_woken_at);
    const started = d.started_at ? Date.parse(d.started_at) : -Infinity;
    const limit = setting(f, 'drainer_start_minutes', 10) * 60_000;
    if (started < woken && Math.max(now - woken, woken - started) > limit) add('drainer_not_starting', d.started_at ?? d.last_woken_at, f.students_waiting);
  }
  if (options.hooks) {
    if (f.feed_lag_seconds !== null && f.feed_lag_seconds > setting(f, 'feed_lag_minutes', 180) * 60) {
      add('feed_lagging', new Date(now - f.feed_lag_seconds * 1000).toISOString(), 0, { lag: duration(f.feed_lag_seconds * 1000) });
    }
    const silentMs = setting(f, 'hook_silent_minutes', 180) * 60_000;
    const last = f.hook.last_delivery_at ? Date.parse(f.hook.last_delivery_at) : undefined;
    // Once told, only a hook delivery ends it (started_at is the last delivery it saw, or the
    // start when there was none): a quiet spell in the feed is no evidence the hook is back.
    const told = f.open?.hook_silent;
    const stillSilent = told !== undefined && (last === undefined || last <= Date.parse(told));
    if (stillSilent || (f.hook.feed_changes >= setting(f, 'hook_silent_changes', 3) && (last === undefined || now - last > silentMs))) {
      add('hook_silent', f.hook.last_delivery_at, 0,
        { silent: last === undefined ? 'с начала работы' : duration(now - last), changes: f.hook.feed_changes });
    }
  }
  const limitMb = setting(f, 'storage_limit_mb', 500);
  const mb = f.database_bytes / 1024 / 1024;
  if (limitMb > 0 && mb >= limitMb * setting(f, 'storage_near_percent', 80) / 100) {
    add('storage_near_limit', null, 0, { mb: Math.round(mb), limit_mb: limitMb });
  }
  return out;
}

const when = (iso: string) => `${iso.slice(0, 16).replace('T', ' ')} UTC`;

/** The alert's text: what happened, since when, what it affects, what to do. */
export function alertText(t: AlertTransition, nowMs: number): string {
  const c = CONDITIONS[t.key as ConditionKey];
  const detail = t.detail ?? {};
  const title = c ? c.title(detail) : t.key;
  const since = `с ${when(t.started_at)} (${duration(nowMs - Date.parse(t.started_at))})`;
  if (t.state === 'ended') return `✅ [AmoCRM] Закончилось: ${title}\nДлилось ${duration(nowMs - Date.parse(t.started_at))}, ${since.replace(/ \(.*\)$/, '')}`;
  const head = t.state === 'started' ? '🔴 [AmoCRM]' : '🔁 [AmoCRM] Всё ещё:';
  return [
    `${head} ${title}`,
    `Когда: ${since}`,
    `Затронуто: ${c ? c.affects(t.affected ?? 0, detail) : String(t.affected ?? 0)}`,
    `Что делать: ${c?.todo ?? 'npm run doctor'}`,
  ].join('\n');
}
