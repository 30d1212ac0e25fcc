// The console's Russian words for statuses, outcomes and codes, and what an operator does
// about each code (the README's tables, in the runbook's language).

export const STATUS_LABEL: Record<string, string> = {
  pending: 'ждёт',
  processing: 'обрабатывается',
  done: 'сделано',
  skipped: 'пропущено',
  failed: 'ошибка',
  parked: 'ждёт оператора',
  dead: 'попытки исчерпаны',
};

export const OUTCOME_LABEL: Record<string, string> = {
  ...STATUS_LABEL,
  deferred: 'отложено',
};

export const EVENT_STATUSES = ['pending', 'processing', 'done', 'skipped', 'failed', 'parked', 'dead'] as const;
/** Statuses that need a look, in the order the console shows them. */
export const PROBLEM_STATUSES = ['dead', 'parked', 'failed'] as const;
/** What replay takes (lib/sync/replay.ts); done needs force. */
export const REPLAYABLE_STATUSES = ['failed', 'dead', 'parked', 'skipped'] as const;

const TOKEN_CHAIN = 'Цепочка токенов прервана или интеграция отключена. Авторизуйте заново: npm run amocrm -- exchange-code <код>; затем «Вернуть в очередь» на странице «Здоровье»';
const ACCOUNT = 'Аккаунт amoCRM не оплачен или заблокирован. События вернутся в очередь сами, когда amoCRM снова ответит';
const TRANSIENT = 'Временная ошибка (429, 5xx или amoCRM не ответил): повторяется с паузами. Делать ничего не нужно, если такие не копятся';

export const CODE_ADVICE: Record<string, string> = {
  contact_not_found: 'В amoCRM нет контакта с точным e-mail студента. Добавьте e-mail в контакт, затем повторите событие',
  search_truncated: 'Поиск по e-mail вернул больше 1000 контактов, и ни у одного из прочитанных нет точного e-mail. Объедините дубли или исправьте e-mail контакта, затем повторите',
  no_deal_in_pipeline: 'У контакта нет сделки в воронке AMOCRM_PIPELINE_ID. Создайте сделку, затем повторите',
  no_email: 'У студента нет e-mail в auth.users. Добавьте его (Supabase → Authentication → Users), затем повторите',
  no_stage: 'tripwire_lessons сопоставляет урок с номером этапа, для которого этап не настроен. Используйте номера 1–3, затем повторите',
  stage_rejected: 'amoCRM отклонил id этапа. Запустите доктор: npm run doctor',
  lead_not_found: 'Сделку удалили до перемещения. Повторите событие: сделка будет найдена заново',
  bad_request: 'amoCRM отклонил запрос как некорректный (400 или 422). Повтор не поможет; сообщение говорит, что именно отклонено',
  not_found: 'amoCRM ответил 404 там, где не должен. Проверьте AMOCRM_SUBDOMAIN и AMOCRM_BASE_DOMAIN, запустите доктор',
  unexpected_redirect: 'amoCRM перенаправляет (3xx): вероятно, изменился адрес аккаунта. Исправьте AMOCRM_SUBDOMAIN и AMOCRM_BASE_DOMAIN',
  refresh_rejected: TOKEN_CHAIN,
  needs_reauth: TOKEN_CHAIN,
  long_lived_rejected: 'Долгосрочный токен отклонён: выпустите новый в amoCRM, затем npm run amocrm -- store-long-lived <токен>',
  unauthorized: TOKEN_CHAIN,
  token_store_failed: 'amoCRM выдал новые токены, но база их не сохранила. Проверьте Supabase, затем авторизуйте заново',
  payment_required: ACCOUNT,
  account_blocked: ACCOUNT,
  rate_limited: TRANSIENT,
  server_error: TRANSIENT,
  timeout: TRANSIENT,
  network: TRANSIENT,
  would_move_backwards: 'Сделка уже на более позднем этапе: назад не двигаем. Ничего делать не нужно',
  deal_closed: 'Сделка закрыта (успешно или нет): её не двигаем. Если её открыли снова — повторите событие',
  past_tripwire: 'Сделка уже прошла Tripwire: ничего делать не нужно',
  unknown_stage: 'Этап сделки не из воронки Tripwire. Если сделку поправили вручную — повторите событие',
};

const STATUS_ADVICE: Record<string, string> = {
  pending: 'Ничего: событие обработает вебхук или плановый запуск',
  processing: 'Ничего: событие обрабатывается; если обработчик упал, через 90 с его возьмут снова',
  done: '—',
  skipped: 'Ничего; повторите, если сделку поправили вручную',
  failed: 'Исправьте то, о чём говорит код, затем повторите',
  parked: 'Сделайте то, что сказано в коде, затем «Вернуть в очередь»',
  dead: 'Прочитайте причину, затем повторите',
};

/** What to do about an event: its code's advice, else its status's. */
export const adviceFor = (status: string, code: string | null) =>
  (code && CODE_ADVICE[code]) || (status === 'dead' ? STATUS_ADVICE.dead : STATUS_ADVICE[status]) || '—';

export const KNOWN_CODES = Object.keys(CODE_ADVICE);
