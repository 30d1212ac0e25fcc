// The migrations line and the lesson trigger's line: what supabase/migrations creates
// (expected.ts) against what amocrm_doctor_facts reports. The facts name the functions
// without their argument types, so a function is compared by name: one that is missing
// altogether is named, with the migration that creates it.
import type { DoctorFacts } from './facts.ts';
import { expectedSchema, type Expected } from './expected.ts';
import { MIGRATE, type Add } from './report.ts';

const LESSON_TABLE = 'public.lesson_progress';
const nameOf = (signature: string) => signature.slice(0, signature.indexOf('('));

export function checkSchema(facts: DoctorFacts, add: Add, expected: Expected = expectedSchema()): void {
  checkMigrations(facts, expected, add);
  checkLessonTrigger(facts, expected, add);
}

function checkMigrations(facts: DoctorFacts, expected: Expected, add: Add): void {
  const m = facts.migrations;
  const missingFunctions = [...expected.functions].filter(([signature]) => !m.functions.includes(nameOf(signature)))
    .map(([signature, file]) => `public.${signature} (${file})`);
  const missingTables = [...expected.tables].filter(([table]) => !m.tables.includes(table))
    .map(([table, file]) => `amocrm.${table} (${file})`);
  if (!m.schema_amocrm || missingTables.length || missingFunctions.length) {
    const parts = [
      !m.schema_amocrm && 'schema amocrm missing',
      missingTables.length && `tables missing: ${missingTables.join(', ')}`,
      missingFunctions.length && `functions missing: ${missingFunctions.join(', ')}`,
    ].filter(Boolean);
    add('fail', 'migrations', parts.join('; '), MIGRATE);
  } else {
    const names = new Set([...expected.functions.keys()].map(nameOf));
    add('ok', 'migrations', `schema amocrm, tables ${m.tables.join(', ')}; ${m.functions.length} public.amocrm_* functions (supabase/migrations: ${expected.tables.size} tables, ${names.size} functions)`);
  }
}

/** The trigger the migrations put on public.lesson_progress; the facts report amocrm_lesson_completed's state. */
function checkLessonTrigger(facts: DoctorFacts, expected: Expected, add: Add): void {
  const key = [...expected.triggers.keys()].find((k) => k.startsWith(`${LESSON_TABLE} `));
  const name = key?.split(' ')[1] ?? 'amocrm_lesson_completed';
  if (!facts.trigger.present) {
    add('fail', 'trigger', `${name} on ${LESSON_TABLE} is missing`, `${MIGRATE}${key ? ` (${expected.triggers.get(key)} creates it)` : ''}`);
  } else if (!facts.trigger.enabled) {
    add('fail', 'trigger', `${name} on ${LESSON_TABLE} is disabled`, `alter table ${LESSON_TABLE} enable trigger ${name};`);
  } else {
    add('ok', 'trigger', `${name} on ${LESSON_TABLE}, enabled`);
  }
}
