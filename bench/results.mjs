// The benchmark results archive: bench/results/<machine>.json holds an array of runs, newest
// last, so numbers can be compared over time on the same kind of machine. Each run records when
// and on what commit it was made, the machine, and its records (one per measured case).
import { execSync } from 'node:child_process';
import { existsSync, mkdirSync, readFileSync, renameSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');

/** The CPU model, core count and a file-name slug such as `amd-epyc-9r14-2c`. */
export function machineInfo() {
  let cpu = os.cpus()[0]?.model ?? 'unknown cpu';
  try {
    const line = readFileSync('/proc/cpuinfo', 'utf8').split('\n').find((l) => l.startsWith('model name'));
    if (line) cpu = line.split(':')[1].trim();
  } catch {
    // not Linux: os.cpus() is good enough
  }
  const cores = os.cpus().length;
  const slug = `${cpu.toLowerCase().replace(/\(r\)|\(tm\)|processor|cpu|\d+-core/g, ' ').replace(/[^a-z0-9]+/g, '-').replace(/^-|-$/g, '')}-${cores}c`;
  return { cpu, cores, slug };
}

function gitCommit() {
  try {
    return execSync('git rev-parse --short HEAD', { cwd: root, stdio: ['ignore', 'pipe', 'ignore'] }).toString().trim();
  } catch {
    return null;
  }
}

/** Appends one run of `kind` to bench/results/<machine>.json; returns the file's path. */
export function appendRun(kind, payload) {
  const machine = machineInfo();
  const dir = path.join(root, 'bench', 'results');
  mkdirSync(dir, { recursive: true });
  const file = path.join(dir, `${machine.slug}.json`);
  let runs = [];
  if (existsSync(file)) {
    try {
      runs = JSON.parse(readFileSync(file, 'utf8'));
      if (!Array.isArray(runs)) runs = [];
    } catch {
      runs = [];
    }
  }
  runs.push({ kind, date: new Date().toISOString(), commit: gitCommit(), machine: { cpu: machine.cpu, cores: machine.cores }, ...payload });
  const tmp = `${file}.tmp`;
  writeFileSync(tmp, `${JSON.stringify(runs, null, 1)}\n`);
  renameSync(tmp, file);
  return file;
}
