// `npm run bench`: every native micro-benchmark in one go. Configures and builds the bench_*
// targets (CMake, Release, build/bench), runs each one that exists (attention, ops, nn, causal,
// softmax) with --json into a temporary folder, appends the merged records as one run to
// bench/results/<machine>.json (bench/results.mjs: an array of runs, newest last), and prints a
// summary beside the previous native run on this machine. Each bench validates against the
// float64 reference before it times anything; a failure stops that bench, the others go on.
//
// Usage: npm run bench -- [--quick] [--only name[,name]] [--reps N] [--threads N] [--no-save]
//   --quick    2 timed repetitions instead of 5 (the run is saved, marked quick)
//   --only     just these benches, e.g. --only nn or --only attention,ops
//   --no-save  print, but leave bench/results/ alone
import { spawn, spawnSync } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { appendRun, machineInfo } from './results.mjs';

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const buildDir = path.join(root, 'build', 'bench');
const ALL = ['attention', 'ops', 'nn', 'causal', 'softmax'];  // CMakeLists.txt's list, in run order

const args = process.argv.slice(2);
const value = (name) => {
  const i = args.indexOf(name);
  return i >= 0 ? args[i + 1] : undefined;
};
const quick = args.includes('--quick');
const save = !args.includes('--no-save');
const reps = Number(value('--reps') ?? (quick ? 2 : 5));
const only = value('--only')?.split(',').map((s) => s.trim()).filter(Boolean);
const unknown = (only ?? []).filter((n) => !ALL.includes(n));
if (unknown.length) {
  console.error(`bench: unknown bench ${unknown.join(', ')} (known: ${ALL.join(', ')})`);
  process.exit(2);
}
const benches = ALL.filter((n) => existsSync(path.join(root, 'bench', `bench_${n}.cc`)) && (!only || only.includes(n)));

function must(cmd, argv) {
  console.log(`$ ${cmd} ${argv.join(' ')}`);
  const r = spawnSync(cmd, argv, { cwd: root, stdio: 'inherit' });
  if (r.error) throw new Error(`${cmd}: ${r.error.message}`);
  if (r.status !== 0) throw new Error(`${cmd} exited with ${r.status}`);
}

function gitCommit() {
  const r = spawnSync('git', ['rev-parse', '--short', 'HEAD'], { cwd: root, encoding: 'utf8' });
  if (r.status !== 0) return null;
  const dirty = spawnSync('git', ['status', '--porcelain', '--untracked-files=no'], { cwd: root, encoding: 'utf8' });
  return r.stdout.trim() + (dirty.stdout?.trim() ? '-dirty' : '');
}

/** Runs one bench, its output echoed as it comes; resolves with the exit code and seconds. */
function runBench(exe, argv, env) {
  return new Promise((resolve) => {
    const t0 = Date.now();
    const child = spawn(exe, argv, { cwd: root, env, stdio: 'inherit' });
    child.on('error', (err) => resolve({ code: -1, error: err.message, seconds: 0 }));
    child.on('close', (code, signal) => resolve({ code: code ?? -1, signal, seconds: (Date.now() - t0) / 1000 }));
  });
}

// A record's identity across runs: the same kernel at the same shape, ISA and thread count.
const key = (r) => [r.bench, r.kernel, r.shape, r.params, r.dtype, r.isa, r.threads].join('|');
const fmt = (x, d = 1) => (Number.isFinite(x) ? x.toFixed(d) : '-');
const pct = (x) => (Number.isFinite(x) ? `${(100 * x).toFixed(1)}%` : '-');

function previousRun(slug) {
  const file = path.join(root, 'bench', 'results', `${slug}.json`);
  try {
    const runs = JSON.parse(readFileSync(file, 'utf8'));
    return Array.isArray(runs) ? runs.filter((r) => r.kind === 'native').at(-1) ?? null : null;
  } catch {
    return null;
  }
}

function summary(records, prev) {
  const before = new Map((prev?.records ?? []).map((r) => [key(r), r]));
  const header = ['bench', 'kernel', 'shape', 'ms', 'GFLOP/s', '%flop', 'GB/s', '%bw', 'prev ms', 'speed-up'];
  const rows = records.map((r) => {
    const p = before.get(key(r));
    return [r.bench, r.kernel, `${r.shape} ${r.params}`.trim(), fmt(r.ms_median, 3), fmt(r.gflops), pct(r.frac_flop_peak),
      fmt(r.gbs), pct(r.frac_bw_peak), p ? fmt(p.ms_median, 3) : '-', p ? `${fmt(p.ms_median / r.ms_median, 2)}x` : '-'];
  });
  const widths = header.map((h, i) => Math.max(h.length, ...rows.map((r) => r[i].length)));
  const line = (cells) => cells.map((c, i) => (i < 3 ? c.padEnd(widths[i]) : c.padStart(widths[i]))).join('  ');
  console.log(`\n${line(header)}`);
  for (const r of rows) console.log(line(r));
  if (prev) {
    console.log(`prev: the last native run in this file (${prev.date}, commit ${prev.commit ?? '?'}); ` +
      'speed-up = prev ms / ms (above 1: faster now). Shared machines drift: read ratios of 0.8-1.25 as noise.');
  }
}

async function main() {
  if (!benches.length) throw new Error('no bench to run');
  const machine = machineInfo();
  const commit = gitCommit();
  must('cmake', ['-S', root, '-B', buildDir, '-DCMAKE_BUILD_TYPE=Release']);
  must('cmake', ['--build', buildDir, '--parallel', '--target', ...benches.map((n) => `bench_${n}`)]);

  // OpenBLAS honours these; some machines set OPENBLAS_CORETYPE=Haswell, which caps the sgemm
  // peak at AVX2. The benches run without them, as the PyTorch anchor does.
  const env = { ...process.env, LUNA_BENCH_COMMIT: commit ?? '' };
  delete env.OPENBLAS_CORETYPE;
  delete env.OPENBLAS_L2_SIZE;
  const extra = value('--threads') ? ['--threads', value('--threads')] : [];

  const tmp = mkdtempSync(path.join(os.tmpdir(), 'luna-bench-'));
  const results = {};
  const failed = [];
  try {
    for (const name of benches) {
      const exe = path.join(buildDir, `bench_${name}`);
      const out = path.join(tmp, `${name}.json`);
      const argv = ['--reps', String(reps), '--json', out, ...extra];
      console.log(`\n$ ${path.relative(root, exe)} ${argv.join(' ')}`);
      const r = await runBench(exe, argv, env);
      if (r.code !== 0 || !existsSync(out)) {
        failed.push({ bench: name, exit: r.code, signal: r.signal ?? null });
        console.log(`bench_${name} failed (exit ${r.code}${r.signal ? `, ${r.signal}` : ''}); going on`);
        continue;
      }
      results[name] = { seconds: r.seconds, ...JSON.parse(readFileSync(out, 'utf8')) };
    }
  } finally {
    rmSync(tmp, { recursive: true, force: true });
  }

  const ran = Object.keys(results);
  const records = ran.flatMap((n) => results[n].records);
  const prev = previousRun(machine.slug);
  summary(records, prev);
  if (save && ran.length) {
    // Each bench measured the peaks itself, in its own process: its records' fractions use
    // those, so they are kept per bench.
    const peaks = Object.fromEntries(ran.map((n) => [n, results[n].peaks]));
    const benchInfo = Object.fromEntries(ran.map((n) => [n, { seconds: results[n].seconds, date: results[n].date,
      machine: results[n].machine }]));
    const file = appendRun('native', { commit, quick, reps, isa: results[ran[0]].machine.isa,
      threads: results[ran[0]].machine.threads, peaks, benches: benchInfo, failed, records });
    console.log(`\nappended this run to ${path.relative(root, file)}`);
  }
  if (failed.length) {
    console.log(`failed: ${failed.map((f) => f.bench).join(', ')}`);
    process.exitCode = 1;
  }
}

main().catch((err) => {
  console.error(`bench: ${err.message}`);
  process.exit(1);
});
