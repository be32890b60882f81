// Running lib/ outside the vitest process: in a child process (so that a native crash fails one
// assertion instead of killing the test runner) and in worker_threads. Node 20 cannot load
// TypeScript by itself, so the parent transpiles lib/ once, in memory, and hands the JavaScript
// to the child or worker, which installs a require hook for `.ts` files that serves it. The
// files keep their real paths, so lib/native.ts finds the addon exactly as it does in-process.
import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { fileURLToPath } from 'node:url';
import ts from 'typescript';

/** The repository root. */
export const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');

let compiled: Record<string, string> | null = null;

/** Every lib/**\/*.ts file, transpiled to CommonJS, keyed by absolute path. */
export function compiledLib(): Record<string, string> {
  if (compiled !== null) return compiled;
  const out: Record<string, string> = {};
  const walk = (dir: string): void => {
    for (const entry of fs.readdirSync(dir, { withFileTypes: true })) {
      const file = path.join(dir, entry.name);
      if (entry.isDirectory()) walk(file);
      else if (entry.name.endsWith('.ts') && !entry.name.endsWith('.d.ts')) {
        const result = ts.transpileModule(fs.readFileSync(file, 'utf8'), {
          fileName: file,
          compilerOptions: {
            module: ts.ModuleKind.CommonJS,
            target: ts.ScriptTarget.ES2022,
            esModuleInterop: true,
          },
        });
        out[file] = result.outputText;
      }
    }
  };
  walk(path.join(ROOT, 'lib'));
  compiled = out;
  return out;
}

/**
 * JavaScript that installs the `.ts` hook from `SOURCES` (a variable the surrounding code
 * defines) and binds `lib` to lib/index.ts. Used as the prologue of child and worker scripts.
 */
export const LOAD_LIB = String.raw`
const Module = require('node:module');
Module._extensions['.ts'] = function (m, filename) {
  const js = SOURCES[filename];
  if (js === undefined) throw new Error('no transpiled source for ' + filename);
  m._compile(js, filename);
};
const lib = require(require('node:path').join(ROOT, 'lib', 'index.ts'));
`;

/** The outcome of {@link runChild}. */
export interface ChildResult {
  status: number | null;
  signal: NodeJS.Signals | null;
  stdout: string;
  stderr: string;
  /** The JSON the child printed as its last line, or null. */
  json: unknown;
}

/**
 * Runs `body` (JavaScript; `lib` is lib/index.ts, `ROOT` the repository root, `ARGS` the JSON
 * value `args`) in a fresh node process and returns what happened. The body reports by
 * printing one JSON line last.
 */
export function runChild(body: string, args: unknown = null, options: { timeoutMs?: number; env?: NodeJS.ProcessEnv; nodeArgs?: string[] } = {}): ChildResult {
  const prologue = String.raw`
const input = JSON.parse(require('node:fs').readFileSync(0, 'utf8'));
const SOURCES = input.sources, ROOT = input.root, ARGS = input.args;
` + LOAD_LIB;
  const r = spawnSync(process.execPath, [...(options.nodeArgs ?? []), '-e', prologue + body], {
    cwd: ROOT,
    input: JSON.stringify({ sources: compiledLib(), root: ROOT, args }),
    encoding: 'utf8',
    timeout: options.timeoutMs ?? 60_000,
    env: options.env ?? process.env,
    maxBuffer: 16 * 1024 * 1024,
  });
  const lines = (r.stdout ?? '').trim().split('\n');
  let json: unknown = null;
  try {
    json = JSON.parse(lines[lines.length - 1]);
  } catch {
    json = null;
  }
  return { status: r.status, signal: r.signal, stdout: r.stdout ?? '', stderr: r.stderr ?? '', json };
}

/** Text for an assertion message: how the child ended and what it printed. */
export function describeChild(r: ChildResult): string {
  return `status=${r.status} signal=${r.signal}\nstdout: ${r.stdout.slice(-4000)}\nstderr: ${r.stderr.slice(-4000)}`;
}
