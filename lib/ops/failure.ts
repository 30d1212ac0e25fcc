// What an operator command prints for an error it hits: one ❌ line per problem, with
// what to do when the error knows it. Never a stack trace, never a secret.
import { AmoError } from '../amocrm/errors.ts';
import { ConfigError } from '../config.ts';
import { errorText, redact } from '../log.ts';

/** The error's message, with amoCRM's classification code when it has one. */
export function failureText(err: unknown): string {
  if (err instanceof AmoError) return `${err.message} (${err.code})`;
  return errorText(err);
}

export function failureLines(err: unknown): string[] {
  if (err instanceof ConfigError) {
    return err.problems.map((p) => redact(`❌ ${p.variable}: ${p.message} → set it in the environment (Netlify → Environment variables, .env locally)`));
  }
  const whatToDo = err instanceof AmoError ? err.details.whatToDo : undefined;
  return [redact(`❌ ${failureText(err)}${whatToDo ? ` → ${whatToDo}` : ''}`)];
}
