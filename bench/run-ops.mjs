// `npm run bench:ops`: builds and runs the native pack+unpack benchmark, then (when PyTorch is
// installed) the PyTorch-eager anchor on the same shapes in the same session, and prints both side
// by side. Absolute times on shared machines drift; the ratio in the last column is what to read.
//
// Usage: node bench/run-ops.mjs [--no-torch] [extra arguments for bench_attention]
import { spawn, spawnSync } from 'node:child_process';
import { existsSync, realpathSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const buildDir = path.join(root, 'build', 'bench');
const benchExe = path.join(buildDir, 'bench_attention');
const torchBench = path.resolve(root, '..', 'shared', 'anchors', 'torch_bench.py');
const python = '/usr/bin/python3';

const args = process.argv.slice(2);
const skipTorch = args.includes('--no-torch');
const benchArgs = args.filter((a) => a !== '--no-torch');

// OpenBLAS honours these two variables; some machines set OPENBLAS_CORETYPE=Haswell, which caps
// it at AVX2. Both our sgemm peak (the bench dlopens OpenBLAS) and PyTorch run without them, so
// each side gets the machine's best BLAS kernel.
const benchEnv = { ...process.env };
delete benchEnv.OPENBLAS_CORETYPE;
delete benchEnv.OPENBLAS_L2_SIZE;

function must(cmd, argv) {
  console.log(`$ ${cmd} ${argv.join(' ')}`);
  const r = spawnSync(cmd, argv, { cwd: root, stdio: 'inherit' });
  if (r.error) throw new Error(`${cmd}: ${r.error.message}`);
  if (r.status !== 0) throw new Error(`${cmd} exited with ${r.status}`);
}

/** Runs a command, echoing its output as it comes, and resolves with everything it printed. */
function runEcho(cmd, argv) {
  return new Promise((resolve, reject) => {
    const child = spawn(cmd, argv, { cwd: root, env: benchEnv, stdio: ['ignore', 'pipe', 'inherit'] });
    let text = '';
    child.stdout.on('data', (chunk) => {
      text += chunk;
      process.stdout.write(chunk);
    });
    child.on('error', reject);
    child.on('close', (code, signal) => resolve({ code, signal, text }));
  });
}

function ours(text) {
  const line = text.split('\n').find((l) => l.startsWith('RESULT_JSON '));
  if (!line) throw new Error('bench_attention printed no RESULT_JSON line');
  return JSON.parse(line.slice('RESULT_JSON '.length));
}

// torch_bench.py prints, per l:
//   ops    B=4 n=4096 h=4 dh=64 l=16: fwd    12.3 ms ( 456.7 GFLOP/s)  fwd+bwd    45.6 ms
const TORCH_OPS = /^ops\s+B=(\d+) n=(\d+) h=(\d+) dh=(\d+) l=(\d+): fwd\s+([\d.]+) ms \(\s*([\d.]+) GFLOP\/s\)\s+fwd\+bwd\s+([\d.]+) ms/;

function torchRows(text) {
  const rows = new Map();
  for (const line of text.split('\n')) {
    const m = TORCH_OPS.exec(line.trim());
    if (m) rows.set(Number(m[5]), { B: +m[1], n: +m[2], h: +m[3], dh: +m[4], fwd_ms: +m[6], fwdbwd_ms: +m[8] });
  }
  return rows;
}

/** Why the PyTorch anchor cannot run here, or null when it can. */
function torchUnavailable() {
  if (skipTorch) return '--no-torch given';
  if (!existsSync(torchBench)) return `${torchBench} not found (the anchors live in ../shared/anchors)`;
  const r = spawnSync(python, ['-c', 'import torch'], { stdio: 'ignore' });
  if (r.status !== 0) {
    return `${python} cannot import torch (apt-get install -y python3-torch libopenblas0-pthread)`;
  }
  return null;
}

/** Debian's PyTorch uses whatever libblas.so.3 points at; the reference BLAS is ~30x slower. */
function blasWarning() {
  try {
    const blas = realpathSync('/usr/lib/x86_64-linux-gnu/libblas.so.3');
    if (!blas.includes('openblas')) {
      return `warning: libblas.so.3 is ${blas}, not OpenBLAS: PyTorch will be slow and flatter us ` +
        '(apt-get install -y libopenblas0-pthread)';
    }
  } catch {
    // Not a Debian multiarch layout: nothing to check.
  }
  return null;
}

const fmt = (x, digits = 1) => (Number.isFinite(x) ? x.toFixed(digits) : '-');

function printTable(result, torch) {
  const header = ['l', 'ours fwd ms', 'ours fwd+bwd ms', 'GFLOP/s', 'of peak', 'torch fwd ms', 'torch fwd+bwd ms', 'speed-up'];
  const rows = result.shapes.map((s) => {
    const t = torch?.get(s.l);
    return [
      String(s.l),
      fmt(s.fwd_ms),
      fmt(s.fwdbwd_ms),
      fmt(s.fwdbwd_gflops),
      `${fmt(100 * s.fraction_of_peak)}%`,
      t ? fmt(t.fwd_ms) : '-',
      t ? fmt(t.fwdbwd_ms) : '-',
      t ? `${fmt(t.fwdbwd_ms / s.fwdbwd_ms, 2)}x` : '-',
    ];
  });
  const widths = header.map((h, i) => Math.max(h.length, ...rows.map((r) => r[i].length)));
  const line = (cells) => cells.map((c, i) => c.padStart(widths[i])).join('  ');
  console.log('\npack+unpack (k === v), float32, B=4 n=4096 h=4 dh=64');
  console.log(`sgemm peak: ${fmt(result.peak_gflops)} GFLOP/s (${result.peak_source})`);
  console.log(line(header));
  for (const r of rows) console.log(line(r));
  if (torch) console.log('speed-up = torch fwd+bwd time / ours (above 1: we are faster)');
}

async function main() {
  must('cmake', ['-S', root, '-B', buildDir, '-DCMAKE_BUILD_TYPE=Release']);
  must('cmake', ['--build', buildDir, '--target', 'bench_attention', '--parallel']);

  console.log(`\n$ ${path.relative(root, benchExe)} ${benchArgs.join(' ')}`);
  const run = await runEcho(benchExe, benchArgs);
  if (run.code !== 0) throw new Error(`bench_attention failed (exit ${run.code ?? run.signal})`);
  const result = ours(run.text);

  let torch = null;
  const why = torchUnavailable();
  if (why) {
    console.log(`\nPyTorch anchor skipped: ${why}`);
  } else {
    const warning = blasWarning();
    if (warning) console.log(warning);
    console.log(`\n$ ${python} ${path.relative(root, torchBench)} --only ops`);
    const t = await runEcho(python, [torchBench, '--only', 'ops']);
    if (t.code !== 0) {
      console.log(`PyTorch anchor failed (exit ${t.code ?? t.signal}); showing our numbers only`);
    } else {
      torch = torchRows(t.text);
    }
  }
  printTable(result, torch);
}

main().catch((err) => {
  console.error(`bench:ops: ${err.message}`);
  process.exit(1);
});
