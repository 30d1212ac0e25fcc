// Cold start of the functions as Netlify deploys them. In one run: packages the functions
// with the site's netlify.toml (dev/netlify-package.ts) beside a one-dependency function
// (zod only) packaged the same way, then, on the deploy's Node, imports each packaged
// module in a fresh process per sample and takes the median. For each function it also
// says what the import pays for: every file loaded (grouped by package), what each external
// dependency adds in the order the module imports them, and the function's own bundled code.
//
// Used by the benchmark (`measureColdStart`); `npx tsx scripts/bench/cold-start.ts` prints the table.
import { execFile } from 'node:child_process';
import { builtinModules } from 'node:module';
import { mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join, relative } from 'node:path';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import { deployNode, majorOf, packageFunctions, REPO_ROOT, siteSettings, type PackagedFunction } from '../../dev/netlify-package.ts';

const PROBE = join(dirname(fileURLToPath(import.meta.url)), 'import-probe.mjs');
export const ONE_DEPENDENCY = 'one-dependency';

// The yardstick: a v2 function whose only dependency is zod, doing a little work at import
// like the real ones (a schema), so the comparison is "our functions" vs "a function".
const ONE_DEPENDENCY_SOURCE = `import { z } from 'zod';
const Body = z.object({ ok: z.boolean() });
export default async (req: Request) => Response.json(Body.parse({ ok: req.method === 'GET' }));
export const config = { path: '/api/one-dependency' };
`;

export interface ColdStartOptions {
  /** Fresh processes per measurement. Default 7. */
  samples?: number;
  /** Progress lines (default: none). */
  log?: (line: string) => void;
}

export interface LoadedPackage { package: string; files: number; kB: number }
export interface DependencyCost { specifier: string; medianMs: number }

export interface ColdStart {
  name: string;
  /** Median of `import(module)` in a fresh process on the deploy's Node. */
  medianMs: number;
  samplesMs: number[];
  /** Median of the whole fresh process: Node's own start-up plus the import. */
  processMedianMs: number;
  /** Median import of the function module once its external dependencies are loaded: its own top-level code. */
  ownCodeMedianMs: number;
  /** medianMs / the one-dependency function's medianMs. */
  ratio: number;
  /**
   * The external packages the bundled module imports, in its import order, each with the
   * median time it adds on top of the ones before it (Node built-ins it is first to load included).
   */
  dependencies: DependencyCost[];
  /** Every file the import loads, grouped by package ('(function)' = the bundled module itself). */
  loaded: LoadedPackage[];
  loadedFiles: number;
  loadedKB: number;
}

const median = (xs: number[]) => {
  const s = [...xs].sort((a, b) => a - b);
  const m = s.length >> 1;
  return s.length % 2 ? s[m]! : (s[m - 1]! + s[m]!) / 2;
};
const round = (x: number) => Math.round(x * 10) / 10;

async function probe(node: string, cwd: string, args: string[]): Promise<{ value: any; wallMs: number }> {
  const started = performance.now();
  const { stdout } = await promisify(execFile)(node, [PROBE, ...args], { cwd, env: {}, maxBuffer: 64 << 20 });
  const wallMs = performance.now() - started;
  const line = stdout.split('\n').find((l) => l.startsWith('@@probe '));
  if (!line) throw new Error(`import probe ${args.join(' ')} printed no result:\n${stdout.slice(-2000)}`);
  return { value: JSON.parse(line.slice('@@probe '.length)), wallMs };
}

/** Bare specifiers the bundled module imports statically (esbuild hoists every external import to the top). */
function externalImports(modulePath: string): string[] {
  const source = readFileSync(modulePath, 'utf8');
  const specs = [...source.matchAll(/^import\s[^;]*?\sfrom\s*["']([^"'.][^"']*)["']/gm), ...source.matchAll(/^import\s*["']([^"'.][^"']*)["']/gm)]
    .map((m) => m[1]!)
    .filter((s) => !s.startsWith('node:') && !builtinModules.includes(s));
  return [...new Set(specs)];
}

const packageOf = (file: string, fn: PackagedFunction) => {
  const rel = relative(fn.dir, file);
  const m = /(?:^|\/)node_modules\/((?:@[^/]+\/)?[^/]+)/.exec(rel.split('\\').join('/'));
  if (m) return m[1]!;
  return file === fn.module ? '(function)' : `(package) ${rel}`;
};

/** Measures the packaged functions' cold start against a one-dependency function, all packaged in this run. */
export async function measureColdStart(opts: ColdStartOptions = {}): Promise<ColdStart[]> {
  const samples = opts.samples ?? 7;
  const log = opts.log ?? (() => undefined);
  const site = siteSettings();
  const node = await deployNode(majorOf(site.nodeVersion));
  // The yardstick's source sits inside the repository so it resolves zod from node_modules;
  // every package is unpacked outside it (see packageFunctions).
  mkdirSync(join(REPO_ROOT, '.tmp'), { recursive: true });
  const srcRoot = mkdtempSync(join(REPO_ROOT, '.tmp', 'cold-start-src-'));
  const outDir = mkdtempSync(join(tmpdir(), 'cold-start-'));
  try {
    log(`packaging the functions and the ${ONE_DEPENDENCY} function (netlify.toml settings)…`);
    mkdirSync(join(srcRoot, 'functions'));
    writeFileSync(join(srcRoot, 'functions', `${ONE_DEPENDENCY}.ts`), ONE_DEPENDENCY_SOURCE);
    const packages = [
      ...(await packageFunctions({ outDir: join(outDir, 'site'), site })),
      ...(await packageFunctions({ outDir: join(outDir, 'yardstick'), srcDir: join(srcRoot, 'functions'), site })),
    ];

    // One tiny module per external dependency, inside the package so it resolves as the function does.
    const deps = new Map<string, { spec: string; path: string }[]>();
    for (const fn of packages) {
      deps.set(fn.name, externalImports(fn.module).map((spec, i) => {
        const path = join(dirname(fn.module), `__cold_start_dep_${i}.mjs`);
        writeFileSync(path, `import ${JSON.stringify(spec)};\n`);
        return { spec, path };
      }));
    }

    // Round-robin: sample i of every function runs before sample i+1 of any, so a burst of
    // load on the machine spreads over all of them instead of landing on one.
    const times = new Map<string, number[]>(packages.map((fn) => [fn.name, []]));
    const walls = new Map<string, number[]>(packages.map((fn) => [fn.name, []]));
    const own = new Map<string, number[]>(packages.map((fn) => [fn.name, []]));
    const steps = new Map<string, number[][]>(packages.map((fn) => [fn.name, deps.get(fn.name)!.map(() => [])]));
    for (let i = 0; i < samples; i++) {
      log(`sample ${i + 1}/${samples} on Node ${site.nodeVersion}…`);
      for (const fn of packages) {
        const { value, wallMs } = await probe(node, fn.dir, ['time', fn.module]);
        times.get(fn.name)!.push(value.importMs);
        walls.get(fn.name)!.push(wallMs);
        const stepped = (await probe(node, fn.dir, ['steps', fn.module, ...deps.get(fn.name)!.map((d) => d.path)])).value;
        own.get(fn.name)!.push(stepped.ownMs);
        stepped.stepsMs.forEach((ms: number, d: number) => steps.get(fn.name)![d]!.push(ms));
      }
    }

    const figures: Omit<ColdStart, 'ratio'>[] = [];
    for (const fn of packages) {
      const files: { file: string; bytes: number }[] = (await probe(node, fn.dir, ['modules', fn.module])).value;
      const byPackage = new Map<string, { files: number; bytes: number }>();
      for (const f of files) {
        const key = packageOf(f.file, fn);
        const entry = byPackage.get(key) ?? { files: 0, bytes: 0 };
        entry.files++;
        entry.bytes += f.bytes;
        byPackage.set(key, entry);
      }
      figures.push({
        name: fn.name,
        medianMs: round(median(times.get(fn.name)!)),
        samplesMs: times.get(fn.name)!.map(round),
        processMedianMs: round(median(walls.get(fn.name)!)),
        ownCodeMedianMs: round(median(own.get(fn.name)!)),
        dependencies: deps.get(fn.name)!.map(({ spec }, d) => ({ specifier: spec, medianMs: round(median(steps.get(fn.name)![d]!)) })),
        loaded: [...byPackage].map(([pkg, v]) => ({ package: pkg, files: v.files, kB: round(v.bytes / 1024) })).sort((a, b) => b.kB - a.kB),
        loadedFiles: files.length,
        loadedKB: round(files.reduce((sum, f) => sum + f.bytes, 0) / 1024),
      });
    }
    const yardstick = figures.find((f) => f.name === ONE_DEPENDENCY);
    if (!yardstick) throw new Error(`the ${ONE_DEPENDENCY} function was not packaged`);
    return figures.map((f) => ({ ...f, ratio: Math.round((f.medianMs / yardstick.medianMs) * 100) / 100 }));
  } finally {
    rmSync(srcRoot, { recursive: true, force: true });
    rmSync(outDir, { recursive: true, force: true });
  }
}

/** A plain-text table of the figures, one function per block. */
export function formatColdStart(figures: ColdStart[]): string {
  const lines: string[] = [];
  for (const f of figures) {
    lines.push(`${f.name}: import ${f.medianMs} ms median (${f.ratio}× ${ONE_DEPENDENCY}), process ${f.processMedianMs} ms, own code ${f.ownCodeMedianMs} ms; loads ${f.loadedFiles} files, ${f.loadedKB} kB`);
    if (f.dependencies.length) lines.push(`  import order, each on top of the previous: ${f.dependencies.map((d) => `${d.specifier} +${d.medianMs} ms`).join(', ')}, own code +${f.ownCodeMedianMs} ms`);
    const top = f.loaded.slice(0, 10);
    const rest = f.loaded.slice(10);
    const restKB = round(rest.reduce((sum, p) => sum + p.kB, 0));
    lines.push(`  loaded: ${top.map((p) => `${p.package} ${p.files} files/${p.kB} kB`).join(', ')}${rest.length ? `, ${rest.length} more packages ${restKB} kB` : ''}`);
  }
  return lines.join('\n');
}

if (process.argv[1] && fileURLToPath(import.meta.url) === process.argv[1]) {
  try {
    const figures = await measureColdStart({ log: (l) => console.error(l) });
    console.log(formatColdStart(figures));
    const worst = figures.filter((f) => f.name !== ONE_DEPENDENCY).sort((a, b) => b.ratio - a.ratio)[0];
    console.log(`✅ cold start measured: slowest ${worst?.name} ${worst?.medianMs} ms = ${worst?.ratio}× the one-dependency function`);
  } catch (err) {
    console.error(`❌ cold start not measured: ${(err as Error).message}`);
    process.exitCode = 1;
  }
}
