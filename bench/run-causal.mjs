// `npm run bench:causal`: causal Luna attention through the TypeScript API, side by side with the
// PyTorch cumsum reference (../shared/anchors/luna_ref.py, causal_luna_attention) in the same
// session, and incremental decoding against recomputing the prefix:
//   - ops.causalLunaAttention forward+backward at B=4, n=4096, h=4, dh=64, l=16, k === v
//     (loss = sum(o), gradients for q, k, kc, pq), float32, 2 threads on both sides;
//   - decoding 1000 tokens (B=1, h=4, dh=64, l=16): CausalLunaState.step one token at a time
//     against running the parallel op over the whole prefix at every step (what a model without
//     a decoding state has to do), with the outputs of both compared at every step.
// The ratios are what to read: absolute times on these shared machines drift.
//
// Usage: node bench/run-causal.mjs [--reps N] [--no-torch] [--threads N] [--tokens N]
import { spawnSync } from 'node:child_process';
import { existsSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { performance } from 'node:perf_hooks';
import { CausalLunaState, noGrad, ops, randn, ones, setNumThreads, getNumThreads } from '../dist/index.mjs';
import { appendRun } from './results.mjs';

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const anchors = path.resolve(root, '..', 'shared', 'anchors');
const args = process.argv.slice(2);
const value = (name, fallback) => {
  const i = args.indexOf(name);
  return i >= 0 ? Number(args[i + 1]) : fallback;
};
const reps = value('--reps', 5);
const tokens = value('--tokens', 1000);
setNumThreads(value('--threads', 2));

function medianMs(fn, n = reps) {
  fn(); // warm-up
  const times = [];
  for (let i = 0; i < n; i++) {
    const t0 = performance.now();
    fn();
    times.push(performance.now() - t0);
  }
  times.sort((a, b) => a - b);
  return times[Math.floor(times.length / 2)];
}

// ---- forward + backward ----------------------------------------------------------------------
const [B, n, h, dh, l] = [4, 4096, 4, 64, 16];
const q = randn([B, h, n, dh], { seed: 1, requiresGrad: true });
const k = randn([B, h, n, dh], { seed: 2, requiresGrad: true });
const kc = randn([B, h, n, dh], { seed: 3, requiresGrad: true });
const pq = randn([B, h, l, dh], { seed: 4, requiresGrad: true });
const cot = ones([B, h, n, dh]);
const fwdMs = medianMs(() => noGrad(() => ops.causalLunaAttention(q, k, k, kc, pq).dispose()));
const fbMs = medianMs(() => {
  const o = ops.causalLunaAttention(q, k, k, kc, pq);
  o.backward(cot);
  o.dispose();
  for (const t of [q, k, kc, pq]) {
    t.grad.dispose();
    t.grad = null;
  }
});
// Chunked forward ≈ 10·n·l·dh + 4·n·c·(dh + l) per head (luna-math.md section 6, tied saves 2·n·l·dh);
// quote the plain prefix-form count 8·n·l·dh per head for a rate.
const flops = 8 * B * h * n * l * dh;
console.log(`causal B=${B} n=${n} h=${h} dh=${dh} l=${l}, ${getNumThreads()} threads: forward ${fwdMs.toFixed(1)} ms, ` +
  `forward+backward ${fbMs.toFixed(1)} ms (${(3 * flops / fbMs / 1e6).toFixed(1)} GFLOP/s of prefix-form work)`);

// ---- incremental decoding ------------------------------------------------------------------------
const T = tokens;
const dq = randn([1, h, T, dh], { seed: 5 });
const dk = randn([1, h, T, dh], { seed: 6 });
const dkc = randn([1, h, T, dh], { seed: 7 });
const dpq = randn([1, h, l, dh], { seed: 8 });
const rows = (t, a, b) => ops.slice(t, 2, a, b);
let maxDiff = 0;
const stepMs = medianMs(() => noGrad(() => {
  const state = new CausalLunaState(dpq);
  for (let t = 0; t < T; t++) {
    const [qt, kt, kct] = [rows(dq, t, t + 1), rows(dk, t, t + 1), rows(dkc, t, t + 1)];
    state.step(qt, kt, kt, kct).dispose();
    for (const x of [qt, kt, kct]) x.dispose();
  }
  state.dispose();
}), 3);
// Recomputing: the parallel op over positions 0..t at every step, keeping the last row. One
// timed run (it is the slow side); every 50th step is compared with the state's output.
const recomputeMs = (() => noGrad(() => {
  const state = new CausalLunaState(dpq);
  const t0 = performance.now();
  let checkMs = 0;
  for (let t = 0; t < T; t++) {
    const [qp, kp, kcp] = [rows(dq, 0, t + 1), rows(dk, 0, t + 1), rows(dkc, 0, t + 1)];
    const o = ops.causalLunaAttention(qp, kp, kp, kcp, dpq);
    const last = rows(o, t, t + 1);
    if (t % 50 === 0 || t === T - 1) {
      const c0 = performance.now();
      while (state.steps < t + 1) {
        const s = state.steps;
        const [qt, kt, kct] = [rows(dq, s, s + 1), rows(dk, s, s + 1), rows(dkc, s, s + 1)];
        const so = state.step(qt, kt, kt, kct);
        if (s === t) {
          const a = so.dataSync();
          const b = last.dataSync();
          for (let i = 0; i < a.length; i++) maxDiff = Math.max(maxDiff, Math.abs(a[i] - b[i]) / Math.max(1, Math.abs(b[i])));
        }
        for (const x of [qt, kt, kct, so]) x.dispose();
      }
      checkMs += performance.now() - c0;
    }
    for (const x of [qp, kp, kcp, o, last]) x.dispose();
  }
  state.dispose();
  return performance.now() - t0 - checkMs;
}))();
console.log(`decoding ${T} tokens (B=1, h=${h}, dh=${dh}, l=${l}): incremental ${stepMs.toFixed(1)} ms ` +
  `(${(stepMs * 1000 / T).toFixed(1)} us/token), recomputing the prefix ${recomputeMs.toFixed(0)} ms: ` +
  `${(recomputeMs / stepMs).toFixed(1)}x; largest relative difference of the two outputs ${maxDiff.toExponential(2)}`);

// ---- PyTorch --------------------------------------------------------------------------------------
let torch = null;
if (!args.includes('--no-torch') && existsSync(path.join(anchors, 'luna_ref.py'))) {
  const script = `
import sys, time, statistics, torch
sys.path.insert(0, ${JSON.stringify(anchors)})
from luna_ref import causal_luna_attention
torch.set_num_threads(2); torch.manual_seed(0)
B, n, h, dh, l = ${B}, ${n}, ${h}, ${dh}, ${l}
q, k, kc = (torch.randn(B, h, n, dh, requires_grad=True) for _ in range(3))
pq = torch.randn(B, h, l, dh, requires_grad=True)
def fb():
    causal_luna_attention(q, k, k, pq, kc).sum().backward()
    for t in (q, k, kc, pq): t.grad = None
fb(); ts = []
for _ in range(${Math.min(reps, 3)}):
    t0 = time.perf_counter(); fb(); ts.append((time.perf_counter() - t0) * 1e3)
print(statistics.median(ts))
`;
  const env = { ...process.env };
  delete env.OPENBLAS_CORETYPE;
  delete env.OPENBLAS_L2_SIZE;
  const r = spawnSync('/usr/bin/python3', ['-c', script], { encoding: 'utf8', env });
  if (r.status === 0) {
    torch = Number(r.stdout.trim().split('\n').pop());
    console.log(`PyTorch cumsum reference (luna_ref.causal_luna_attention), same shapes, 2 threads: forward+backward ${torch.toFixed(0)} ms; ours is ${(torch / fbMs).toFixed(1)}x faster`);
  } else {
    console.log(`PyTorch not run (${(r.stderr || r.error?.message || '').trim().split('\n').pop()}); apt-get install -y python3-torch libopenblas0-pthread`);
  }
}

const file = appendRun('causal', {
  records: [
    { bench: 'causal', kernel: 'causalLunaAttention fwd', B, n, h, dh, l, ms_median: fwdMs },
    { bench: 'causal', kernel: 'causalLunaAttention fwd+bwd', B, n, h, dh, l, ms_median: fbMs, torch_ms: torch },
    { bench: 'causal', kernel: `decode ${T} tokens incremental`, h, dh, l, ms_median: stepMs },
    { bench: 'causal', kernel: `decode ${T} tokens recomputing`, h, dh, l, ms_median: recomputeMs },
  ],
});
console.log(`recorded in ${path.relative(root, file)}`);
