// `npm run amocrm -- funnels …` over a stack (PGlite, or PostgreSQL with DATABASE_URL) and
// the amoCRM stand-in: today's variables are the first funnel; a valid file is saved with
// who saved it; every refused change (a check, a broken file, a concurrent save) leaves the
// configuration in the database exactly as it was; a rollback brings an old version back
// as a new one, and not when it no longer passes the checks; `check` sees a stage deleted
// or reordered in amoCRM since. Every path ends with one clear line and an exit code.
import { spawn } from 'node:child_process';
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { pathToFileURL } from 'node:url';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { Db } from '../lib/db/port.ts';
import type { Funnel } from '../lib/funnels/model.ts';
import type { CommandResult } from '../lib/ops/command.ts';
import { funnelsCommand, type FunnelsArgs } from '../lib/ops/funnels-command.ts';
import { CRASH_TRACE, emptyDirectory, lastLine, root, runScript } from './helpers/cli.ts';
import { createStack, OTHER_PIPELINE, PIPELINE, STAGE, type Stack } from './helpers/stack.ts';

/** A third pipeline of the account, for a second funnel: its first stage is where deals come in. */
const COURSE_PIPELINE = 5_000_003;
const COURSE = { entry: 701, lessonA: 711, lessonB: 712 } as const;
const coursePipeline = (statuses = [
  { id: COURSE.entry, name: 'Записался', sort: 10 },
  { id: COURSE.lessonA, name: 'Прошёл модуль 1', sort: 20 },
  { id: COURSE.lessonB, name: 'Прошёл модуль 2', sort: 30 },
]) => ({ id: COURSE_PIPELINE, name: 'Курс', statuses });

const tripwire = (): Funnel => ({
  key: 'tripwire', name: 'Tripwire', pipelineId: PIPELINE,
  steps: [{ lessons: [67], stageId: STAGE.lesson1 }, { lessons: [68], stageId: STAGE.lesson2, note: true }, { lessons: [69], stageId: STAGE.lesson3 }],
});
const course = (): Funnel => ({
  key: 'course', name: 'Основной курс', pipelineId: COURSE_PIPELINE,
  steps: [{ lessons: [66, 67], stageId: COURSE.lessonA }, { lessons: [70], stageId: COURSE.lessonB, task: { text: 'Позвонить: прошёл модуль 2', dueMinutes: 60 } }],
});

let s: Stack;
const files = new Map<string, string>();
const read = async (path: string) => {
  const text = files.get(path);
  if (text === undefined) throw Object.assign(new Error('no such file'), { code: 'ENOENT' });
  return text;
};

/** The command as the CLI runs it, over `db` (default: the stack's). */
async function funnels(args: Partial<FunnelsArgs> & { action: FunnelsArgs['action'] }, db: Db = s.t.db): Promise<CommandResult> {
  const result = await funnelsCommand({ db, env: s.env }, { by: 'tester', ...args }, read);
  expect(result.lines.join('\n')).not.toMatch(CRASH_TRACE);
  return result;
}

let fileSeq = 0;
const file = (value: unknown) => {
  const path = `funnels-${++fileSeq}.json`;
  files.set(path, typeof value === 'string' ? value : JSON.stringify(value));
  return path;
};

/** What the database holds: the versions and the configuration in force, read in plain SQL. */
async function stored() {
  const rows = await s.t.sql('select version, funnels, changed_by, note from amocrm.funnel_versions order by version desc');
  return { version: rows.length ? Number(rows[0]!.version) : 0, funnels: rows[0]?.funnels as Funnel[] | undefined, rows };
}

/** Saves a known configuration, so a test starts from it whatever ran before. */
async function start(config: Funnel[] = [tripwire(), course()]) {
  const r = await funnels({ action: 'set', arg: file({ funnels: config }) });
  expect(r.exitCode, r.lines.join('\n')).toBe(0);
  return stored();
}

beforeAll(async () => {
  s = await createStack();
  await s.storeTokens();
  s.amo.addPipeline(coursePipeline());
  await s.t.sql(`insert into public.lessons (id, module_id, title, is_archived) values (91, 12, 'Снятый урок', true) on conflict (id) do nothing`);
});
afterAll(async () => {
  await s?.close();
});

describe('npm run amocrm -- funnels', () => {
  it('list on a deployment that never saved funnels: today\'s variables become version 1', async () => {
    const fresh = await createStack();
    try {
      await fresh.storeTokens();
      const r = await funnelsCommand({ db: fresh.t.db, env: fresh.env }, { action: 'list', by: 'tester' }, read);
      expect(r.exitCode).toBe(0);
      expect(r.lines.at(-1)).toBe('✅ 1 funnel(s), version 1');
      const [row] = await fresh.t.sql('select version, changed_by, funnels from amocrm.funnel_versions');
      expect(row).toMatchObject({ version: 1, changed_by: 'env' });
      expect((row!.funnels as Funnel[])[0]!.steps.map((st) => [st.lessons, st.stageId])).toEqual([[[67], STAGE.lesson1], [[68], STAGE.lesson2], [[69], STAGE.lesson3]]);
    } finally {
      await fresh.close();
    }
  });

  it('set: a valid file is saved as the next version with who saved it and why; show names lessons and stages', async () => {
    await funnels({ action: 'list' }); // today's variables are version 1 on a fresh database
    const before = (await stored()).version;
    expect(before).toBeGreaterThan(0);
    const r = await funnels({ action: 'set', arg: file({ funnels: [tripwire(), course()], note: 'второй курс' }), by: 'Айгерим' });
    expect(r.exitCode, r.lines.join('\n')).toBe(0);
    expect(r.lines.at(-1)).toBe(`✅ saved version ${before + 1} by Айгерим: 2 funnel(s) (was version ${before})`);
    const after = await stored();
    expect(after.version).toBe(before + 1);
    expect(after.rows[0]).toMatchObject({ changed_by: 'Айгерим', note: 'второй курс' });
    expect(after.funnels).toEqual([tripwire(), course()]);

    const shown = await funnels({ action: 'show', arg: 'course' });
    expect(shown.exitCode).toBe(0);
    expect(shown.lines).toContain(`  1. lesson 66 'Вводный урок', 67 'Урок 1. Что умеет AI' → stage ${COURSE.lessonA} 'Прошёл модуль 1'`);
    expect(shown.lines).toContain(`  2. lesson 70 'Бонус' → stage ${COURSE.lessonB} 'Прошёл модуль 2'   + task 'Позвонить: прошёл модуль 2' due in 60 min`);
    expect(shown.lines.at(-1)).toBe(`✅ funnel course: 2 step(s), every check passed (version ${before + 1})`);
  });

  const broken: [string, () => Funnel[], RegExp][] = [
    ['an unknown stage', () => { const f = tripwire(); f.steps[1]!.stageId = 599; return [f]; }, /^❌ воронка «tripwire», шаг 2: этапа 599 нет ни в одной воронке amoCRM → /],
    ['a stage of another pipeline', () => { const f = tripwire(); f.steps[2]!.stageId = STAGE.other; return [f]; }, new RegExp(`^❌ воронка «tripwire», шаг 3: этап ${STAGE.other} из другой воронки amoCRM: ${OTHER_PIPELINE}`)],
    ['the won stage', () => { const f = tripwire(); f.steps[2]!.stageId = 142; return [f]; }, /^❌ воронка «tripwire», шаг 3: этап 142 — системный «успешно реализовано»/],
    ['the lost stage', () => { const f = tripwire(); f.steps[0]!.stageId = 143; return [f]; }, /^❌ воронка «tripwire», шаг 1: этап 143 — системный/],
    ['the incoming stage', () => { const f = course(); f.steps[0]!.stageId = COURSE.entry; return [f]; }, /^❌ воронка «course», шаг 1: этап 701 «Записался» — входящий этап/],
    ['an archived lesson', () => { const f = tripwire(); f.steps[0]!.lessons = [67, 91]; return [f]; }, /^❌ воронка «tripwire», шаг 1: урок 91 «Снятый урок» в архиве → /],
    ['a lesson that does not exist', () => { const f = course(); f.steps[1]!.lessons = [70, 999]; return [f]; }, /^❌ воронка «course», шаг 2: урока 999 нет в public\.lessons → /],
    ['steps in the wrong order', () => { const f = tripwire(); f.steps.reverse(); return [f]; }, /^❌ воронка «tripwire», шаг 2: этап 512 «Урок 2 пройден» стоит в amoCRM раньше этапа шага 1 513/],
    ['an unknown pipeline', () => [{ ...course(), pipelineId: 5_999_999 }], /^❌ воронка «course»: воронки amoCRM 5999999 нет в аккаунте/],
  ];
  it.each(broken)('set refuses %s with what to fix, and the configuration stays as it was', async (_name, make, problem) => {
    const before = await start();
    const r = await funnels({ action: 'set', arg: file({ funnels: make() }) });
    expect(r.exitCode).toBe(1);
    expect(r.lines.some((l) => problem.test(l)), r.lines.join('\n')).toBe(true);
    expect(r.lines.at(-1)).toMatch(new RegExp(`^❌ refused: \\d+ problem\\(s\\), nothing saved \\(version ${before.version} stays\\)$`));
    expect(await stored()).toEqual(before);
  });

  it('set refuses a file that is not a funnels file, listing every problem, and saves nothing', async () => {
    const before = await start();
    const dupe = { funnels: [tripwire(), { ...course(), key: 'tripwire', steps: [{ lessons: [66], stageId: COURSE.lessonA, task: { text: '', dueMinutes: 0 } }] }] };
    const cases: [string, RegExp[]][] = [
      [file('{"funnels": ['), [/^❌ funnels-\d+\.json: not JSON: /]],
      [file(dupe), [/task\.text: a task needs its text/, /task\.dueMinutes: /, /funnel key tripwire is used twice/]],
      [file({ funnels: [{ ...tripwire(), steps: [{ lessons: [67, 67], stageId: STAGE.lesson1 }] }] }), [/lesson 67 is in funnel tripwire more than once/]],
      ['missing.json', [/^❌ cannot read missing\.json \(ENOENT\) → /]],
    ];
    for (const [path, problems] of cases) {
      const r = await funnels({ action: 'set', arg: path });
      expect(r.exitCode).toBe(1);
      for (const p of problems) expect(r.lines.some((l) => p.test(l)), `${p} in\n${r.lines.join('\n')}`).toBe(true);
      expect(r.lines.filter((l) => !l.startsWith('❌'))).toEqual([]);
    }
    expect(await stored()).toEqual(before);
  });

  it('set refuses a change someone else saved in between, and keeps theirs', async () => {
    const before = await start();
    const theirs = [course()];
    // Another operator saves right before this save reaches the database.
    const racing: Db = {
      async rpc<T>(fn: string, args?: Record<string, unknown>) {
        if (fn === 'amocrm_set_funnels') {
          const other = await s.t.db.rpc<{ saved: boolean }>('amocrm_set_funnels', { p_funnels: JSON.stringify(theirs), p_changed_by: 'другой оператор', p_expected_version: before.version });
          expect(other.saved).toBe(true);
        }
        return s.t.db.rpc<T>(fn, args);
      },
    };
    const r = await funnels({ action: 'set', arg: file({ funnels: [tripwire()] }) }, racing);
    expect(r.exitCode).toBe(1);
    expect(r.lines.at(-1)).toMatch(new RegExp(`^❌ refused: version ${before.version + 1} by другой оператор at .* was saved while this change was checked \\(it started from version ${before.version}\\), nothing saved → `));
    const after = await stored();
    expect(after.version).toBe(before.version + 1);
    expect(after.funnels).toEqual(theirs);
  });

  it('rollback saves an earlier version again as a new one; history lists them; an unknown version changes nothing', async () => {
    const first = await start([tripwire(), course()]);
    const second = await start([tripwire()]);
    const r = await funnels({ action: 'rollback', arg: String(first.version), by: 'Ержан' });
    expect(r.exitCode, r.lines.join('\n')).toBe(0);
    expect(r.lines.at(-1)).toBe(`✅ rolled back to version ${first.version}: saved as version ${second.version + 1} by Ержан, 2 funnel(s)`);
    const after = await stored();
    expect(after.version).toBe(second.version + 1);
    expect(after.funnels).toEqual(first.funnels);
    expect(after.rows[0]).toMatchObject({ changed_by: 'Ержан' });

    const history = await funnels({ action: 'history' });
    expect(history.exitCode).toBe(0);
    expect(history.lines[0]).toMatch(new RegExp(`^ +${after.version}  \\S+  by Ержан  tripwire, course .*← current$`));
    expect(history.lines.at(-1)).toBe(`✅ ${Math.min(50, after.version)} version(s) shown, current is ${after.version} → roll back: npm run amocrm -- funnels rollback <version>`);

    const unknown = await funnels({ action: 'rollback', arg: '99999' });
    expect(unknown.exitCode).toBe(1);
    expect(unknown.lines.at(-1)).toBe('❌ no version 99999 in the history, nothing changed → npm run amocrm -- funnels history');
    expect(await stored()).toEqual(after);
  });

  it('rollback refuses a version that no longer passes the checks (its lesson was archived since)', async () => {
    const old = await start([course()]);
    await start([tripwire()]);
    const before = await stored();
    await s.t.sql('update public.lessons set is_archived = true where id = 70');
    try {
      const r = await funnels({ action: 'rollback', arg: String(old.version) });
      expect(r.exitCode).toBe(1);
      expect(r.lines).toContain("❌ воронка «course», шаг 2: урок 70 «Бонус» в архиве → укажите действующий урок или верните этот из архива");
      expect(r.lines.at(-1)).toBe(`❌ refused: 1 problem(s), nothing saved (version ${before.version} stays)`);
    } finally {
      await s.t.sql('update public.lessons set is_archived = false where id = 70');
    }
    expect(await stored()).toEqual(before);
  });

  it('check without a file: the saved funnels against amoCRM now, a stage deleted or reordered since', async () => {
    await start([tripwire(), course()]);
    expect((await funnels({ action: 'check' })).exitCode).toBe(0);
    try {
      // amoCRM: module 2's stage deleted; then the two module stages swapped.
      s.amo.addPipeline(coursePipeline([{ id: COURSE.entry, name: 'Записался', sort: 10 }, { id: COURSE.lessonA, name: 'Прошёл модуль 1', sort: 20 }]));
      const deleted = await funnels({ action: 'check' });
      expect(deleted.exitCode).toBe(1);
      expect(deleted.lines[0]).toMatch(/^❌ воронка «course», шаг 2: этапа 712 нет ни в одной воронке amoCRM → /);
      expect(deleted.lines.at(-1)).toMatch(/^❌ saved funnels \(version \d+\): 1 problem\(s\) against amoCRM now → /);
      s.amo.addPipeline(coursePipeline([
        { id: COURSE.entry, name: 'Записался', sort: 10 }, { id: COURSE.lessonB, name: 'Прошёл модуль 2', sort: 20 }, { id: COURSE.lessonA, name: 'Прошёл модуль 1', sort: 30 },
      ]));
      const reordered = await funnels({ action: 'check' });
      expect(reordered.exitCode).toBe(1);
      expect(reordered.lines[0]).toMatch(/^❌ воронка «course», шаг 2: этап 712 «Прошёл модуль 2» стоит в amoCRM раньше этапа шага 1 711/);
      expect((await funnels({ action: 'show', arg: 'course' })).exitCode).toBe(1);
    } finally {
      s.amo.addPipeline(coursePipeline());
    }
    const fine = await funnels({ action: 'check' });
    expect(fine.lines.at(-1)).toMatch(/^✅ saved funnels \(version \d+, 2 funnel\(s\)\) pass every check against amoCRM now$/);
  });

  it('check <file> checks without saving; show of an unknown key names the keys there are', async () => {
    const before = await start([tripwire()]);
    const good = await funnels({ action: 'check', arg: file([tripwire(), course()]) });
    expect(good.exitCode).toBe(0);
    expect(good.lines.at(-1)).toMatch(/^✅ funnels-\d+\.json: 2 funnel\(s\) pass every check against amoCRM and the lessons$/);
    const unknown = await funnels({ action: 'show', arg: 'nope' });
    expect(unknown).toMatchObject({ exitCode: 1, lines: ['❌ no funnel "nope" (funnels: tripwire) → npm run amocrm -- funnels list'] });
    expect(await stored()).toEqual(before);
  });

  it('--by must say who: empty is refused before anything is read', async () => {
    const before = await start();
    const r = await funnels({ action: 'set', arg: file([tripwire()]), by: '  ' });
    expect(r).toMatchObject({ exitCode: 2, lines: ['❌ --by: who makes the change, 1 to 100 characters → --by "Ivan Petrov"'] });
    expect(await stored()).toEqual(before);
  });
});

describe('the funnels CLI as its own process (--embedded)', () => {
  // Each test starts a process with its own embedded stack: slow on a loaded machine.
  const dir = emptyDirectory();
  afterAll(() => dir.remove());
  const cli = (args: string[]) => runScript('scripts/amocrm.ts', args, { cwd: dir.path });

  it('set a file: saved by --by, exit 0, the last line says so', async () => {
    const path = join(dir.path, 'funnels.json');
    writeFileSync(path, JSON.stringify({ funnels: [{ ...tripwire(), pipelineId: 7_000_001, steps: [{ lessons: [67], stageId: 70_011 }, { lessons: [68, 69], stageId: 70_013 }] }] }));
    const run = await cli(['funnels', 'set', path, '--embedded', '--by', 'ops']);
    expect(`${run.stdout}${run.stderr}`).not.toMatch(CRASH_TRACE);
    expect(lastLine(run.stdout)).toBe('✅ saved version 2 by ops: 1 funnel(s) (was version 1)');
    expect(run.code).toBe(0);
  }, 120_000);

  it.each([
    [['funnels'], /^❌ funnels needs an action: list, show, set, check, history, rollback → see the usage above$/],
    [['funnels', 'drop'], /^❌ funnels drop: expected one of /],
    [['funnels', 'set'], /^❌ funnels set needs a file/],
    [['funnels', 'rollback', 'last'], /^❌ funnels rollback last: the version is a positive whole number/],
    [['funnels', 'list', 'extra'], /^❌ unexpected argument\(s\) after funnels list: extra/],
    [['pipelines', '--by', 'x'], /^❌ --by and --note are for funnels set and rollback/],
  ])('bad arguments %j: usage, one ❌ line, exit 2', async (args, last) => {
    const run = await cli(args);
    expect(`${run.stdout}${run.stderr}`).not.toMatch(CRASH_TRACE);
    expect(lastLine(run.stderr)).toMatch(last);
    expect(run.code).toBe(2);
  }, 120_000);

  it('set - reads the file from standard input', async () => {
    const loader = pathToFileURL(join(root, 'node_modules', 'tsx', 'dist', 'loader.mjs')).href;
    const env = Object.fromEntries(Object.entries(process.env).filter(([k]) => !/^(AMOCRM_|SUPABASE_|DATABASE_URL$)/.test(k)));
    const child = spawn(process.execPath, ['--import', loader, join(root, 'scripts/amocrm.ts'), 'funnels', 'set', '-', '--embedded', '--by', 'stdin'], { cwd: dir.path, env });
    let stdout = '';
    child.stdout.on('data', (d) => { stdout += d; });
    child.stdin.end(JSON.stringify([{ key: 'short', name: 'Короткая', pipelineId: 7_000_001, steps: [{ lessons: [69], stageId: 70_013 }] }]));
    const code = await new Promise<number | null>((resolve) => child.on('close', resolve));
    expect(lastLine(stdout)).toBe('✅ saved version 2 by stdin: 1 funnel(s) (was version 1)');
    expect(code).toBe(0);
  }, 120_000);

  it('a file that is not there: ❌ with what to give, exit 1', async () => {
    const run = await cli(['funnels', 'check', 'nowhere.json', '--embedded']);
    expect(lastLine(run.stdout)).toBe('❌ cannot read nowhere.json (ENOENT) → give the path of a .json file, or - for standard input');
    expect(run.code).toBe(1);
  }, 120_000);
});
