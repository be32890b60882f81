// The end-to-end GPU row of the check: one LunaEncoderLayer training step (forward, backward,
// Adam) on cuda through the TypeScript API, at the shape (B=4, n=4096, d=256, h=4,
// ffn=1024, l=16, post-norm, gelu, tied key/value, dropout 0; loss = sum(x') + sum(p')), beside
// PyTorch's eager step on the same card (anchor "encoder_layer_step").
//
// Run by bench/gpu-check.sh when a Node binary is there (no Node on the GPU machine: carry one,
// e.g. as an xz archive, and point GPU_CHECK_NODE at it). Needs dist/ (npm run build:ts) and a
// CUDA build of the addon (npm run prebuild makes prebuilds/linux-x64/node.napi.glibc.node),
// loaded through LUNA_ADDON.
//
// Usage: node bench/gpu/layer_step.mjs --rows FILE [--reps N]   appends its rows to FILE's "rows"
import { readFileSync, writeFileSync, existsSync } from 'node:fs';
import { performance } from 'node:perf_hooks';
import { backendInfo, memoryStats, nn, ops, optim, randn, synchronize } from '../../dist/index.mjs';

const args = process.argv.slice(2);
const arg = (name, fallback) => {
  const i = args.indexOf(name);
  return i >= 0 ? args[i + 1] : fallback;
};
const rowsFile = arg('--rows', null);
const reps = Number(arg('--reps', 10));

const info = backendInfo().cuda;
if (!info.available) {
  console.error(`layer_step: CUDA unavailable: ${info.reason}`);
  process.exit(1);
}
console.log(`layer_step on ${info.device.name}${info.device.emulated ? ' (emulator: timings mean nothing)' : ''}`);

const [B, n, d, h, ffn, l] = info.device.emulated ? [1, 64, 32, 2, 64, 4] : [4, 4096, 256, 4, 1024, 16];
const layer = new nn.LunaEncoderLayer({ embedDim: d, numHeads: h, ffnDim: ffn, seed: 3, device: 'cuda' });
const x = randn([B, n, d], { seed: 4, device: 'cuda' });
const p = randn([B, l, d], { seed: 5, device: 'cuda' });
const opt = new optim.Adam(layer.parameters(), { lr: 1e-4 });

function step() {
  const out = layer.forward(x, p);
  const loss = ops.add(ops.sum(out.x), ops.sum(out.p));
  loss.backward();
  opt.step();
  opt.zeroGrad();
  for (const t of [out.x, out.p, loss]) t.dispose();
}

function medianMs(fn) {
  fn();
  synchronize();
  const times = [];
  for (let i = 0; i < reps; i++) {
    const t0 = performance.now();
    fn();
    synchronize();
    times.push(performance.now() - t0);
  }
  times.sort((a, b) => a - b);
  return times[Math.floor(times.length / 2)];
}

const ms = medianMs(step);
const mallocsBefore = memoryStats().cuda.deviceMallocs;
step();
synchronize();
const mallocsAfter = memoryStats().cuda.deviceMallocs;
const shape = `B=${B} n=${n} d=${d} h=${h} ffn=${ffn} l=${l}`;
console.log(`  LunaEncoderLayer step (fwd+bwd+Adam)  ${shape}  ${ms.toFixed(3)} ms  (cudaMalloc calls in a steady step: ${mallocsAfter - mallocsBefore})`);
const row = { family: 'nn (TS API)', kernel: 'LunaEncoderLayer train step', shape, ms, flops: 0, bytes: 0, anchor: 'encoder_layer_step' };
if (rowsFile) {
  const doc = existsSync(rowsFile) ? JSON.parse(readFileSync(rowsFile, 'utf8')) : { rows: [] };
  doc.rows = [...(doc.rows ?? []), row];
  writeFileSync(rowsFile, `${JSON.stringify(doc, null, 2)}\n`);
}
