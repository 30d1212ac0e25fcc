// The academy's side: the Tripwire lessons the map names (present, in a module, not
// archived), RLS on every table of the integration, and the outbox at a glance.
import type { DoctorFacts } from './facts.ts';
import type { Add } from './report.ts';

export function checkAcademy(facts: DoctorFacts, add: Add): void {
  checkLessons(facts, add);
  checkRls(facts, add);
  checkOutbox(facts, add);
}

function lessonProblems(facts: DoctorFacts): string[] {
  const problems: string[] = [];
  for (const l of facts.lessons) {
    if (!l.exists) problems.push(`lesson ${l.id} not found in public.lessons`);
    else if (l.archived) problems.push(`lesson ${l.id} '${l.title}' is archived`);
    else if (l.module_id === null || l.module_id === undefined) problems.push(`lesson ${l.id} '${l.title}' has no module`);
    else if (facts.modules_table && !l.module_exists) problems.push(`lesson ${l.id}: module ${l.module_id} not found`);
    else if (l.module_archived) problems.push(`lesson ${l.id}: module ${l.module_id} '${l.module_title}' is archived`);
  }
  return problems;
}

function checkLessons(facts: DoctorFacts, add: Add): void {
  const map = facts.tripwire_lessons;
  const numbers = map ? Object.values(map).map(Number).sort((a, b) => a - b) : [];
  if (!map || Object.keys(map).length === 0) {
    add('fail', 'tripwire lessons', 'tripwire_lessons is not set in amocrm.system_settings', `insert into amocrm.system_settings (key, value) values ('tripwire_lessons', '{"67": 1, "68": 2, "69": 3}') on conflict (key) do update set value = excluded.value;`);
    return;
  }
  if (numbers.join(',') !== '1,2,3') {
    add('fail', 'tripwire lessons', `map ${JSON.stringify(map)} does not give stages 1, 2, 3 once each`, `update amocrm.system_settings set value = '{"67": 1, "68": 2, "69": 3}' where key = 'tripwire_lessons';`);
  }
  if (!facts.lessons_table) {
    add('warn', 'lessons', `public.lessons not found: cannot check that lessons ${Object.keys(map).join(', ')} exist`);
    return;
  }
  const problems = lessonProblems(facts);
  if (problems.length) {
    add('fail', 'lessons', problems.join('; '), "point tripwire_lessons at the live lesson ids: update amocrm.system_settings set value = '{\"<id>\": 1, …}' where key = 'tripwire_lessons';");
    return;
  }
  const list = facts.lessons.map((l) => `${l.id} '${l.title}' → stage ${l.stage_number}`).join('; ');
  const modules = [...new Set(facts.lessons.map((l) => `${l.module_id}${l.module_title ? ` '${l.module_title}'` : ''}`))];
  add('ok', 'lessons', `${list} (module ${modules.join(', ')}), none archived`);
}

function checkRls(facts: DoctorFacts, add: Add): void {
  const off = facts.rls.filter((r) => r.exists && !r.enabled).map((r) => r.table);
  const absent = facts.rls.filter((r) => !r.exists).map((r) => r.table);
  if (off.length) {
    add('fail', 'RLS', `off for ${off.join(', ')}`, off.map((t) => `alter table ${t} enable row level security;`).join(' '));
  } else if (absent.length) {
    add('fail', 'RLS', `${absent.join(', ')} not found`, 'the sync needs public.lesson_progress (the academy table the trigger watches)');
  } else {
    add('ok', 'RLS', `on for ${facts.rls.map((r) => r.table).join(', ')}`);
  }
}

function checkOutbox(facts: DoctorFacts, add: Add): void {
  const counts = Object.entries(facts.events ?? {}).sort(([a], [b]) => a.localeCompare(b));
  const summary = counts.length ? counts.map(([s, n]) => `${s} ${n}`).join(', ') : 'no events yet';
  const parked = facts.events?.parked ?? 0;
  const dead = facts.events?.dead ?? 0;
  if (parked || dead) {
    add('warn', 'outbox', `${summary}${parked ? `; ${parked} parked until an operator fixes tokens/account (they resume when tokens are stored)` : ''}${dead ? `; ${dead} dead: replay them with POST /api/amocrm/replay` : ''}`);
  } else {
    add('ok', 'outbox', summary);
  }
}
