// One cold-start sample, run in a fresh process on the deploy's Node by cold-start.ts.
// Plain JavaScript so it loads nothing but node: built-ins before the module under test.
//   time <module>               how long `import(module)` takes
//   steps <module> <dep.mjs>... imports each dependency module in turn, then the module:
//                               what each dependency adds on top of the ones before it
//                               (Node built-ins included), and the module's own code
//   modules <module>            every file loaded while importing it (import and require)
// Prints one line: "@@probe " + JSON.
import { registerHooks } from 'node:module';
import { statSync } from 'node:fs';
import { fileURLToPath, pathToFileURL } from 'node:url';

const [mode, target, ...first] = process.argv.slice(2);
const url = (path) => pathToFileURL(path).href;
const report = (value) => process.stdout.write(`@@probe ${JSON.stringify(value)}\n`);

if (mode === 'modules') {
  const files = new Set();
  registerHooks({
    load(u, context, nextLoad) {
      if (u.startsWith('file:')) files.add(fileURLToPath(u));
      return nextLoad(u, context);
    },
  });
  await import(url(target));
  report([...files].map((file) => ({ file, bytes: statSync(file).size })));
} else if (mode === 'time') {
  const started = performance.now();
  await import(url(target));
  report({ importMs: performance.now() - started, sinceProcessStartMs: performance.now() });
} else if (mode === 'steps') {
  const stepsMs = [];
  for (const dep of first) {
    const started = performance.now();
    await import(url(dep));
    stepsMs.push(performance.now() - started);
  }
  const started = performance.now();
  await import(url(target));
  report({ stepsMs, ownMs: performance.now() - started });
} else {
  throw new Error(`usage: import-probe.mjs time|steps|modules <module> [dep.mjs...]; got ${mode}`);
}
