// What `npm run doctor` checks a deployment against (never a secret value); the doctor's
// reading of it is lib/ops/doctor/facts.ts. The only module that names amocrm_doctor_facts.
import type { Db } from './port.ts';

export const doctorFacts = <T>(db: Db) => db.rpc<T>('amocrm_doctor_facts');
