// The addon loader and backend report. The failure paths run in child processes on a copy of
// lib/ (transpiled to CommonJS) placed in a temporary package root that has no usable binary:
// the loader must then raise ERR_NATIVE_LOAD with a message that says what to do, and the rest
// of the package (tensors, errors) must still import.
import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { fileURLToPath } from 'node:url';
import { createRequire } from 'node:module';
import ts from 'typescript';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { backendInfo } from '../lib/index';
import { MIN_NAPI_VERSION, nativeBinaryPath } from '../lib/native';

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');

describe('backendInfo()', () => {
  it('reports the CPU ISA the kernels dispatch to', () => {
    const info = backendInfo();
    expect(['avx512', 'avx2', 'generic']).toContain(info.cpu.isa);
  });

  it('the ISA agrees with what /proc/cpuinfo says the CPU has', () => {
    let flags = '';
    try {
      flags = fs.readFileSync('/proc/cpuinfo', 'utf8');
    } catch {
      return; // not Linux: nothing to compare with
    }
    const isa = backendInfo().cpu.isa;
    if (isa === 'avx512') expect(flags).toMatch(/\bavx512f\b/);
    if (isa === 'avx2') expect(flags).toMatch(/\bavx2\b/);
    // A CPU with AVX2 and FMA must not fall back to the generic kernels.
    if (/\bavx2\b/.test(flags) && /\bfma\b/.test(flags)) expect(isa).not.toBe('generic');
  });

  it('says CUDA is unavailable on this machine and why', () => {
    const hasGpu = fs.existsSync('/dev/nvidia0') || fs.existsSync('/dev/nvidiactl');
    const info = backendInfo();
    expect(typeof info.cuda.available).toBe('boolean');
    if (hasGpu) return; // the CUDA suites cover machines with a device
    expect(info.cuda.available).toBe(false);
    expect(typeof info.cuda.reason).toBe('string');
    expect(info.cuda.reason.trim().length).toBeGreaterThan(0);
  });
});

describe('nativeBinaryPath()', () => {
  it('is the file node-gyp-build picks for this package root', () => {
    const file = nativeBinaryPath();
    expect(file).not.toBeNull();
    expect(path.isAbsolute(file!)).toBe(true);
    expect(file!.endsWith('.node')).toBe(true);
    expect(fs.existsSync(file!)).toBe(true);
    const nodeGypBuild = createRequire(path.join(ROOT, 'package.json'))('node-gyp-build');
    expect(file).toBe(nodeGypBuild.resolve(ROOT));
  });
});

describe('default thread count', () => {
  const THREADS = String.raw`
    const root = process.argv[1]; // node -e SCRIPT ROOT: argv is [node, ROOT]
    const addon = require(require.resolve('node-gyp-build', { paths: [root] }))(root);
    process.stdout.write(String(addon.getNumThreads()));
  `;
  const threadsWith = (env: Record<string, string | undefined>) => {
    const r = spawnSync(process.execPath, ['-e', THREADS, ROOT], {
      cwd: ROOT,
      encoding: 'utf8',
      timeout: 60_000,
      env: { ...process.env, ...env },
    });
    expect(r.status, r.stderr).toBe(0);
    return Number(r.stdout);
  };

  it('is LUNA_NUM_THREADS when set, else every core', () => {
    expect(threadsWith({ LUNA_NUM_THREADS: '3' })).toBe(3);
    expect(threadsWith({ LUNA_NUM_THREADS: '1' })).toBe(1);
    const env = { ...process.env };
    delete env.LUNA_NUM_THREADS;
    const r = spawnSync(process.execPath, ['-e', THREADS, ROOT], { cwd: ROOT, encoding: 'utf8', timeout: 60_000, env });
    expect(r.status, r.stderr).toBe(0);
    expect(Number(r.stdout)).toBe(os.availableParallelism());
  });
});

// ---- Loading from a package root without a usable binary ----

// Transpiles every .ts file under lib/ to CommonJS under `dest/lib`, keeping the folder layout.
function transpileLib(dest: string, rel = '') {
  const srcDir = path.join(ROOT, 'lib', rel);
  const outDir = path.join(dest, 'lib', rel);
  fs.mkdirSync(outDir, { recursive: true });
  for (const entry of fs.readdirSync(srcDir, { withFileTypes: true })) {
    if (entry.isDirectory()) {
      transpileLib(dest, path.join(rel, entry.name));
      continue;
    }
    if (!entry.name.endsWith('.ts') || entry.name.endsWith('.d.ts')) continue;
    const src = fs.readFileSync(path.join(srcDir, entry.name), 'utf8');
    const out = ts.transpileModule(src, {
      compilerOptions: {
        module: ts.ModuleKind.CommonJS,
        target: ts.ScriptTarget.ES2022,
        esModuleInterop: true,
      },
      fileName: entry.name,
    });
    fs.writeFileSync(path.join(outDir, entry.name.replace(/\.ts$/, '.js')), out.outputText);
  }
}

/** Makes a fake package root named luna-attention. */
function makeRoot(base: string, name: string, opts: { nodeModules: boolean; garbageBinary?: boolean }): string {
  const dir = path.join(base, name);
  transpileLib(dir);
  fs.writeFileSync(path.join(dir, 'package.json'), JSON.stringify({ name: 'luna-attention', version: '0.0.0' }));
  if (opts.nodeModules) fs.symlinkSync(path.join(ROOT, 'node_modules'), path.join(dir, 'node_modules'), 'dir');
  if (opts.garbageBinary) {
    fs.mkdirSync(path.join(dir, 'build', 'Release'), { recursive: true });
    fs.writeFileSync(path.join(dir, 'build', 'Release', 'luna_attention.node'), 'this is not a shared object\n');
  }
  return dir;
}

// Loads the copied lib in a fresh process and reports what happened, as JSON.
const PROBE = String.raw`
const dir = process.argv[2];
// Pretends to be a Node.js with an older Node-API (process.versions is read-only but configurable).
if (process.env.FAKE_NAPI !== undefined) {
  Object.defineProperty(process.versions, 'napi', { value: process.env.FAKE_NAPI, configurable: true });
}
const result = {};
const capture = (fn) => { try { fn(); return null; } catch (e) { return { code: e.code, name: e.name, message: String(e.message) }; } };
result.first = capture(() => require(dir + '/lib/native.js').loadNative());
result.second = capture(() => require(dir + '/lib/native.js').loadNative());
// The package imports and makes tensors without the addon; an op then reports the load error.
let index = null;
result.importIndex = capture(() => { index = require(dir + '/lib/index.js'); });
if (index) {
  result.tensor = capture(() => { if (index.tensor([1, 2]).shape[0] !== 2) throw new Error('bad tensor'); });
  result.op = capture(() => { const z = index.zeros([1, 1, 2, 4]); index.ops.packAttention(z, z, z); });
}
process.stdout.write(JSON.stringify(result));
`;

interface ProbeResult {
  first: { code: string; name: string; message: string } | null;
  second: { code: string; name: string; message: string } | null;
  importIndex: { code: string; message: string } | null;
  tensor?: { code: string; message: string } | null;
  op?: { code: string; message: string } | null;
}

function probe(dir: string, env: Record<string, string> = {}): ProbeResult {
  const script = path.join(dir, 'probe.cjs');
  fs.writeFileSync(script, PROBE);
  const r = spawnSync(process.execPath, [script, dir], {
    cwd: dir,
    encoding: 'utf8',
    timeout: 60_000,
    env: { ...process.env, ...env },
  });
  const info = `status=${r.status} signal=${r.signal}\nstdout: ${r.stdout}\nstderr: ${r.stderr}`;
  expect(r.signal, info).toBeNull();
  expect(r.status, info).toBe(0);
  return JSON.parse(r.stdout) as ProbeResult;
}

describe('ERR_NATIVE_LOAD from a package root without a usable binary', () => {
  let base = '';
  beforeAll(() => {
    base = fs.mkdtempSync(path.join(os.tmpdir(), 'luna-loader-'));
  });
  afterAll(() => {
    if (base) fs.rmSync(base, { recursive: true, force: true });
  });

  function expectHelpful(r: ProbeResult, dir: string, cause: RegExp) {
    expect(r.first, JSON.stringify(r)).not.toBeNull();
    expect(r.first!.code).toBe('ERR_NATIVE_LOAD');
    expect(r.first!.name).toBe('LunaError');
    // What went wrong, where it looked, and what to run.
    expect(r.first!.message).toMatch(cause);
    expect(r.first!.message).toContain(dir);
    expect(r.first!.message).toMatch(/npm (re)?build|npm install|node-gyp/);
    // The same error again, not a different one (and no crash) on the second try.
    expect(r.second).toEqual(r.first);
    // Importing the package does not need the addon.
    expect(r.importIndex, JSON.stringify(r.importIndex)).toBeNull();
    expect(r.tensor, JSON.stringify(r.tensor)).toBeNull();
    expect(r.op?.code, JSON.stringify(r.op)).toBe('ERR_NATIVE_LOAD');
  }

  it('no binary at all', () => {
    const dir = makeRoot(base, 'nobinary', { nodeModules: true });
    expectHelpful(probe(dir), dir, /no compatible binary|could not load/i);
  });

  it('a corrupt binary', () => {
    const dir = makeRoot(base, 'garbage', { nodeModules: true, garbageBinary: true });
    const r = probe(dir);
    expectHelpful(r, dir, /could not load|failed to load/i);
    // The dynamic loader's own complaint is passed on.
    expect(r.first!.message).toMatch(/ELF|invalid|too short|not a/i);
  });

  it('node-gyp-build itself missing', () => {
    const dir = makeRoot(base, 'nomodules', { nodeModules: false });
    expectHelpful(probe(dir), dir, /node-gyp-build/);
  });

  it('a Node.js whose Node-API is too old: names the found and the required version', () => {
    const dir = makeRoot(base, 'oldnapi', { nodeModules: true });
    const old = String(MIN_NAPI_VERSION - 1);
    const r = probe(dir, { FAKE_NAPI: old });
    expectHelpful(r, dir, new RegExp(`Node-API ${old}, but version ${MIN_NAPI_VERSION} or newer is needed`));
    expect(r.first!.message).toContain(process.version);
  });
});
