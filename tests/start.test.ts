// The README's first set-up command: `npm start` runs the demo on the embedded default,
// shows the three moves with the runbook's log lines, and keeps serving.
import { spawn } from 'node:child_process';
import { describe, expect, it } from 'vitest';

describe('npm start', () => {
  it('walks the deal through the three stages and keeps serving', async () => {
    // node itself with tsx's loader (not npx), so killing the child stops the server.
    const child = spawn(process.execPath, ['--import', 'tsx', 'dev/start.ts'], { env: { ...process.env, PORT: '0' }, stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '';
    child.stdout.on('data', (d) => { out += d; });
    child.stderr.on('data', (d) => { out += d; });
    try {
      await new Promise<void>((resolve, reject) => {
        const timer = setTimeout(() => reject(new Error(`no prompt within 45 s:\n${out}`)), 45_000);
        child.stdout.on('data', () => { if (out.includes('Ctrl+C')) { clearTimeout(timer); resolve(); } });
        child.on('exit', (code) => reject(new Error(`exited with ${code}:\n${out}`)));
      });
      const moved = out.split('\n').filter((l) => /✅.*AmoCRM.*перемещена/.test(l));
      expect(moved.map((l) => /на этап (\d+)/.exec(l)?.[1])).toEqual(['70011', '70012', '70013']);
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
  }, 60_000);
});
