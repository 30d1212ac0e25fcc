// The README's first set-up command: `npm start` runs the demo on the embedded default,
// shows the three moves with the runbook's log lines, a second funnel moving the deal in
// the partners' pipeline with a note and a task for the manager, and keeps serving.
import { spawn } from 'node:child_process';
import { describe, expect, it } from 'vitest';

describe('npm start', () => {
  it('walks the deal through the three stages, moves the second funnel\'s deal with a note, and keeps serving', async () => {
    // node itself with tsx's loader (not npx), so killing the child stops the server.
    const child = spawn(process.execPath, ['--import', 'tsx', 'dev/start.ts'], { env: { ...process.env, PORT: '0' }, stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '';
    child.stdout.on('data', (d) => { out += d; });
    child.stderr.on('data', (d) => { out += d; });
    try {
      await new Promise<void>((resolve, reject) => {
        const timer = setTimeout(() => reject(new Error(`no prompt within 90 s:\n${out}`)), 90_000);
        child.stdout.on('data', () => { if (out.includes('Ctrl+C')) { clearTimeout(timer); resolve(); } });
        child.on('exit', (code) => reject(new Error(`exited with ${code}:\n${out}`)));
      });
      const moved = out.split('\n').filter((l) => /✅.*AmoCRM.*перемещена/.test(l));
      expect(moved.map((l) => /Сделка (\d+) успешно перемещена на этап (\d+)/.exec(l)?.slice(1).join(' → '))).toEqual([
        '31000001 → 70011', '31000001 → 70012', '31000001 → 70013', '31000002 → 80011']);
      // The second funnel's deal, in the partners' pipeline, as the stand-in holds it.
      expect(out).toMatch(/сделка 31000002 в воронке 7000002 «Партнёры» теперь на этапе 80011/);
      expect(out).toMatch(/✅ \[AmoCRM\] Заметка для менеджера добавлена в сделку 31000002/);
      expect(out).toMatch(/заметка в сделке 31000002 в amoCRM: «Студент прошёл урок 1 «Бонус» \d\d\.\d\d \d\d:\d\d»/);
      expect(out).toMatch(/задача ответственному менеджеру \(\d+\): «Позвонить: прошла бонусный урок, предложить партнёрство», срок через \d+ мин/);
      expect(out).toMatch(/Токен истёк/);
      expect(out).toMatch(/Токены успешно обновлены/);
      expect(out).toMatch(/#1 урок 67 → done, #2 урок 68 → done, #3 урок 69 → done/);
      expect(out).not.toMatch(/❌|standin-(at|rt)-[0-9a-f]/);
      expect(child.exitCode).toBeNull(); // still serving
    } finally {
      const exited = new Promise((resolve) => child.once('exit', resolve));
      child.kill('SIGTERM');
      await exited;
    }
  }, 120_000);
});
