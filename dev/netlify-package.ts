// Packages functions the way a Netlify deploy does: @netlify/zip-it-and-ship-it with the
// site's netlify.toml `[functions]` settings, translated the way @netlify/build translates
// them (packages/build/src/plugins_core/functions/zisi.ts), then unpacks each zip into a
// directory outside the repository, so a package can load only what it ships. Runs the
// packages on the deploy's Node. Used by the package test and the cold-start benchmark.
import { execFile, spawn } from 'node:child_process';
import { existsSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { dirname, isAbsolute, join, normalize, relative, resolve, sep } from 'node:path';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import { zipFunctions, type Config as ZisiConfig, type FunctionResult } from '@netlify/zip-it-and-ship-it';
import { unzipSync } from 'fflate';
import { parse as parseToml } from 'smol-toml';

export const REPO_ROOT = resolve(dirname(fileURLToPath(import.meta.url)), '..');
const RUNNER = join(REPO_ROOT, 'dev', 'run-packaged.mjs');

export interface SiteSettings {
  /** Absolute path of `[functions] directory`. */
  functionsDir: string;
  /** NODE_VERSION of `[build.environment]`: the build's Node, which Netlify passes on as the functions' runtime. */
  nodeVersion: string;
  /** `[functions]` as zip-it-and-ship-it takes it: '*' for the top-level keys, one entry per `[functions."name"]`. */
  config: ZisiConfig;
}

type TomlTable = Record<string, unknown>;
const isTable = (v: unknown): v is TomlTable => typeof v === 'object' && v !== null && !Array.isArray(v);

// The snake_case keys of netlify.toml mapped as @netlify/build maps them; `esbuild` becomes
// `esbuild_zisi` there too (v2 functions ignore it either way).
function functionConfig(t: TomlTable, root: string, nodeVersion: string): ZisiConfig[string] {
  const bundler = t.node_bundler === 'esbuild' ? 'esbuild_zisi' : t.node_bundler;
  return {
    externalNodeModules: t.external_node_modules as string[] | undefined,
    includedFiles: t.included_files as string[] | undefined,
    includedFilesBasePath: root,
    ignoredNodeModules: t.ignored_node_modules as string[] | undefined,
    nodeBundler: bundler as ZisiConfig[string]['nodeBundler'],
    nodeVersion,
    schedule: t.schedule as string | undefined,
    name: t.name as string | undefined,
  };
}

/** Reads `<root>/netlify.toml`. Throws a message naming the setting when one this packaging needs is absent. */
export function siteSettings(root = REPO_ROOT): SiteSettings {
  const toml = parseToml(readFileSync(join(root, 'netlify.toml'), 'utf8')) as TomlTable;
  const functions = isTable(toml.functions) ? toml.functions : {};
  const build = isTable(toml.build) ? toml.build : {};
  const nodeVersion = isTable(build.environment) ? build.environment.NODE_VERSION : undefined;
  if (typeof nodeVersion !== 'string' || !nodeVersion) throw new Error('netlify.toml: [build.environment] NODE_VERSION is not set');
  if (typeof functions.directory !== 'string') throw new Error('netlify.toml: [functions] directory is not set');

  const topLevel: TomlTable = {};
  const config: ZisiConfig = {};
  for (const [key, value] of Object.entries(functions)) {
    if (key === 'directory') continue;
    if (isTable(value)) config[key] = functionConfig(value, root, nodeVersion);
    else topLevel[key] = value;
  }
  config['*'] = functionConfig(topLevel, root, nodeVersion);
  return { functionsDir: resolve(root, functions.directory), nodeVersion, config };
}

export interface PackagedFunction {
  name: string;
  /** The unpacked package. */
  dir: string;
  /** The function module the package's entry point hands to Netlify's bootstrap. */
  module: string;
  /** zip-it-and-ship-it's result: what Netlify reads (routes, schedule, runtimeVersion, bundler…). */
  result: FunctionResult;
}

/**
 * Packages every function in `srcDir` (default: the site's functions directory) into
 * `outDir`/zips and unpacks each into `outDir`/<name>. `outDir` must be outside the
 * repository: Node looks for a missing package in every parent's node_modules.
 */
export async function packageFunctions(opts: { outDir: string; srcDir?: string; site?: SiteSettings; root?: string }): Promise<PackagedFunction[]> {
  const root = opts.root ?? REPO_ROOT;
  if (isInside(opts.outDir, root)) throw new Error(`packageFunctions: ${opts.outDir} is inside ${root}; unpack outside it, or the repository's node_modules would hide what a package lacks`);
  const site = opts.site ?? siteSettings(root);
  const zips = join(opts.outDir, 'zips');
  const results = await zipFunctions([opts.srcDir ?? site.functionsDir], zips, {
    archiveFormat: 'zip', basePath: root, repositoryRoot: root, config: site.config,
  });
  return results.map((result) => {
    const dir = join(opts.outDir, result.name);
    unzipInto(result.path, dir);
    return { name: result.name, dir, module: functionModule(dir, result), result };
  });
}

function isInside(path: string, dir: string): boolean {
  const rel = relative(resolve(dir), resolve(path));
  return rel === '' || (!rel.startsWith('..') && !isAbsolute(rel));
}

function unzipInto(zipPath: string, dir: string): void {
  for (const [name, data] of Object.entries(unzipSync(readFileSync(zipPath)))) {
    if (name.endsWith('/')) continue;
    if (isAbsolute(name) || normalize(name).split(sep).includes('..')) throw new Error(`${zipPath}: entry ${name} points outside the package`);
    const target = join(dir, name);
    mkdirSync(dirname(target), { recursive: true });
    writeFileSync(target, data);
  }
}

// The entry point is `export const handler = bootstrap.getLambdaHandler('./functions/x.mjs')`:
// the module named there is what Netlify's bootstrap imports and calls.
function functionModule(dir: string, result: FunctionResult): string {
  if (!result.entryFilename) throw new Error(`${result.name}: zip-it-and-ship-it reported no entry file`);
  const entry = readFileSync(join(dir, result.entryFilename), 'utf8');
  const named = /getLambdaHandler\((['"])(.+?)\1\)/.exec(entry)?.[2];
  if (!named) throw new Error(`${result.name}: ${result.entryFilename} names no function module (did zip-it-and-ship-it change its entry point?):\n${entry.slice(0, 300)}`);
  return join(dir, named);
}

/**
 * The `node` binary of `major` (the deploy's runtime), from `npm install node@<major>` in
 * .tmp/node<major>; installed on first use. Throws with npm's output when that fails.
 */
export async function deployNode(major: number, root = REPO_ROOT): Promise<string> {
  const prefix = join(root, '.tmp', `node${major}`);
  const bin = join(prefix, 'node_modules', '.bin', 'node');
  if (!(await nodeIs(bin, major))) {
    try {
      await promisify(execFile)('npm', ['install', '--prefix', prefix, '--no-audit', '--no-fund', `node@${major}`], { timeout: 10 * 60_000, maxBuffer: 16 << 20 });
    } catch (err) {
      const e = err as { stderr?: string; message: string };
      throw new Error(`could not install Node ${major} with "npm install --prefix ${prefix} node@${major}": ${(e.stderr || e.message).trim().split('\n').slice(-5).join(' | ')}`);
    }
    if (!(await nodeIs(bin, major))) throw new Error(`npm installed node@${major} but ${bin} does not report v${major}`);
  }
  return bin;
}

async function nodeIs(bin: string, major: number): Promise<boolean> {
  if (!existsSync(bin)) return false;
  const { stdout } = await promisify(execFile)(bin, ['--version']).catch(() => ({ stdout: '' }));
  return stdout.trim().startsWith(`v${major}.`);
}

export const majorOf = (version: string): number => {
  const major = Number(/^v?(\d+)/.exec(version.trim())?.[1]);
  if (!Number.isInteger(major)) throw new Error(`not a Node version: ${version}`);
  return major;
};

export interface InvokeRequest { method?: string; path: string; headers?: Record<string, string>; body?: string }
export interface InvokeResult { status: number; headers: Record<string, string>; body: string; json(): any; stdout: string; stderr: string }

/**
 * Imports the packaged function in a fresh `node` process whose environment is exactly
 * `env` (as a function instance sees only its own variables), calls its default export
 * with the request and returns the response. A function that cannot load or throws is an error
 * carrying the process's output.
 */
export function invokePackaged(node: string, fn: PackagedFunction, request: InvokeRequest, env: Record<string, string>, timeoutMs = 60_000): Promise<InvokeResult> {
  return new Promise((resolvePromise, reject) => {
    const child = spawn(node, [RUNNER, fn.module], { cwd: fn.dir, env, stdio: ['ignore', 'pipe', 'pipe', 'ipc'] });
    let stdout = '';
    let stderr = '';
    let reply: { status: number; headers: Record<string, string>; body: string } | { error: string } | undefined;
    child.stdout!.on('data', (d) => { stdout += d; });
    child.stderr!.on('data', (d) => { stderr += d; });
    const timer = setTimeout(() => child.kill('SIGKILL'), timeoutMs);
    child.on('message', (m) => { reply = m as typeof reply; });
    child.on('error', (err) => { clearTimeout(timer); reject(err); });
    child.on('close', (code, signal) => {
      clearTimeout(timer);
      const output = `\n--- stdout\n${stdout}--- stderr\n${stderr}`;
      if (!reply) return reject(new Error(`${fn.name}: no response (exit ${code ?? signal}${signal === 'SIGKILL' ? `, killed after ${timeoutMs} ms` : ''})${output}`));
      if ('error' in reply) return reject(new Error(`${fn.name} failed: ${reply.error}${output}`));
      const r = reply;
      resolvePromise({ ...r, stdout, stderr, json: () => JSON.parse(r.body) });
    });
    child.once('spawn', () => child.send({ method: request.method ?? 'GET', url: `https://site.example${request.path}`, headers: request.headers ?? {}, body: request.body }));
  });
}
