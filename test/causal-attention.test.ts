// Causal Luna attention (luna-math.md 3, 5.3, 5.4): the fused chunked kernels and the op.
//   - the float64 reference against an independent JS implementation of the cumsum form;
//   - the fast float32 kernels against the float64 reference with design.md's policy
//       maxabs(fast - ref64) <= F * maxabs(plain32 - ref64) + 4 * 2^-23 * maxabs(ref64)
//     (F = 2 forward, 3 backward; plain32 is the reference's float32 instantiation), outputs
//     NaN-poisoned before every kernel call; the float64 kernels against the reference at 1e-11;
//   - φ itself (softplus with its PyTorch threshold, elu + 1) and its slope, element by element;
//   - float64 central-difference gradchecks through the op at odd sizes, with chunk lengths that
//     do not divide n, masks, tied and untied k/v, both activations and dropout with a fixed seed;
//   - fully masked batch elements (output 0, gradient 0), single-slot rows, thread-count
//     independence, the op against the raw addon.
// Incremental decoding and the validation of the arguments are in causal-decode.test.ts.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { getNumThreads, gradcheck, ops, setNumThreads, tensor, type Tensor } from '../lib/index';
import { setCausalChunkForTesting } from '../lib/ops/causal';
import { isPoisonOutputs, setPoisonOutputs } from '../lib/testing';
import type { CausalBackwardArgs, CausalForwardArgs } from '../lib/native-ops';
import {
  firstBitwiseDifference,
  firstNonFinite,
  maskTensor,
  maxAbs,
  maxAbsDiff,
  randTensor,
  randnF64,
  randomMask,
  rngFor,
  values,
  where,
  type FloatArray,
} from './helpers';
import { addon } from './native-helpers';

const EPS32 = 2 ** -23;
const LN2 = Math.LN2;

type Activation = 'softplus' | 'elu';

interface Problem {
  q: FloatArray;
  k: FloatArray;
  v: FloatArray; // the same array as k when tied
  kc: FloatArray;
  pq: FloatArray;
  mask: Uint8Array | null;
  B: number;
  h: number;
  n: number;
  l: number;
  dh: number;
  scale: number;
  activation: Activation;
  dropout?: number;
  seed?: number;
  chunk?: number;
}

interface Case {
  B: number;
  h: number;
  n: number;
  l: number;
  dh: number;
  tied?: boolean;
  masked?: boolean;
  act?: Activation;
  chunk?: number;
  dropout?: number;
  zScale?: number; // multiplies kc: large pack logits (softplus above its threshold)
  qScale?: number; // multiplies q: sharper unpack softmax
}

function label(c: Case): string {
  return (
    `B=${c.B} h=${c.h} n=${c.n} l=${c.l} dh=${c.dh}${c.tied ? ' tied' : ''}${c.masked ? ' masked' : ''}` +
    ` ${c.act ?? 'softplus'}${c.chunk ? ` chunk=${c.chunk}` : ''}${c.dropout ? ` p=${c.dropout}` : ''}` +
    `${c.zScale ? ` kc*${c.zScale}` : ''}${c.qScale ? ` q*${c.qScale}` : ''}`
  );
}

function makeProblem(c: Case, dtype: 'float32' | 'float64' = 'float32'): Problem {
  const rng = rngFor(label(c));
  const F = dtype === 'float32' ? Float32Array : Float64Array;
  const N = c.B * c.h * c.n * c.dh;
  const q = F.from(randnF64(rng, N, c.qScale ?? 1));
  const k = F.from(randnF64(rng, N));
  const v = c.tied ? k : F.from(randnF64(rng, N));
  const kc = F.from(randnF64(rng, N, c.zScale ?? 1));
  const pq = F.from(randnF64(rng, c.B * c.h * c.l * c.dh));
  const mask = c.masked ? randomMask(rng, c.B, c.l, 0.3) : null;
  const p: Problem = { q, k, v, kc, pq, mask, B: c.B, h: c.h, n: c.n, l: c.l, dh: c.dh, scale: 1 / Math.sqrt(c.dh), activation: c.act ?? 'softplus' };
  if (c.dropout) {
    p.dropout = c.dropout;
    p.seed = rng.int(0, 2 ** 40);
  }
  if (c.chunk) p.chunk = c.chunk;
  return p;
}

function toF64(p: Problem): Problem {
  const k = Float64Array.from(p.k);
  return { ...p, q: Float64Array.from(p.q), k, v: p.v === p.k ? k : Float64Array.from(p.v), kc: Float64Array.from(p.kc), pq: Float64Array.from(p.pq) };
}

const alloc = (like: FloatArray, n: number) => (like instanceof Float64Array ? new Float64Array(n) : new Float32Array(n)).fill(NaN);

type Kind = 'fast' | 'reference';

function forward(kind: Kind, p: Problem): { out: FloatArray; lse: FloatArray } {
  const out = alloc(p.q, p.q.length);
  const lse = alloc(p.q, p.B * p.h * p.n);
  const args = { ...p, out, lse } as CausalForwardArgs;
  if (kind === 'fast') addon.causalForward(args);
  else addon.causalReferenceForward(args);
  return { out, lse };
}

interface Grads {
  dq: FloatArray;
  dk: FloatArray;
  dv: FloatArray;
  dkc: FloatArray;
  dpq: FloatArray;
}

function backward(kind: Kind, p: Problem, dout: FloatArray): Grads {
  const dk = alloc(p.q, p.q.length);
  const g: Grads = { dq: alloc(p.q, p.q.length), dk, dv: p.k === p.v ? dk : alloc(p.q, p.q.length), dkc: alloc(p.q, p.q.length), dpq: alloc(p.q, p.pq.length) };
  const args = { ...p, dout, ...g } as CausalBackwardArgs;
  if (kind === 'fast') addon.causalBackward(args);
  else addon.causalReferenceBackward(args);
  return g;
}

// ---- An independent implementation: the cumsum form of luna-math.md 3, in plain JS float64 ----

function phiJs(act: Activation, z: number): number {
  if (act === 'elu') return z > 0 ? z + 1 : Math.exp(z);
  if (z * LN2 > 20) return z;
  return Math.max(z, 0) + Math.log1p(Math.exp(-LN2 * Math.abs(z))) / LN2;
}

function phiSlopeJs(act: Activation, z: number): number {
  if (act === 'elu') return z > 0 ? 1 : Math.exp(z);
  if (z * LN2 > 20) return 1;
  return 1 / (1 + Math.exp(-LN2 * z));
}

/** Kbar_t = (1/t) cumsum_j Φ_j K_j, Vbar likewise ([n, l, dh] per head), then softmax and O. */
function cumsumCausal(p: Problem): Float64Array {
  const { B, h, n, l, dh, scale } = p;
  const out = new Float64Array(B * h * n * dh);
  for (let b = 0; b < B; b++) {
    const masked = (r: number) => p.mask !== null && p.mask[b * l + r] === 1;
    for (let hh = 0; hh < h; hh++) {
      const bh = b * h + hh;
      const row = (a: FloatArray, j: number, e: number) => a[(bh * n + j) * dh + e];
      const phi: number[][] = [];
      for (let j = 0; j < n; j++) {
        phi.push([]);
        for (let r = 0; r < l; r++) {
          let z = 0;
          for (let e = 0; e < dh; e++) z += row(p.kc, j, e) * p.pq[(bh * l + r) * dh + e];
          phi[j].push(phiJs(p.activation, scale * z));
        }
      }
      const kcum = new Float64Array(l * dh);
      const vcum = new Float64Array(l * dh);
      for (let j = 0; j < n; j++) {
        const t = j + 1;
        for (let r = 0; r < l; r++)
          for (let e = 0; e < dh; e++) {
            kcum[r * dh + e] += phi[j][r] * row(p.k, j, e);
            vcum[r * dh + e] += phi[j][r] * row(p.v, j, e);
          }
        const logits: number[] = [];
        for (let r = 0; r < l; r++) {
          let s = 0;
          for (let e = 0; e < dh; e++) s += scale * row(p.q, j, e) * (kcum[r * dh + e] / t);
          logits.push(masked(r) ? -Infinity : s);
        }
        const top = Math.max(...logits);
        if (top === -Infinity) continue; // every slot masked: output 0
        const w = logits.map((x) => Math.exp(x - top));
        const z = w.reduce((a, x) => a + x, 0);
        for (let r = 0; r < l; r++)
          for (let e = 0; e < dh; e++) out[(bh * n + j) * dh + e] += (w[r] / z) * (vcum[r * dh + e] / t);
      }
    }
  }
  return out;
}

describe('the float64 reference agrees with an independent JS cumsum implementation', () => {
  const cases: Case[] = [
    { B: 1, h: 1, n: 1, l: 1, dh: 1 },
    { B: 2, h: 2, n: 7, l: 3, dh: 5, masked: true },
    { B: 1, h: 2, n: 9, l: 4, dh: 6, tied: true, act: 'elu', masked: true },
    { B: 2, h: 1, n: 6, l: 3, dh: 4, zScale: 20 }, // pack logits beyond softplus's threshold
  ];
  for (const c of cases) {
    it(label(c), () => {
      const p = makeProblem(c, 'float64');
      const ref = forward('reference', p);
      const js = cumsumCausal(p);
      expect(maxAbsDiff(ref.out, js), where(label(c))).toBeLessThanOrEqual(1e-12 * Math.max(1, maxAbs(js)));
    });
  }

  it('the tied reference gradient is the untied dk + dv', () => {
    const c: Case = { B: 2, h: 2, n: 9, l: 3, dh: 5, tied: true, masked: true };
    const p = makeProblem(c, 'float64');
    const untied: Problem = { ...p, v: Float64Array.from(p.k) };
    const dout = randnF64(rngFor('tied ref dout'), p.q.length);
    const t = backward('reference', p, dout);
    const u = backward('reference', untied, dout);
    expect(t.dk).toBe(t.dv);
    expect(maxAbsDiff(t.dk, u.dk.map((x, i) => x + u.dv[i])), where(label(c))).toBeLessThan(1e-12);
    expect(maxAbsDiff(t.dq, u.dq), where(label(c))).toBeLessThan(1e-12);
  });
});

// ---- Fast kernels against the reference ----

function expectFinite(a: FloatArray, what: string, ctx: string) {
  const i = firstNonFinite(a);
  expect(i, `${what}[${i}] = ${a[i]} is not finite (unwritten or overflowed) ${ctx}`).toBe(-1);
}

function expectWithin(what: string, fast: FloatArray, plain: FloatArray, ref: FloatArray, factor: number, ctx: string) {
  const errFast = maxAbsDiff(fast, ref);
  const errPlain = maxAbsDiff(plain, ref);
  const bound = factor * errPlain + 4 * EPS32 * maxAbs(ref);
  expect(
    errFast,
    `${what}: fast error ${errFast.toExponential(3)} > ${factor} x plain-float32 error ${errPlain.toExponential(3)}` +
      ` + 4 ulp x max ${maxAbs(ref).toExponential(3)} = ${bound.toExponential(3)} ${ctx}`,
  ).toBeLessThanOrEqual(bound);
}

const GRAD_NAMES = ['dq', 'dk', 'dv', 'dkc', 'dpq'] as const;

function checkParity32(c: Case) {
  const ctx = where(label(c));
  const p32 = makeProblem(c);
  const p64 = toF64(p32);
  const ref = forward('reference', p64);
  const plain = forward('reference', p32);
  const fast = forward('fast', p32);
  expectFinite(fast.out, 'out', ctx);
  expectFinite(fast.lse, 'lse', ctx);
  expectWithin('out', fast.out, plain.out, ref.out, 2, ctx);
  expectWithin('lse', fast.lse, plain.lse, ref.lse, 2, ctx);

  const dout32 = Float32Array.from(randnF64(rngFor(`${label(c)} dout`), p32.q.length));
  const refB = backward('reference', p64, Float64Array.from(dout32));
  const plainB = backward('reference', p32, dout32);
  const fastB = backward('fast', p32, dout32);
  for (const g of GRAD_NAMES) {
    if (g === 'dv' && c.tied) continue;
    expectFinite(fastB[g], g, ctx);
    expectWithin(g === 'dk' && c.tied ? 'dk+dv (tied)' : g, fastB[g], plainB[g], refB[g], 3, ctx);
  }
}

function checkParity64(c: Case) {
  const ctx = where(`${label(c)} float64`);
  const p = makeProblem(c, 'float64');
  const ref = forward('reference', p);
  const fast = forward('fast', p);
  const dout = randnF64(rngFor(`${label(c)} dout`), p.q.length);
  const refB = backward('reference', p, dout);
  const fastB = backward('fast', p, dout);
  const pairs: [string, FloatArray, FloatArray][] = [
    ['out', fast.out, ref.out],
    ['lse', fast.lse, ref.lse],
    ...GRAD_NAMES.map((g) => [g, fastB[g], refB[g]] as [string, FloatArray, FloatArray]),
  ];
  for (const [what, got, want] of pairs) {
    const err = maxAbsDiff(got, want);
    const bound = 1e-11 * Math.max(1, maxAbs(want));
    expect(err, `${what}: float64 error ${err.toExponential(3)} > ${bound.toExponential(3)} ${ctx}`).toBeLessThanOrEqual(bound);
  }
}

// The policy compares two maxima. Because of the 1/t in every prefix mean, the largest values,
// and with them the largest errors, sit in the first positions of each head, so it is the number
// of heads (B*h) that decides how many rows the maxima are taken over: with two heads the plain
// float32 maximum is sometimes luckily small (measured: ~1% of checks with a correct kernel). Every
// case has B*h >= 8 and at least 64 rows. Dropout is 0 here (luna-math.md 9); the dropout cases
// are checked in float64 below and by the gradchecks.
//
// Inputs are unscaled: with large pack logits and sharp softmaxes (kc x 10, q x 3) a few
// ill-conditioned rows dominate both maxima, every float32 implementation's error there is
// heavy-tailed, and one sample of max(fast)/max(plain) exceeds 2-3 in about 1% of draws even
// though the kernel's error is the smaller one at every quantile (measured over 5000 draws:
// median 0.5-0.9x, p99 0.6-1x the plain error). Such inputs are covered in float64 below, by the
// gradchecks and by the element-by-element test of φ.
function parityCases(): Case[] {
  const list: Case[] = [];
  const NS = [1, 7, 33, 100, 257];
  const LS = [1, 3, 16, 17];
  const DHS = [5, 32, 48, 64, 80];
  const CHUNKS = [undefined, 5, 13, 32];
  let i = 0;
  for (const n of NS)
    for (const l of LS) {
      const dh = DHS[i % DHS.length];
      const h = Math.max(4, Math.ceil(64 / (2 * n)));
      list.push({
        B: 2,
        h,
        n,
        l,
        dh,
        tied: i % 2 === 0,
        masked: i % 3 !== 0,
        act: i % 4 === 1 ? 'elu' : 'softplus',
        chunk: CHUNKS[i % CHUNKS.length],
      });
      i++;
    }
  // The benchmark's shape class (l = 16, dh = 64) over several default chunks.
  list.push({ B: 2, h: 4, n: 1000, l: 16, dh: 64, tied: true });
  list.push({ B: 2, h: 4, n: 300, l: 16, dh: 64, masked: true, act: 'elu' });
  return list;
}

// Large pack logits and sharp softmaxes; dropout on Φ and Bm (the kernels must draw exactly the
// reference's masks).
const STRESS_AND_DROPOUT_CASES: Case[] = [
  { B: 2, h: 4, n: 257, l: 3, dh: 48, masked: true, act: 'elu', chunk: 5, zScale: 10, qScale: 3 },
  { B: 2, h: 8, n: 1, l: 17, dh: 64, zScale: 10 },
  { B: 2, h: 4, n: 100, l: 16, dh: 32, tied: true, qScale: 3 },
  { B: 2, h: 1, n: 150, l: 16, dh: 64, dropout: 0.2 },
  { B: 1, h: 2, n: 90, l: 5, dh: 12, tied: true, masked: true, dropout: 0.4, chunk: 7 },
  { B: 2, h: 2, n: 33, l: 3, dh: 5, act: 'elu', dropout: 0.7, chunk: 5 },
];

describe('fast float32 kernels vs the float64 reference (raw addon, poisoned outputs)', () => {
  for (const c of parityCases()) it(label(c), () => checkParity32(c));
});

describe('fast float64 kernels vs the float64 reference (raw addon, poisoned outputs)', () => {
  for (const c of [...parityCases(), ...STRESS_AND_DROPOUT_CASES]) if (c.n <= 300) it(label(c), () => checkParity64(c));
});

describe('φ and its slope, element by element (n = l = dh = 1: out = φ(z), dkc = φ\'(z))', () => {
  // With one position, one slot and one channel, Bm = 1, so out = φ(z) v and, with v = dout = 1,
  // dkc = φ'(z) pq scale. Thousands of heads give thousands of z values in one call.
  const zs: number[] = [];
  for (let z = -120; z <= 60; z += 0.37) zs.push(z);
  zs.push(0, -0, 28.8, 28.86, 28.9, 29, 30, 40, 1e-8, -1e-8, -90, -130, -200, 150);
  for (const act of ['softplus', 'elu'] as const) {
    for (const F of [Float32Array, Float64Array]) {
      it(`${act} ${F.name}`, () => {
        const H = zs.length;
        const z = F.from(zs);
        const ones = new F(H).fill(1);
        const p: Problem = { q: ones, k: ones, v: ones, kc: z, pq: ones, mask: null, B: 1, h: H, n: 1, l: 1, dh: 1, scale: 1, activation: act };
        const f = forward('fast', p);
        const g = backward('fast', p, ones);
        // float32: a few ulp of the value; the far tail (|φ| < 1e-30) may flush to 0.
        const rel = F === Float32Array ? 4 * EPS32 : 1e-14;
        for (let i = 0; i < H; i++) {
          const zi = z[i];
          const want = phiJs(act, zi);
          const slope = phiSlopeJs(act, zi);
          expect(Math.abs(f.out[i] - want), `φ(${zi}) = ${f.out[i]}, want ${want}`).toBeLessThanOrEqual(rel * Math.abs(want) + 1e-30);
          expect(Math.abs(g.dkc[i] - slope), `φ'(${zi}) = ${g.dkc[i]}, want ${slope}`).toBeLessThanOrEqual(rel * Math.abs(slope) + 1e-30);
        }
        // Above PyTorch's threshold (z ln 2 > 20) φ is z itself and φ' is 1.
        const i30 = zs.indexOf(30);
        expect(f.out[i30]).toBe(act === 'softplus' ? 30 : 31);
        expect(g.dkc[i30]).toBe(1);
      });
    }
  }
  it('NaN pack logits give NaN, not a plausible number', () => {
    const p: Problem = {
      q: new Float32Array([1]), k: new Float32Array([1]), v: new Float32Array([1]), kc: new Float32Array([NaN]),
      pq: new Float32Array([1]), mask: null, B: 1, h: 1, n: 1, l: 1, dh: 1, scale: 1, activation: 'softplus',
    };
    expect(Number.isNaN(forward('fast', p).out[0])).toBe(true);
  });
});

// ---- Gradchecks through the op (float64) ----

const TOL = { eps: 1e-6, atol: 1e-5, rtol: 1e-3 };

interface GradCase extends Case {
  scale?: number;
  fullyMaskedBatch?: number; // this batch element gets every P slot masked
}

function gradcheckCase(c: GradCase) {
  const name = label(c) + (c.scale !== undefined ? ` scale=${c.scale}` : '') + (c.fullyMaskedBatch !== undefined ? ' fully masked batch' : '');
  const rng = rngFor(name);
  const shape = [c.B, c.h, c.n, c.dh];
  const q = randTensor(rng, shape, { requiresGrad: true, scale: c.qScale ?? 1 });
  const k = randTensor(rng, shape, { requiresGrad: true });
  const v = c.tied ? k : randTensor(rng, shape, { requiresGrad: true });
  const kc = randTensor(rng, shape, { requiresGrad: true, scale: c.zScale ?? 1 });
  const pq = randTensor(rng, [c.B, c.h, c.l, c.dh], { requiresGrad: true });
  const options: Record<string, unknown> = { activation: c.act ?? 'softplus' };
  if (c.masked || c.fullyMaskedBatch !== undefined) {
    const m = randomMask(rng, c.B, c.l, 0.4);
    if (c.fullyMaskedBatch !== undefined) m.fill(1, c.fullyMaskedBatch * c.l, (c.fullyMaskedBatch + 1) * c.l);
    options.packPaddingMask = maskTensor(m, c.B, c.l);
  }
  if (c.scale !== undefined) options.scale = c.scale;
  if (c.dropout) {
    options.dropout = c.dropout;
    options.seed = rng.int(0, 2 ** 40);
  }
  setCausalChunkForTesting(c.chunk);
  try {
    const opts = { ...TOL, seed: rng.u32() };
    const ok = c.tied
      ? gradcheck((a: Tensor, kv: Tensor, x: Tensor, y: Tensor) => ops.causalLunaAttention(a, kv, kv, x, y, options), [q, k, kc, pq], opts)
      : gradcheck((a: Tensor, b: Tensor, d: Tensor, x: Tensor, y: Tensor) => ops.causalLunaAttention(a, b, d, x, y, options), [q, k, v, kc, pq], opts);
    expect(ok, where(name)).toBe(true);
  } catch (e) {
    throw new Error(`${(e as Error).message} ${where(name)}`);
  } finally {
    setCausalChunkForTesting(undefined);
  }
}

describe('gradcheck of causalLunaAttention (float64)', () => {
  const cases: GradCase[] = [
    { B: 1, h: 1, n: 1, l: 1, dh: 3 }, // n = l = 1
    { B: 2, h: 2, n: 7, l: 1, dh: 5 }, // l = 1: one slot, the softmax is constant
    { B: 1, h: 2, n: 7, l: 3, dh: 5, masked: true, chunk: 3 },
    { B: 2, h: 1, n: 33, l: 3, dh: 4, tied: true, masked: true, chunk: 5 },
    { B: 1, h: 1, n: 33, l: 16, dh: 5, masked: true, chunk: 8 },
    { B: 1, h: 2, n: 33, l: 3, dh: 6, chunk: 64 },
    { B: 2, h: 2, n: 7, l: 16, dh: 3, tied: true, masked: true, scale: 0.7 },
    { B: 1, h: 1, n: 12, l: 3, dh: 12, tied: true, chunk: 5, qScale: 3 },
    { B: 1, h: 2, n: 9, l: 3, dh: 5, act: 'elu', masked: true, chunk: 4 },
    { B: 1, h: 1, n: 10, l: 3, dh: 5, tied: true, act: 'elu', chunk: 3 },
    // Pack logits well beyond softplus's threshold (φ = z, φ' = 1) mixed with ordinary ones.
    { B: 1, h: 2, n: 9, l: 3, dh: 4, zScale: 25, chunk: 4 },
    // Dropout on Φ and on Bm with a fixed seed: the backward regenerates both masks.
    { B: 1, h: 2, n: 11, l: 3, dh: 5, dropout: 0.3, chunk: 4 },
    { B: 2, h: 1, n: 9, l: 4, dh: 3, tied: true, masked: true, dropout: 0.5, act: 'elu', chunk: 2 },
    // A batch element whose every P slot is masked: output 0 and gradient 0 for it.
    { B: 3, h: 1, n: 7, l: 3, dh: 4, fullyMaskedBatch: 1, chunk: 3 },
  ];
  for (const c of cases) it(label(c) + (c.fullyMaskedBatch !== undefined ? ' fully masked batch' : ''), () => gradcheckCase(c));
});

// ---- Conventions ----

describe('fully masked batch elements: output exactly 0, gradients exactly 0', () => {
  for (const dtype of ['float32', 'float64'] as const) {
    for (const tied of [false, true]) {
      const name = `fully masked ${dtype}${tied ? ' tied' : ''}`;
      it(name, () => {
        const rng = rngFor(name);
        const B = 3, h = 2, n = 70, l = 5, dh = 8;
        const m = randomMask(rng, B, l, 0.4);
        m.fill(1, l, 2 * l); // batch 1: every slot masked
        const mk = (shape: number[]) => randTensor(rng, shape, { dtype, requiresGrad: true });
        const q = mk([B, h, n, dh]), k = mk([B, h, n, dh]), v = tied ? k : mk([B, h, n, dh]), kc = mk([B, h, n, dh]);
        const pq = mk([B, h, l, dh]);
        const y = ops.causalLunaAttention(q, k, v, kc, pq, { packPaddingMask: maskTensor(m, B, l), dropout: 0.2, seed: 7 });
        y.backward(randTensor(rng, [B, h, n, dh], { dtype }));
        const per = h * n * dh;
        const check = (t: Tensor, what: string, size: number) => {
          const a = values(t);
          for (let i = 0; i < a.length; i++) {
            const b = Math.floor(i / size);
            if (b === 1) expect(a[i], `${what}[${i}] of the fully masked batch ${where(name)}`).toBe(0);
            else expect(Number.isFinite(a[i]), `${what}[${i}] ${where(name)}`).toBe(true);
          }
        };
        check(y, 'out', per);
        for (const [what, t] of [['dq', q], ['dk', k], ['dv', v], ['dkc', kc]] as const) check(t.grad!, what, per);
        check(pq.grad!, 'dpq', h * l * dh);
      });
    }
  }

  it('l = 0 (no P slot at all): output 0, gradients 0', () => {
    const rng = rngFor('l = 0');
    const q = randTensor(rng, [2, 2, 5, 4], { requiresGrad: true });
    const pq = randTensor(rng, [2, 2, 0, 4], { requiresGrad: true });
    const y = ops.causalLunaAttention(q, q, q, q, pq);
    expect(values(y).every((x) => x === 0)).toBe(true);
    y.backward(randTensor(rng, [2, 2, 5, 4]));
    expect(values(q.grad!).every((x) => x === 0)).toBe(true);
  });
});

describe('rows with a single unmasked slot', () => {
  // The softmax is the constant 1, so the unpack logits get no gradient: dq = 0 and the key
  // gradient through the logits is 0 exactly (the kernel recomputes Bm = 1 exactly).
  for (const dtype of [Float32Array, Float64Array]) {
    it(`${dtype.name}: dq = 0 and dk = 0 exactly (untied)`, () => {
      const c: Case = { B: 2, h: 2, n: 45, l: 4, dh: 16, chunk: 16 };
      const p = makeProblem(c, dtype === Float32Array ? 'float32' : 'float64');
      const mask = new Uint8Array(c.B * c.l).fill(1);
      mask[1] = 0;
      mask[c.l + 3] = 0;
      const pm = { ...p, mask };
      const g = backward('fast', pm, dtype.from(randnF64(rngFor('single slot dout'), p.q.length)));
      expect(g.dq.every((x) => x === 0), where('single slot dq')).toBe(true);
      expect(g.dk.every((x) => x === 0), where('single slot dk')).toBe(true);
      expectFinite(g.dv, 'dv', where('single slot'));
    });
  }
});

describe('the kernels are bitwise the same for any thread count; dropout is reproducible', () => {
  const saved = getNumThreads();
  afterAll(() => setNumThreads(saved));
  it('1 and 2 threads, and the same seed twice', () => {
    const c: Case = { B: 2, h: 3, n: 300, l: 16, dh: 32, masked: true, dropout: 0.25 };
    const p = makeProblem(c);
    const dout = Float32Array.from(randnF64(rngFor('threads dout'), p.q.length));
    setNumThreads(1);
    const f1 = forward('fast', p);
    const b1 = backward('fast', p, dout);
    setNumThreads(2);
    const f2 = forward('fast', p);
    const b2 = backward('fast', p, dout);
    expect(firstBitwiseDifference(f1.out, f2.out), where(label(c))).toBe(-1);
    for (const g of GRAD_NAMES) expect(firstBitwiseDifference(b1[g], b2[g]), `${g} ${where(label(c))}`).toBe(-1);
    const other = forward('fast', { ...p, seed: p.seed! + 1 });
    expect(maxAbsDiff(other.out, f1.out), 'another seed gives another mask').toBeGreaterThan(0);
    const none = forward('fast', { ...p, dropout: 0 });
    expect(maxAbsDiff(none.out, f1.out), 'dropout changes the output').toBeGreaterThan(0);
  });
});

// ---- The op ----

describe('causalLunaAttention = the raw addon; poisoned outputs; tied k = v', () => {
  let wasPoisoned = false;
  beforeAll(() => {
    wasPoisoned = isPoisonOutputs();
    setPoisonOutputs(true);
  });
  afterAll(() => setPoisonOutputs(wasPoisoned));

  for (const tied of [false, true]) {
    it(`float32${tied ? ' tied' : ''}: values and gradients equal the kernel's`, () => {
      const name = `op = raw${tied ? ' tied' : ''}`;
      const rng = rngFor(name);
      const B = 2, h = 2, n = 130, l = 16, dh = 24;
      const mk = (shape: number[]) => randTensor(rng, shape, { dtype: 'float32', requiresGrad: true });
      const q = mk([B, h, n, dh]), k = mk([B, h, n, dh]), v = tied ? k : mk([B, h, n, dh]), kc = mk([B, h, n, dh]);
      const pq = mk([B, h, l, dh]);
      const m = randomMask(rng, B, l);
      const g = randTensor(rng, [B, h, n, dh], { dtype: 'float32' });
      const y = ops.causalLunaAttention(q, k, v, kc, pq, { packPaddingMask: maskTensor(m, B, l), scale: 0.2, activation: 'elu' });
      y.backward(g);
      const data = (t: Tensor) => t.dataSync() as Float32Array;
      const kd = data(k);
      const p: Problem = { q: data(q), k: kd, v: tied ? kd : data(v), kc: data(kc), pq: data(pq), mask: m, B, h, n, l, dh, scale: 0.2, activation: 'elu' };
      const f = forward('fast', p);
      const b = backward('fast', p, data(g));
      expect(firstBitwiseDifference(data(y), f.out as Float32Array), where(name)).toBe(-1);
      expect(firstBitwiseDifference(data(q.grad!), b.dq as Float32Array), where(name)).toBe(-1);
      expect(firstBitwiseDifference(data(k.grad!), b.dk as Float32Array), where(name)).toBe(-1);
      if (!tied) expect(firstBitwiseDifference(data(v.grad!), b.dv as Float32Array), where(name)).toBe(-1);
      expect(firstBitwiseDifference(data(kc.grad!), b.dkc as Float32Array), where(name)).toBe(-1);
      expect(firstBitwiseDifference(data(pq.grad!), b.dpq as Float32Array), where(name)).toBe(-1);
    });
  }

  it('distinct k and v tensors over one buffer are not taken for tied', () => {
    const rng = rngFor('aliased k v');
    const q = randTensor(rng, [1, 2, 9, 4], { requiresGrad: true });
    const k = randTensor(rng, [1, 2, 9, 4], { requiresGrad: true });
    const kc = randTensor(rng, [1, 2, 9, 4], { requiresGrad: true });
    const pq = randTensor(rng, [1, 2, 3, 4], { requiresGrad: true });
    const v = k.detach(); // shares k's buffer, gets no gradient
    expect(gradcheck((a: Tensor, b: Tensor, x: Tensor, y: Tensor) => ops.causalLunaAttention(a, b, v, x, y), [q, k, kc, pq], TOL)).toBe(true);
  });

  it('empty sizes give empty outputs', () => {
    const z = tensor(new Float32Array(0), { shape: [2, 0, 5, 4] });
    const pq = tensor(new Float32Array(0), { shape: [2, 0, 3, 4] });
    expect(ops.causalLunaAttention(z, z, z, z, pq).shape).toEqual([2, 0, 5, 4]);
  });
});
