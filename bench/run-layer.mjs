// `npm run bench:layer`: the dense side of Luna through the TypeScript API, side by side with the
// PyTorch-eager anchor (../shared/anchors/torch_bench.py) in the same session:
//   - linear forward+backward at Luna's shapes, [16384,256]x[256,256] and [16384,256]x[256,1024]
//     (as torch: y = x W^T, loss = sum(y), gradients for x and W);
//   - nn.LunaEncoderLayer forward+backward at B=4, n=4096, d=256, h=4, ffn=1024, l=16
//     (post-norm, gelu, tied key/value, dropout 0; loss = sum(x') + sum(p')).
// Float32, 2 threads on both sides. The ratios are what to read: absolute times drift.
//
// Usage: node bench/run-layer.mjs [--reps N] [--no-torch] [--threads N]
import { spawn, spawnSync } from 'node:child_process';
import { existsSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { performance } from 'node:perf_hooks';
import { nn, ops, randn, ones, setNumThreads, getNumThreads } from '../dist/index.mjs';

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const torchBench = path.resolve(root, '..', 'shared', 'anchors', 'torch_bench.py');
const python = '/usr/bin/python3';
const args = process.argv.slice(2);
const argValue = (name, fallback) => {
  const i = args.indexOf(name);
  return i >= 0 ? Number(args[i + 1]) : fallback;
};
const reps = argValue('--reps', 5);
setNumThreads(argValue('--threads', 2));

function medianMs(fn) {
  fn(); // warm-up: fills the buffer pool, starts the thread pool
  const times = [];
  for (let i = 0; i < reps; i++) {
    const t0 = performance.now();
    fn();
    times.push(performance.now() - t0);
  }
  times.sort((a, b) => a - b);
  return times[Math.floor(times.length / 2)];
}

function benchLinear(M, K, N) {
  const x = randn([M, K], { seed: 1, requiresGrad: true });
  const w = randn([N, K], { seed: 2, requiresGrad: true });
  const cot = ones([M, N]);
  const ms = medianMs(() => {
    const y = ops.linear(x, w);
    y.backward(cot);
    y.dispose();
    x.grad.dispose();
    w.grad.dispose();
    x.grad = null;
    w.grad = null;
  });
  return { ms, gflops: (3 * 2 * M * K * N) / ms / 1e6 };
}

function benchLayer(B, n, d, h, ffn, l) {
  const layer = new nn.LunaEncoderLayer({ embedDim: d, numHeads: h, ffnDim: ffn, seed: 3 });
  const x = randn([B, n, d], { seed: 4, requiresGrad: true });
  const p = randn([B, l, d], { seed: 5, requiresGrad: true });
  const params = layer.parameters();
  const ms = medianMs(() => {
    const out = layer.forward(x, p);
    const sx = ops.sum(out.x);
    const sp = ops.sum(out.p);
    const loss = ops.add(sx, sp);
    loss.backward();
    for (const t of [out.x, out.p, sx, sp, loss]) t.dispose();
    for (const t of [x, p, ...params]) {
      t.grad?.dispose();
      t.grad = null;
    }
  });
  return { ms };
}

function torchUnavailable() {
  if (args.includes('--no-torch')) return '--no-torch given';
  if (!existsSync(torchBench)) return `${torchBench} not found`;
  if (spawnSync(python, ['-c', 'import torch'], { stdio: 'ignore' }).status !== 0) {
    return `${python} cannot import torch (apt-get install -y python3-torch libopenblas0-pthread)`;
  }
  return null;
}

function runTorch(only) {
  const env = { ...process.env };
  delete env.OPENBLAS_CORETYPE;
  delete env.OPENBLAS_L2_SIZE;
  return new Promise((resolve) => {
    const child = spawn(python, [torchBench, '--only', only, '--reps', String(reps)], { env, stdio: ['ignore', 'pipe', 'inherit'] });
    let text = '';
    child.stdout.on('data', (c) => {
      text += c;
      process.stdout.write(c);
    });
    child.on('close', () => resolve(text));
    child.on('error', () => resolve(''));
  });
}

const fmt = (x, digits = 1) => (Number.isFinite(x) ? x.toFixed(digits) : '-');

async function main() {
  console.log(`luna-attention through the TS API, float32, ${getNumThreads()} threads, median of ${reps}`);
  const lin = [
    [16384, 256, 256],
    [16384, 256, 1024],
  ].map(([M, K, N]) => ({ M, K, N, ...benchLinear(M, K, N) }));
  for (const r of lin) console.log(`ours linear [${r.M},${r.K}]x[${r.K},${r.N}]: fwd+bwd ${fmt(r.ms)} ms (${fmt(r.gflops)} GFLOP/s)`);
  const layer = benchLayer(4, 4096, 256, 4, 1024, 16);
  console.log(`ours layer B=4 n=4096 d=256 h=4 ffn=1024 l=16: fwd+bwd ${fmt(layer.ms)} ms`);

  const why = torchUnavailable();
  if (why) {
    console.log(`\nPyTorch anchor skipped: ${why}`);
    return;
  }
  console.log('\nPyTorch anchor (same machine, same session):');
  const text = (await runTorch('linear')) + (await runTorch('layer'));
  const torchLinear = [...text.matchAll(/linear \[(\d+),(\d+)\]x\[(\d+),(\d+)\]: fwd\+bwd\s+([\d.]+) ms/g)].map((m) => ({
    M: +m[1], K: +m[2], N: +m[4], ms: +m[5],
  }));
  const torchLayer = /layer .*fwd\+bwd\s+([\d.]+) ms/.exec(text);
  console.log('\n| workload | ours ms | torch ms | ours/torch rate |');
  console.log('|---|---|---|---|');
  for (const r of lin) {
    const t = torchLinear.find((x) => x.M === r.M && x.K === r.K && x.N === r.N);
    console.log(`| linear [${r.M},${r.K}]x[${r.K},${r.N}] fwd+bwd | ${fmt(r.ms)} | ${t ? fmt(t.ms) : '-'} | ${t ? `${fmt((100 * t.ms) / r.ms)}%` : '-'} |`);
  }
  if (torchLayer) {
    const t = Number(torchLayer[1]);
    console.log(`| LunaEncoderLayer fwd+bwd | ${fmt(layer.ms)} | ${fmt(t)} | ${fmt(t / layer.ms, 2)}x faster |`);
  }
}

main().catch((err) => {
  console.error(`bench:layer: ${err.stack ?? err.message}`);
  process.exit(1);
});
