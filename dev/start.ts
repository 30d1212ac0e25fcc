// `npm start`: the whole sync on this machine, no Supabase and no amoCRM account needed.
// Shows a student completing lessons 67, 68, 69 and the deal walking through the three
// stages, an operator adding a second funnel whose step asks for a note and a task, then
// keeps serving so you can post your own events (see README).
import { studentDeal, type StudentDeal } from '../lib/db/deal-mirror.ts';
import { checkAlerts } from '../lib/alerts/index.ts';
import { applyFunnels, loadFunnels } from '../lib/funnels/edit.ts';
import type { Funnel } from '../lib/funnels/model.ts';
import { runSweep } from '../lib/sync/sweep.ts';
import { LOCAL, startEmbedded, type Embedded } from './embedded.ts';

/** Ends the way every CLI here ends: one ❌ line that says what to do, exit 1. */
function fail(line: string, err?: unknown): never {
  if (process.env.DEBUG && err) console.error(err);
  console.error(`❌ ${line}`);
  process.exit(1);
}
const crashed = (err: unknown) => fail(`npm start stopped: ${(err as Error)?.message ?? err}${process.env.DEBUG ? '' : ' (DEBUG=1 shows the stack trace)'}`, err);
process.on('uncaughtException', crashed);
process.on('unhandledRejection', crashed);

const portText = process.env.PORT?.trim() || '8888';
const port = Number(portText);
if (!/^\d+$/.test(portText) || port > 65535) fail(`PORT=${portText} is not a port number (0–65535) → PORT=8890 npm start`);
const t0 = Date.now();
const app: Embedded = await startEmbedded({ port, expiredToken: true, alerts: true }).catch((err: NodeJS.ErrnoException) => {
  if (err?.code === 'EADDRINUSE') fail(`port ${port} is busy (another npm start, or netlify dev?) → stop it, or choose another port: PORT=${port + 1} npm start`);
  if (err?.code === 'EACCES') fail(`port ${port} needs privileges here → choose a port above 1023: PORT=8888 npm start`);
  fail(`the embedded stack did not start: ${err?.message ?? err}${process.env.DEBUG ? '' : ' (DEBUG=1 shows the stack trace)'}`, err);
});
const say = (text: string) => console.log(`\n── ${text}`);
say(`Встроенный режим запущен за ${Date.now() - t0} мс: PGlite (PostgreSQL 17) с миграциями, amoCRM-заглушка ${app.amo.url}, функции ${app.url}`);

// Her contact also has a deal in the partners' pipeline, which the second funnel moves.
const student = await app.addStudent('aida.nurlanovna@student.kz', {
  leads: [{ statusId: LOCAL.stages.incoming }, { statusId: LOCAL.stages.otherPipelineStage, pipelineId: LOCAL.otherPipelineId }],
});
const partnerLeadId = student.leadIds[1]!;
// A decoy the substring search also finds: a different student whose address contains hers.
const second = await app.addStudent('x.aida.nurlanovna@student.kz.example');
say(`Студентка aida.nurlanovna@student.kz, сделка ${student.leadId} на этапе «Новая заявка» (${LOCAL.stages.incoming})`);

const stageName = new Map<number, string>([
  [LOCAL.stages.incoming, 'Новая заявка'], [LOCAL.stages.lesson1, 'Урок 1 пройден'],
  [LOCAL.stages.lesson2, 'Урок 2 пройден'], [LOCAL.stages.lesson3, 'Урок 3 пройден'],
]);
for (const lesson of [67, 68, 69]) {
  say(`INSERT INTO lesson_progress (урок ${lesson}) от имени студентки`);
  await app.completeLesson(student.userId, lesson);
  await app.settle();
  const lead = app.amo.lead(student.leadId)!;
  console.log(`   сделка ${lead.id} теперь на этапе ${lead.statusId} «${stageName.get(lead.statusId) ?? '?'}»`);
}
const events = await app.eventsOf(student.userId);
say(`Outbox: ${events.map((e) => `#${e.id} урок ${e.lesson_id} → ${e.status}`).join(', ')}`);
const counts = app.amo.counts();
console.log(`   запросов к amoCRM: ${counts.total} (обновлений токена: ${counts.refreshes}, 429: ${counts.tooMany})`);

await secondFunnel();

// The reverse direction: a sales manager marks the deal won in amoCRM; its hook reaches
// the platform, which can react in its own database (amocrm.deal_changes).
say('Менеджер отмечает сделку в amoCRM как успешную (оплата основного курса)');
app.amo.managerWin(student.leadId);
await app.amo.hooksSettled();
const deal = await waitForDeal(student.userId, 142);
console.log(`   платформа знает: сделка ${deal.lead_id} закрыта как «${deal.closed === 'won' ? 'успешно' : deal.closed}» (amocrm_student_deal), изменение в amocrm.deal_changes`);

// Alerts: the token chain breaks (as when amoCRM refuses the refresh token); the next
// scheduled run tells the team's Telegram chat, here the local Bot API stand-in.
say('Оповещения: цепочка токенов «разорвана» для показа, плановый запуск проверяет условия');
const chain = (state: string) => app.pg.query(`update amocrm.system_settings set value = value || jsonb_build_object('auth_state', $1::text) where key = 'amocrm_tokens'`, [state]);
await chain('needs_reauth');
await checkAlerts(app.runtime);
console.log(`   Telegram (локально): «${app.telegram?.messages.at(-1)?.text.split('\n')[0] ?? 'ничего не пришло'}»`);
await chain('ok');
await checkAlerts(app.runtime); // and says it is over

say(`Сервер продолжает работать. Вторая студентка (${second.userId}) ещё не начинала: её урок 67 через вебхук (формат Database Webhook Supabase):`);
console.log(`curl -s -X POST ${app.url}/api/amocrm/lesson-completed \\
  -H 'content-type: application/json' -H 'x-webhook-secret: ${LOCAL.webhookSecret}' \\
  -d '{"type":"INSERT","table":"lesson_progress","schema":"public","record":{"user_id":"${second.userId}","lesson_id":67},"old_record":null}'`);
console.log(`curl -s -H 'authorization: Bearer ${LOCAL.replayToken}' ${app.url}/api/amocrm/status`);
console.log(`Консоль оператора: ${app.url}/api/amocrm/console — вход: любое имя, пароль ${LOCAL.replayToken}`);
console.log('Ctrl+C — остановить.');

/**
 * A second funnel, added the way an operator adds one (`npm run amocrm -- funnels set`:
 * checked against amoCRM and public.lessons, saved against the version in force): the bonus
 * lesson moves the deal in the partners' pipeline, and its step asks for a note in the deal
 * and a task for its manager. The move is the webhook's; the note and the task come after
 * the moves, from the next drain or scheduled run (on Netlify every 2 minutes, here at once).
 */
async function secondFunnel(): Promise<void> {
  const step = LOCAL.stages.otherPipelineStep!;
  const partners: Funnel = {
    key: 'partners', name: 'Партнёры', pipelineId: LOCAL.otherPipelineId,
    steps: [{ lessons: [70], stageId: step, note: true, task: { text: 'Позвонить: прошла бонусный урок, предложить партнёрство', dueMinutes: 60 } }],
  };
  say(`Оператор добавляет вторую воронку «Партнёры» (воронка amoCRM ${LOCAL.otherPipelineId}): урок 70 «Бонус» → этап ${step}, с заметкой и задачей менеджеру`);
  const { stages } = LOCAL;
  const current = await loadFunnels(app.db, { pipelineId: LOCAL.pipelineId, stageIds: [stages.lesson1, stages.lesson2, stages.lesson3] });
  const amo = app.runtime.invocation(10_000).amo;
  const saved = await applyFunnels({ db: app.db, listPipelines: () => amo.listPipelines() },
    { funnels: [...(current?.funnels ?? []), partners], changedBy: 'оператор', expectedVersion: current?.version ?? 0, note: 'вторая воронка' });
  if (saved.kind !== 'saved') fail(`the demo's second funnel was not saved (${saved.kind}): ${JSON.stringify(saved).slice(0, 300)}`);
  console.log(`   сохранена версия ${saved.version}: воронки ${saved.funnels.map((f) => `«${f.name}»`).join(', ')} (проверены по amoCRM и public.lessons)`);

  say('INSERT INTO lesson_progress (урок 70 «Бонус») от имени студентки');
  await app.completeLesson(student.userId, 70);
  await app.settle();
  const lead = app.amo.lead(partnerLeadId)!;
  console.log(`   сделка ${lead.id} в воронке ${lead.pipelineId} «Партнёры» теперь на этапе ${lead.statusId}${lead.statusId === step ? ' «Бонусный урок пройден»' : ''}`);

  say('Плановый запуск отправляет заметку и задачу (после перемещений: перемещение их не ждёт)');
  await runSweep(app.runtime);
  const note = app.amo.notes(partnerLeadId)[0];
  const task = app.amo.tasks(partnerLeadId)[0];
  console.log(`   заметка в сделке ${partnerLeadId} в amoCRM: «${note?.text ?? 'нет заметки'}»`);
  const dueIn = task ? `, срок через ${Math.round((task.completeTill * 1000 - Date.now()) / 60_000)} мин` : '';
  console.log(`   задача ответственному менеджеру (${task?.responsibleUserId ?? '?'}): «${task?.text ?? 'нет задачи'}»${dueIn}`);
}

/** Polls "where is the student's deal now" until the mirror shows the stage (the hook is applied after its answer). */
async function waitForDeal(userId: string, statusId: number): Promise<StudentDeal> {
  const deadline = Date.now() + 10_000;
  while (true) {
    const deal = await studentDeal(app.db, userId);
    if (deal.status_id === statusId || Date.now() > deadline) return deal;
    await new Promise((r) => setTimeout(r, 50));
  }
}

const stop = async () => {
  await app.close();
  process.exit(0);
};
process.once('SIGINT', stop);
process.once('SIGTERM', stop);
