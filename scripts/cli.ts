// How every entry point in scripts/ reads its flags and ends: strict flags (an unknown or
// incomplete one is a usage error, exit 2), and whatever happens, one clear last line and
// an exit code: 0 done, 1 failed, 2 bad arguments. Never a stack trace (DEBUG=1 shows it).
import { parseArgs, type ParseArgsConfig } from 'node:util';
import { ConfigError } from '../lib/config.ts';
import { failureLines } from '../lib/ops/failure.ts';
import { redact } from '../lib/log.ts';

/** Bad arguments: the message says which, the usage follows, exit 2. */
export class UsageError extends Error {
  override readonly name = 'UsageError';
}

/**
 * A failure the entry point has already put into words (no database, unreachable server):
 * printed as `❌ <message>`, exit 1.
 */
export class CliFailure extends Error {
  override readonly name = 'CliFailure';
}

type Options = NonNullable<ParseArgsConfig['options']>;

/** node:util parseArgs, strict, with its errors turned into a UsageError. */
export function parseCommandLine<O extends Options>(argv: string[], options: O, allowPositionals = false) {
  try {
    return parseArgs({ args: argv, options, allowPositionals, strict: true });
  } catch (err) {
    const code = (err as { code?: string }).code;
    if (code?.startsWith('ERR_PARSE_ARGS_')) {
      // Node's text ends with advice for script authors ("To specify a positional argument
      // starting with a '-', place it at the end of the command after '--'"): drop it.
      throw new UsageError(String((err as Error).message).split('. To ')[0]!.replace(/\.$/, ''));
    }
    throw err;
  }
}

const say = (line: string) => console.log(redact(line));
const complain = (line: string) => console.error(redact(line));

/** Bad arguments found before runMain is running (a script's top-level flags): usage, ❌, exit 2. */
export function exitOnUsageError<T>(parse: () => T, usage: string): T {
  try {
    return parse();
  } catch (err) {
    if (!(err instanceof UsageError)) throw err;
    complain(usage);
    complain(`❌ ${err.message} → see the usage above`);
    process.exit(2);
  }
}

/**
 * Runs `main` and exits with its code. A UsageError prints the usage, then `❌ <message>`
 * (exit 2); a ConfigError one ❌ line per variable, then what to do (exit 1); anything
 * else `❌ <message>` (exit 1).
 */
export async function runMain(main: () => Promise<number>, usage: string): Promise<never> {
  const die = (err: unknown): never => {
    if (process.env.DEBUG) console.error(err);
    if (err instanceof UsageError) {
      complain(usage);
      complain(`❌ ${err.message} → see the usage above`);
      process.exit(2);
    }
    if (err instanceof ConfigError) {
      for (const line of failureLines(err)) say(line);
      say(`❌ configuration incomplete: ${err.problems.length} variable(s) above → fix them in .env (see .env.example), or try a fresh local stack with --embedded`);
      process.exit(1);
    }
    if (err instanceof CliFailure) {
      say(`❌ ${err.message}`);
      process.exit(1);
    }
    say(`${failureLines(err).at(-1)!}${process.env.DEBUG ? '' : ' (DEBUG=1 shows the stack trace)'}`);
    process.exit(1);
  };
  // A connection that breaks in the background (a pool's idle client) ends here too.
  process.on('uncaughtException', die);
  process.on('unhandledRejection', die);
  let code: number;
  try {
    code = await main();
  } catch (err) {
    return die(err);
  }
  process.exit(code);
}
