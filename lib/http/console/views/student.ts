// One student's story: every lesson event, every attempt, the deal and its stage changes.
import type { Config } from '../../../config.ts';
import type { consoleStudent } from '../../../db/console.ts';
import { html, type Html } from '../html.ts';
import { href } from '../query.ts';
import { attemptTimeline, dealSection } from './event.ts';
import { eventTable } from './parts.ts';

export type StudentStory = NonNullable<Awaited<ReturnType<typeof consoleStudent>>>;

export function studentSearch(q: string | undefined): Html {
  return html`<form class="filters" method="get" action="${href('/student')}" role="search">
<label>точный e-mail или id пользователя<input type="search" name="q" value="${q ?? ''}" size="40" required></label>
<button type="submit">Показать историю</button></form>`;
}

export function studentView(config: Config, q: string | undefined, story: StudentStory | null): Html {
  if (!q) return html`<h1>История студента</h1>${studentSearch(q)}`;
  if (!story) {
    return html`<h1>История студента</h1>${studentSearch(q)}
<p class="note warn" data-empty="student">Студент «${q}» не найден: ни в auth.users, ни в событиях. Поиск по началу e-mail — в <a href="${href('/events', { q })}">списке событий</a>.</p>`;
  }
  return html`<h1>История студента</h1>${studentSearch(q)}
<section aria-labelledby="who"><h2 id="who" data-field="email" class="mono">${story.email ?? '(нет e-mail)'}</h2>
<p class="muted">id пользователя: <span class="mono">${story.user_id}</span>${story.remembered_lead_id ? html` · запомненная сделка: ${story.remembered_lead_id}` : ''}</p>
<h3>Уроки</h3>${eventTable(config, story.events)}</section>
<section aria-labelledby="attempts"><h2 id="attempts">Все попытки</h2>${attemptTimeline(story.attempts)}</section>
${dealSection(config, story.deal, story.history, story.remembered_lead_id)}`;
}
