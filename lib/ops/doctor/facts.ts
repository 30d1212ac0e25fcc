// The database's side of the doctor: what amocrm_doctor_facts reports (never a secret
// value), fetched once per run; a database that cannot answer is one ❌ line saying why.
import type { Db } from '../../db/port.ts';
import { doctorFacts } from '../../db/doctor-facts.ts';
import { failureText } from '../failure.ts';
import { MIGRATE, type Add } from './report.ts';

export interface DoctorFacts {
  /** What is there: amocrm.* tables, public.amocrm_* function names (schema.ts compares them with the migrations). */
  migrations: { schema_amocrm: boolean; tables: string[]; functions: string[] };
  /** The lesson trigger (amocrm_lesson_completed on public.lesson_progress). */
  trigger: { present: boolean; enabled: boolean };
  pg_net: { installed: boolean };
  webhook: {
    url_set: boolean; url_scheme: string | null; url_host: string | null; url_path: string | null;
    secret_set: boolean; secret_length: number | null; secret_sha256: string | null;
  };
  tokens: {
    present: boolean; kind?: 'oauth' | 'long_lived'; expires_at?: string | null; auth_state?: string;
    auth_problem?: string | null; has_access_token?: boolean; has_refresh_token?: boolean; updated_at?: string;
  };
  tripwire_lessons: Record<string, number> | null;
  lessons: {
    id: number; stage_number: number | null; table_present: boolean; exists: boolean; title: string | null;
    module_id: number | string | null; module_title: string | null; module_exists: boolean;
    archived: boolean; module_archived: boolean;
  }[];
  lessons_table: boolean;
  modules_table: boolean;
  rls: { table: string; exists: boolean; enabled: boolean }[];
  events: Record<string, number>;
}

export interface FactsSource {
  db?: Db;
  databaseLabel?: string;
  databaseError?: string;
}

/** The facts, or undefined with the ❌/⚠️ line that says why (`supabaseReported`: its variables already have a line). */
export async function loadFacts(deps: FactsSource, supabaseReported: boolean, add: Add): Promise<DoctorFacts | undefined> {
  if (!deps.db && deps.databaseError) {
    add('fail', 'database', deps.databaseError, 'check the database URL (--database-url, DATABASE_URL or SUPABASE_URL) and that the server is running');
    return undefined;
  }
  if (!deps.db) {
    add(supabaseReported ? 'warn' : 'fail', 'database', 'not checked: no database connection',
      'set SUPABASE_URL and SUPABASE_SERVICE_ROLE_KEY (or pass --database-url postgres://…, or --embedded for a fresh local stack)');
    return undefined;
  }
  try {
    const facts = await doctorFacts<DoctorFacts>(deps.db);
    add('ok', 'database', `${deps.databaseLabel ?? 'reachable'}: amocrm_doctor_facts answered`);
    return facts;
  } catch (err) {
    const code = (err as { code?: string }).code;
    const fix = code === 'PGRST202' || code === '42883' || code === '3F000'
      ? `${MIGRATE} (they add amocrm_doctor_facts)`
      : code === '42501' || code === '401' || /permission|JWT|Invalid API key/i.test(failureText(err))
        ? 'use the service_role key in SUPABASE_SERVICE_ROLE_KEY (the amocrm_* functions are service_role only)'
        : 'check SUPABASE_URL / the database URL and that the project is running';
    add('fail', 'database', `amocrm_doctor_facts failed: ${failureText(err)}`, fix);
    return undefined;
  }
}
