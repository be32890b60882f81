// The core of Luna attention at a realistic size, forward and backward, then a gradcheck.
//
//   packed = packAttention(pq, c, c)            the l pack queries attend to the n context rows
//   out    = unpackAttention(q, packed, packed) the n queries attend to the l packed rows
//
// Key and value are the same tensor in both calls, as in Luna's tied projection. (In the full
// layer the unpack's keys are a projection of `packed`; here it is used directly.)
// Run with `npm start` after `npm install`.
import { backendInfo, gradcheck, ops, randn } from '../dist/index.mjs';

const [B, h, n, l, dh] = [2, 4, 2048, 16, 64];
const REPS = 5;

const info = backendInfo();
console.log(`CPU: ${info.cpu.isa}, ${info.cpu.threads} threads; CUDA: ${info.cuda.available ? `${info.cuda.deviceCount} device(s)` : info.cuda.reason}`);

const pq = randn([B, h, l, dh], { seed: 1, requiresGrad: true }); // pack queries (from P)
const c = randn([B, h, n, dh], { seed: 2, requiresGrad: true }); // context keys = values (from C)
const q = randn([B, h, n, dh], { seed: 3, requiresGrad: true }); // unpack queries (from X)

function step(cotangent) {
  const packed = ops.packAttention(pq, c, c);
  const out = ops.unpackAttention(q, packed, packed);
  if (cotangent) out.backward(cotangent);
  return { packed, out };
}

const median = (xs) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)];
function time(fn) {
  fn(); // warm-up: the first call starts the thread pool
  const ms = [];
  for (let i = 0; i < REPS; i++) {
    const t0 = process.hrtime.bigint();
    fn();
    ms.push(Number(process.hrtime.bigint() - t0) / 1e6);
  }
  return median(ms);
}

const { packed, out } = step(null);
console.log(`q ${fmtShape(q)}, c ${fmtShape(c)}, pq ${fmtShape(pq)} -> packed ${fmtShape(packed)} -> out ${fmtShape(out)} (${out.dtype})`);

const cotangent = randn(out.shape, { seed: 4 });
const fwdMs = time(() => step(null));
const fwdBwdMs = time(() => step(cotangent));

// Forward: two matmuls per op (q k^T, then probabilities times v), each 2 * rows * keys * dh
// flops, with rows * keys = l * n in both pack and unpack. Backward recomputes q k^T and forms
// dv, dp, dq and dk: 5 matmuls against the forward's 2.
const fwdFlops = 2 * (4 * B * h * l * n * dh);
const bwdFlops = 2.5 * fwdFlops;
console.log(`forward          ${fwdMs.toFixed(2)} ms  ${(fwdFlops / fwdMs / 1e6).toFixed(1)} GFLOP/s`);
console.log(`forward+backward ${fwdBwdMs.toFixed(2)} ms  ${((fwdFlops + bwdFlops) / fwdBwdMs / 1e6).toFixed(1)} GFLOP/s (median of ${REPS})`);

// Gradients of one fresh backward (the timing loop accumulated into .grad).
for (const t of [pq, c, q]) t.grad = null;
step(cotangent);
const norm = (t) => Math.sqrt(t.grad.dataSync().reduce((s, x) => s + x * x, 0));
console.log(`grad norms: pq ${norm(pq).toFixed(4)}, c ${norm(c).toFixed(4)}, q ${norm(q).toFixed(4)}`);

// A small float64 case against central differences, with odd sizes (n = 7, l = 3, dh = 5).
const small = (shape, seed) => randn(shape, { seed, dtype: 'float64', requiresGrad: true });
const ok = gradcheck(
  (sq, sc, sp) => {
    const p = ops.packAttention(sp, sc, sc);
    return ops.unpackAttention(sq, p, p);
  },
  [small([1, 2, 7, 5], 5), small([1, 2, 7, 5], 6), small([1, 2, 3, 5], 7)],
);
console.log(`gradcheck (float64, B=1 h=2 n=7 l=3 dh=5): ${ok ? 'passed' : 'FAILED'}`);
if (!ok) process.exit(1);

function fmtShape(t) {
  return `[${t.shape.join(',')}]`;
}
