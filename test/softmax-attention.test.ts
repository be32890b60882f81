// ops.softmaxAttention and the flash-style softmax kernels behind it (native/INTERFACE-softmax.md):
//   - the float64 reference against a tiny naive implementation written here (forward and
//     backward, padding and causal masks, dropout through a JS copy of counter_rng.h);
//   - the fast float32 kernels against the float64 reference with design.md's policy
//       maxabs(fast - ref64) <= F * maxabs(plain32 - ref64) + 4 * 2^-23 * maxabs(ref64),
//     F = 2 forward (out, lse), 3 backward (dq, dk, dv), plain32 the reference's float32 build;
//     the float64 kernels to 1e-11 of the largest value. Outputs are NaN-poisoned first;
//   - float64 central-difference gradchecks at odd sizes (n = 1, m = 1, sizes across tile
//     borders, dh not a power of two, masks, causal with n != m, tied k === v, dropout);
//   - rows that see no key (output 0, gradient 0), a single visible key, NaN inputs;
//   - bitwise determinism across thread counts; ops = raw kernels; validation errors.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { getNumThreads, gradcheck, ops, setNumThreads, tensor, zeros, type Tensor } from '../lib/index';
import type { SoftmaxAttentionOptions } from '../lib/ops/softmax-attention';
import { loadNative } from '../lib/native';
import type { SoftmaxBackwardArgs, SoftmaxForwardArgs } from '../lib/native-ops';
import { isPoisonOutputs, setPoisonOutputs } from '../lib/testing';
import {
  expectLunaError,
  firstBitwiseDifference,
  firstNonFinite,
  maskTensor,
  maxAbs,
  randTensor,
  randnF64,
  randomMask,
  rngFor,
  values,
  where,
  type FloatArray,
  type Rng,
} from './helpers';

const addon = loadNative();
const EPS32 = 2 ** -23;

// ---- raw calls --------------------------------------------------------------------------------

interface Problem {
  q: FloatArray;
  k: FloatArray;
  v: FloatArray; // the same array as k when tied
  mask: Uint8Array | null;
  B: number;
  h: number;
  lq: number;
  lk: number;
  dh: number;
  scale: number;
  causal: boolean;
  dropout?: number;
  seed?: number;
}

type Impl = 'fast' | 'reference';

function alloc(like: FloatArray, n: number): FloatArray {
  return (like instanceof Float64Array ? new Float64Array(n) : new Float32Array(n)).fill(NaN);
}

function forwardArgs(p: Problem): SoftmaxForwardArgs {
  const a: SoftmaxForwardArgs = {
    q: p.q, k: p.k, v: p.v, mask: p.mask, B: p.B, h: p.h, lq: p.lq, lk: p.lk, dh: p.dh, scale: p.scale, causal: p.causal,
    out: alloc(p.q, p.q.length), lse: alloc(p.q, p.B * p.h * p.lq),
  };
  if (p.dropout !== undefined) {
    a.dropout = p.dropout;
    a.seed = p.seed ?? 0;
  }
  return a;
}

/** Forward then backward with NaN-poisoned outputs; dk === dv when tied. */
function run(impl: Impl, p: Problem, dout: FloatArray) {
  const f = forwardArgs(p);
  if (impl === 'fast') addon.softmaxForward(f);
  else addon.softmaxReferenceForward(f);
  const dk = alloc(p.q, p.k.length);
  const b: SoftmaxBackwardArgs = { ...f, dout, dq: alloc(p.q, p.q.length), dk, dv: p.k === p.v ? dk : alloc(p.q, p.v.length) };
  if (impl === 'fast') addon.softmaxBackward(b);
  else addon.softmaxReferenceBackward(b);
  return { out: f.out, lse: f.lse, dq: b.dq, dk: b.dk, dv: b.dv };
}

function toF64(p: Problem): Problem {
  const k = Float64Array.from(p.k);
  return { ...p, q: Float64Array.from(p.q), k, v: p.v === p.k ? k : Float64Array.from(p.v) };
}

/** max |a - b| where equal values (also equal infinities: a masked row's lse) count as 0; NaN if any is NaN. */
function maxErr(a: ArrayLike<number>, b: ArrayLike<number>): number {
  if (a.length !== b.length) throw new Error(`length mismatch ${a.length} vs ${b.length}`);
  let m = 0;
  for (let i = 0; i < a.length; i++) {
    if (a[i] === b[i]) continue;
    const d = Math.abs(a[i] - b[i]);
    if (!(d <= m)) m = d; // NaN (or an infinity against a finite value) becomes the max
  }
  return m;
}

// ---- case construction ------------------------------------------------------------------------

interface Case {
  B: number;
  h: number;
  n: number;
  m: number;
  dh: number;
  causal: boolean;
  masked: boolean;
  tied: boolean;
  qScale?: number; // 4: logits with std ~4, stressing the online softmax
  dropout?: number;
}

function label(c: Case): string {
  return (
    `B=${c.B} h=${c.h} n=${c.n} m=${c.m} dh=${c.dh}${c.causal ? ' causal' : ''}${c.masked ? ' masked' : ''}` +
    `${c.tied ? ' tied' : ''}${c.qScale ? ` q*${c.qScale}` : ''}${c.dropout ? ` p=${c.dropout}` : ''}`
  );
}

function makeProblem(c: Case, rng: Rng): Problem {
  const q = Float32Array.from(randnF64(rng, c.B * c.h * c.n * c.dh, c.qScale ?? 1));
  const k = Float32Array.from(randnF64(rng, c.B * c.h * c.m * c.dh));
  const v = c.tied ? k : Float32Array.from(randnF64(rng, k.length));
  const mask = c.masked ? randomMask(rng, c.B, c.m, 0.3) : null;
  const p: Problem = { q, k, v, mask, B: c.B, h: c.h, lq: c.n, lk: c.m, dh: c.dh, scale: 1 / Math.sqrt(c.dh), causal: c.causal };
  if (c.dropout) {
    p.dropout = c.dropout;
    p.seed = rng.int(0, 2 ** 40);
  }
  return p;
}

// ---- a tiny naive implementation, independent of the C++ code ---------------------------------

// counter_bits of native/kernels/counter_rng.h, in BigInt.
const M64 = (1n << 64n) - 1n;
function counterBits(seed: bigint, index: bigint): number {
  let z = (index + ((0x9e3779b97f4a7c15n * (seed + 1n)) & M64)) & M64;
  z = ((z ^ (z >> 30n)) * 0xbf58476d1ce4e5b9n) & M64;
  z = ((z ^ (z >> 27n)) * 0x94d049bb133111ebn) & M64;
  z ^= z >> 31n;
  z ^= (seed * 0xd6e8feb86659fd93n) & M64;
  z = ((z ^ (z >> 32n)) * 0xd6e8feb86659fd93n) & M64;
  z = ((z ^ (z >> 32n)) * 0xd6e8feb86659fd93n) & M64;
  return Number(z >> 32n);
}

/**
 * Materialises S, P and the dropout factors per head and applies luna-math.md 5.1 literally,
 * with D computed as rowsum(P * dP) (not the kernels' rowsum(dO * O)).
 */
function naive(p: Problem, dout: Float64Array) {
  const { B, h, lq: n, lk: m, dh, scale } = p;
  const out = new Float64Array(B * h * n * dh), lse = new Float64Array(B * h * n);
  const dq = new Float64Array(out.length), dk = new Float64Array(B * h * m * dh), dv = new Float64Array(dk.length);
  const pr = p.dropout ?? 0;
  const threshold = Math.min(Math.floor(pr * 2 ** 32), 2 ** 32 - 1);
  const factor = (row: number, j: number) =>
    pr > 0 ? (counterBits(BigInt(p.seed ?? 0), BigInt(row) * BigInt(m) + BigInt(j)) >= threshold ? 1 / (1 - pr) : 0) : 1;
  const at = (x: FloatArray, bh: number, len: number, i: number, e: number) => x[(bh * len + i) * dh + e];
  for (let b = 0; b < B; b++)
    for (let hh = 0; hh < h; hh++) {
      const bh = b * h + hh;
      for (let i = 0; i < n; i++) {
        const row = bh * n + i;
        const vis: number[] = [];
        for (let j = 0; j < m; j++) if (!(p.mask && p.mask[b * m + j]) && !(p.causal && j > i + (m - n))) vis.push(j);
        if (vis.length === 0) {
          lse[row] = -Infinity;
          continue;
        }
        const s = vis.map((j) => {
          let d = 0;
          for (let e = 0; e < dh; e++) d += at(p.q, bh, n, i, e) * at(p.k, bh, m, j, e);
          return scale * d;
        });
        const mx = Math.max(...s);
        const z = s.reduce((a, x) => a + Math.exp(x - mx), 0);
        lse[row] = mx + Math.log(z);
        const P = s.map((x) => Math.exp(x - mx) / z);
        const F = vis.map((j) => factor(row, j));
        for (let t = 0; t < vis.length; t++)
          for (let e = 0; e < dh; e++) out[row * dh + e] += P[t] * F[t] * at(p.v, bh, m, vis[t], e);
        // Backward.
        const dP = vis.map((j, t) => {
          let d = 0;
          for (let e = 0; e < dh; e++) d += dout[row * dh + e] * at(p.v, bh, m, j, e);
          return d * F[t];
        });
        const D = P.reduce((a, x, t) => a + x * dP[t], 0);
        for (let t = 0; t < vis.length; t++) {
          const j = vis[t];
          const dS = P[t] * (dP[t] - D);
          for (let e = 0; e < dh; e++) {
            dq[row * dh + e] += scale * dS * at(p.k, bh, m, j, e);
            dk[(bh * m + j) * dh + e] += scale * dS * at(p.q, bh, n, i, e);
            dv[(bh * m + j) * dh + e] += P[t] * F[t] * dout[row * dh + e];
          }
        }
      }
    }
  if (p.k === p.v) for (let x = 0; x < dk.length; x++) dk[x] += dv[x];
  return { out, lse, dq, dk, dv: p.k === p.v ? dk : dv };
}

describe('the float64 reference against a naive implementation written here', () => {
  const cases: Case[] = [
    { B: 1, h: 1, n: 1, m: 1, dh: 1, causal: false, masked: false, tied: false },
    { B: 2, h: 2, n: 3, m: 7, dh: 5, causal: false, masked: true, tied: false },
    { B: 2, h: 1, n: 6, m: 4, dh: 3, causal: true, masked: false, tied: false }, // n > m: rows 0, 1 see nothing
    { B: 2, h: 2, n: 4, m: 9, dh: 6, causal: true, masked: true, tied: true },
    { B: 1, h: 2, n: 5, m: 8, dh: 4, causal: true, masked: true, tied: false, dropout: 0.3 },
    { B: 2, h: 1, n: 7, m: 7, dh: 3, causal: false, masked: false, tied: true, dropout: 0.5 },
  ];
  for (const c of cases) {
    it(label(c), () => {
      const ctx = where(`naive ${label(c)}`);
      const p = toF64(makeProblem(c, rngFor(`naive ${label(c)}`)));
      const dout = randnF64(rngFor(`naive dout ${label(c)}`), p.q.length);
      const ref = run('reference', p, dout);
      const js = naive(p, dout);
      for (const key of ['out', 'lse', 'dq', 'dk', 'dv'] as const) {
        const err = maxErr(ref[key], js[key]);
        expect(err, `${key} ${ctx}`).toBeLessThanOrEqual(1e-12 * Math.max(1, maxAbs(js[key])));
      }
    });
  }
});

// ---- fast kernels against the reference -------------------------------------------------------

function expectWithin(what: string, fast: FloatArray, plain: FloatArray, ref: FloatArray, factor: number, ctx: string) {
  const errFast = maxErr(fast, ref);
  const errPlain = maxErr(plain, ref);
  const bound = factor * errPlain + 4 * EPS32 * maxAbs(ref.filter(Number.isFinite));
  expect(
    errFast,
    `${what}: fast error ${errFast.toExponential(3)} > ${factor} x plain-float32 error ${errPlain.toExponential(3)}` +
      ` + 4 ulp = ${bound.toExponential(3)} ${ctx}`,
  ).toBeLessThanOrEqual(bound);
}

function checkParity(c: Case) {
  const ctx = where(label(c));
  const p32 = makeProblem(c, rngFor(label(c)));
  const p64 = toF64(p32);
  const dout32 = Float32Array.from(randnF64(rngFor(`${label(c)} dout`), p32.q.length));
  const dout64 = Float64Array.from(dout32);
  const ref = run('reference', p64, dout64);
  const plain = run('reference', p32, dout32);
  const fast = run('fast', p32, dout32);
  const fast64 = run('fast', p64, dout64);
  for (const [key, factor] of [['out', 2], ['lse', 2], ['dq', 3], ['dk', 3], ['dv', 3]] as const) {
    if (key === 'dv' && c.tied) continue; // dk holds dk + dv
    // Only a row that sees no key may be non-finite (lse = -inf), and then exactly as the reference.
    const bad = fast[key].findIndex((x, i) => !Number.isFinite(x) && x !== ref[key][i]);
    expect(bad, `${key}[${bad}] = ${fast[key][bad]} (unwritten or wrong) ${ctx}`).toBe(-1);
    expectWithin(c.tied && key === 'dk' ? 'dk+dv' : key, fast[key], plain[key], ref[key], factor, ctx);
    const e64 = maxErr(fast64[key], ref[key]);
    expect(e64, `${key} float64 ${ctx}`).toBeLessThanOrEqual(1e-11 * Math.max(1, maxAbs(ref[key].filter(Number.isFinite))));
  }
  if (c.masked) {
    // A padding key gets exactly zero gradient.
    let bad = '';
    for (let b = 0; b < c.B && !bad; b++)
      for (let j = 0; j < c.m && !bad; j++) {
        if (!p32.mask![b * c.m + j]) continue;
        for (let hh = 0; hh < c.h; hh++) {
          const base = ((b * c.h + hh) * c.m + j) * c.dh;
          for (let e = 0; e < c.dh; e++)
            if (fast.dk[base + e] !== 0 || fast.dv[base + e] !== 0) bad = `b=${b} h=${hh} j=${j}`;
        }
      }
    expect(bad, `gradient of a padding key is not 0 ${ctx}`).toBe('');
  }
}

// Sizes around the 64-row tiles (63, 64, 65, 129, ...), n != m both ways (the causal offset),
// B*h below 16 with several key tiles (the backward's partial dq sums) and above. Each case has
// at least 64 query rows (B*h*n): the policy compares two maxima, and over a handful of rows
// the plain float32 maximum can be luckily small.
function gridCases(): Case[] {
  const sizes: [number, number][] = [
    [1, 1], [1, 70], [70, 1], [7, 33], [33, 7], [64, 64], [65, 63], [63, 129], [130, 257], [257, 130], [200, 200],
  ];
  const dhs = [5, 16, 32, 48, 64, 80, 128];
  const list: Case[] = [];
  let i = 0;
  for (const causal of [false, true])
    for (const [n, m] of sizes) {
      const dh = dhs[i % dhs.length];
      const B = (i % 3) + 1;
      const h = Math.max(1 + (i % 2), Math.ceil(64 / (B * n)));
      list.push({ B, h, n, m, dh, causal, masked: i % 2 === 0, tied: i % 3 === 1 });
      i++;
    }
  list.push({ B: 1, h: 2, n: 150, m: 150, dh: 64, causal: true, masked: false, tied: false, qScale: 4 });
  list.push({ B: 2, h: 1, n: 90, m: 300, dh: 40, causal: false, masked: true, tied: false, qScale: 4 });
  list.push({ B: 4, h: 5, n: 70, m: 70, dh: 24, causal: true, masked: true, tied: false }); // B*h >= 16
  list.push({ B: 1, h: 1, n: 100, m: 1100, dh: 32, causal: true, masked: true, tied: true }); // 16 key chunks
  list.push({ B: 2, h: 2, n: 130, m: 120, dh: 32, causal: true, masked: true, tied: false, dropout: 0.2 });
  list.push({ B: 1, h: 3, n: 70, m: 140, dh: 12, causal: false, masked: false, tied: true, dropout: 0.5 });
  return list;
}

describe('fast kernels (float32 and float64) vs the float64 reference, poisoned outputs', () => {
  for (const c of gridCases()) it(label(c), () => checkParity(c));
});

// ---- special rows -----------------------------------------------------------------------------

describe('rows that see no key, a single key, NaN inputs (raw addon)', () => {
  for (const dtype of [Float32Array, Float64Array]) {
    it(`${dtype.name}: padding everywhere and causal n > m give out 0, lse -inf, zero gradients`, () => {
      const name = `no key ${dtype.name}`;
      const rng = rngFor(name);
      const B = 3, h = 2, n = 80, m = 70, dh = 16;
      const mask = randomMask(rng, B, m, 0.3);
      mask.fill(1, m, 2 * m); // batch 1: every key padding
      const p: Problem = {
        q: dtype.from(randnF64(rng, B * h * n * dh)), k: dtype.from(randnF64(rng, B * h * m * dh)),
        v: dtype.from(randnF64(rng, B * h * m * dh)), mask, B, h, lq: n, lk: m, dh, scale: 0.25, causal: true,
      };
      const g = run('fast', p, dtype.from(randnF64(rng, p.q.length)));
      const firstKept = (b: number) => mask.subarray(b * m, (b + 1) * m).indexOf(0);
      for (let b = 0; b < B; b++)
        for (let hh = 0; hh < h; hh++)
          for (let i = 0; i < n; i++) {
            const row = (b * h + hh) * n + i;
            // Causal with n > m: query i sees keys j <= i - 10; nothing when no kept key is that early.
            const empty = b === 1 || firstKept(b) > i - (n - m);
            const o = Array.from(g.out.subarray(row * dh, (row + 1) * dh));
            const d = Array.from(g.dq.subarray(row * dh, (row + 1) * dh));
            if (empty) {
              expect(g.lse[row], `lse row ${row} ${where(name)}`).toBe(-Infinity);
              expect(o.every((x) => x === 0) && d.every((x) => x === 0), `row ${row} ${where(name)}`).toBe(true);
            } else {
              const finite = Number.isFinite(g.lse[row]) && o.every(Number.isFinite) && d.every(Number.isFinite);
              expect(finite, `row ${row} ${where(name)}`).toBe(true);
            }
          }
      // Batch 1 and every padding key: no gradient.
      for (let b = 0; b < B; b++)
        for (let j = 0; j < m; j++)
          for (let hh = 0; hh < h; hh++) {
            const base = ((b * h + hh) * m + j) * dh;
            const dk = Array.from(g.dk.subarray(base, base + dh)), dv = Array.from(g.dv.subarray(base, base + dh));
            const zero = dk.every((x) => x === 0) && dv.every((x) => x === 0);
            if (mask[b * m + j]) expect(zero, `key ${j} of batch ${b} ${where(name)}`).toBe(true);
            else expect(dk.every(Number.isFinite) && dv.every(Number.isFinite), where(name)).toBe(true);
          }
      // The reference agrees on which rows are empty.
      const ref = run('reference', p, dtype.from(randnF64(rng, p.q.length)));
      expect(Array.from(ref.lse).map((x) => x === -Infinity), where(name)).toEqual(Array.from(g.lse).map((x) => x === -Infinity));
    });

    it(`${dtype.name}: a single visible key gives out = v, dq = 0, dk = 0 exactly`, () => {
      // With one visible key the softmax is the constant 1: out = v and dS = P (dO.v - dO.out) = 0.
      // Causal row 0 with n == m sees key 0 only; with padding, one kept key per batch element.
      const name = `single key ${dtype.name}`;
      const rng = rngFor(name);
      const B = 2, h = 2, n = 70, m = 70, dh = 24;
      const mask = new Uint8Array(B * m).fill(1);
      const keep = [rng.int(0, m - 1), rng.int(0, m - 1)];
      mask[keep[0]] = 0;
      mask[m + keep[1]] = 0;
      const draw = (len: number) => dtype.from(randnF64(rng, B * h * len * dh));
      const base = { q: draw(n), k: draw(m), v: draw(m), B, h, lq: n, lk: m, dh, scale: 0.3 };
      const padded = run('fast', { ...base, mask, causal: false }, dtype.from(randnF64(rng, base.q.length)));
      for (let b = 0; b < B; b++)
        for (let hh = 0; hh < h; hh++) {
          const kv = ((b * h + hh) * m + keep[b]) * dh;
          for (let i = 0; i < n; i++) {
            const row = ((b * h + hh) * n + i) * dh;
            expect(Array.from(padded.out.subarray(row, row + dh)), where(name)).toEqual(Array.from(base.v.subarray(kv, kv + dh)));
          }
        }
      expect(maxAbs(padded.dq), where(name)).toBe(0);
      expect(maxAbs(padded.dk), where(name)).toBe(0);
      const causal = run('fast', { ...base, mask: null, causal: true }, dtype.from(randnF64(rng, base.q.length)));
      for (let bh = 0; bh < B * h; bh++) {
        const row = bh * n * dh, kv = bh * m * dh;
        expect(Array.from(causal.out.subarray(row, row + dh)), where(name)).toEqual(Array.from(base.v.subarray(kv, kv + dh)));
        expect(maxAbs(causal.dq.subarray(row, row + dh)), where(name)).toBe(0);
      }
    });
  }

  it('a NaN query gives a NaN row (not mistaken for a masked row); other rows stay finite', () => {
    const name = 'nan row';
    const rng = rngFor(name);
    const B = 1, h = 1, n = 70, m = 90, dh = 8;
    const q = Float32Array.from(randnF64(rng, n * dh));
    q[5 * dh + 3] = NaN;
    const [k, v] = [Float32Array.from(randnF64(rng, m * dh)), Float32Array.from(randnF64(rng, m * dh))];
    const p: Problem = { q, k, v, mask: null, B, h, lq: n, lk: m, dh, scale: 0.3, causal: false };
    const f = run('fast', p, Float32Array.from(randnF64(rng, n * dh)));
    for (let i = 0; i < n; i++) {
      const o = Array.from(f.out.subarray(i * dh, (i + 1) * dh));
      if (i === 5) expect(o.every(Number.isNaN) && Number.isNaN(f.lse[i]), where(name)).toBe(true);
      else expect(o.every(Number.isFinite), `row ${i} ${where(name)}`).toBe(true);
    }
  });
});

// ---- gradchecks -------------------------------------------------------------------------------

const TOL = { eps: 1e-6, atol: 1e-5, rtol: 1e-3 };

function gradCase(c: Case & { scale?: number; maskAll?: boolean }) {
  const name = `gradcheck ${label(c)}${c.scale !== undefined ? ` scale=${c.scale}` : ''}${c.maskAll ? ' masked batch' : ''}`;
  it(name, () => {
    const rng = rngFor(name);
    const q = randTensor(rng, [c.B, c.h, c.n, c.dh], { requiresGrad: true, scale: c.qScale ?? 1 });
    const k = randTensor(rng, [c.B, c.h, c.m, c.dh], { requiresGrad: true });
    const v = c.tied ? k : randTensor(rng, [c.B, c.h, c.m, c.dh], { requiresGrad: true });
    const options: SoftmaxAttentionOptions = { causal: c.causal };
    if (c.masked) {
      const m = randomMask(rng, c.B, c.m, 0.4);
      if (c.maskAll) m.fill(1, 0, c.m);
      options.keyPaddingMask = maskTensor(m, c.B, c.m);
    }
    if (c.scale !== undefined) options.scale = c.scale;
    if (c.dropout) {
      options.dropout = c.dropout;
      options.seed = rng.int(0, 1e6);
    }
    const opts = { ...TOL, seed: rng.u32() };
    let ok: boolean;
    try {
      ok = c.tied
        ? gradcheck((a: Tensor, kv: Tensor) => ops.softmaxAttention(a, kv, kv, options), [q, k], opts)
        : gradcheck((a: Tensor, b: Tensor, d: Tensor) => ops.softmaxAttention(a, b, d, options), [q, k, v], opts);
    } catch (e) {
      throw new Error(`${(e as Error).message} ${where(name)}`);
    }
    expect(ok, where(name)).toBe(true);
  });
}

describe('gradcheck of softmaxAttention (float64)', () => {
  const base = { B: 1, h: 1, causal: false, masked: false, tied: false };
  gradCase({ ...base, n: 1, m: 7, dh: 5 }); // n = 1
  gradCase({ ...base, B: 2, h: 2, n: 3, m: 1, dh: 4 }); // m = 1
  gradCase({ ...base, n: 1, m: 1, dh: 3, causal: true }); // n = m = 1
  gradCase({ ...base, h: 2, n: 5, m: 9, dh: 6, masked: true, scale: 0.7 });
  gradCase({ ...base, B: 2, h: 2, n: 6, m: 4, dh: 3, causal: true }); // causal, n > m: empty rows
  gradCase({ ...base, B: 2, h: 1, n: 4, m: 9, dh: 5, causal: true, masked: true }); // causal, n < m
  gradCase({ ...base, B: 2, h: 2, n: 5, m: 8, dh: 7, causal: true, masked: true, tied: true });
  gradCase({ ...base, h: 2, n: 4, m: 6, dh: 5, masked: true, tied: true, qScale: 3 }); // sharp softmax
  gradCase({ ...base, n: 70, m: 67, dh: 3, causal: true }); // across the 64-row tiles, n > m
  gradCase({ ...base, n: 66, m: 131, dh: 2, causal: true, masked: true, tied: true }); // 3 key chunks, n < m
  gradCase({ ...base, B: 2, h: 2, n: 5, m: 9, dh: 5, masked: true, dropout: 0.3 });
  gradCase({ ...base, B: 2, h: 1, n: 7, m: 6, dh: 4, causal: true, masked: true, tied: true, dropout: 0.3 });
  gradCase({ ...base, B: 3, h: 2, n: 4, m: 5, dh: 3, masked: true, maskAll: true }); // batch 0 fully masked
});

// ---- ops ----------------------------------------------------------------------------------------

describe('softmaxAttention through ops', () => {
  let poisonBefore = false;
  beforeAll(() => {
    poisonBefore = isPoisonOutputs();
    setPoisonOutputs(true);
  });
  afterAll(() => setPoisonOutputs(poisonBefore));

  for (const tied of [false, true]) {
    it(`equals the raw kernels bit for bit, with poisoned outputs${tied ? ' (tied)' : ''}`, () => {
      const name = `ops = raw${tied ? ' tied' : ''}`;
      const rng = rngFor(name);
      const B = 2, h = 3, n = 100, m = 77, dh = 40;
      const q = randTensor(rng, [B, h, n, dh], { dtype: 'float32', requiresGrad: true });
      const k = randTensor(rng, [B, h, m, dh], { dtype: 'float32', requiresGrad: true });
      const v = tied ? k : randTensor(rng, [B, h, m, dh], { dtype: 'float32', requiresGrad: true });
      const mask = randomMask(rng, B, m);
      const g = randTensor(rng, [B, h, n, dh], { dtype: 'float32' });
      const options = { scale: 0.2, causal: true, dropout: 0.1, seed: 11 };
      const y = ops.softmaxAttention(q, k, v, { keyPaddingMask: maskTensor(mask, B, m), ...options });
      y.backward(g);
      const kData = k.dataSync() as Float32Array;
      const p: Problem = {
        q: q.dataSync() as Float32Array, k: kData, v: tied ? kData : (v.dataSync() as Float32Array), mask,
        B, h, lq: n, lk: m, dh, ...options,
      };
      const raw = run('fast', p, g.dataSync() as Float32Array);
      const pairs: [string, Tensor, FloatArray][] = [['out', y, raw.out], ['dq', q.grad!, raw.dq], ['dk', k.grad!, raw.dk]];
      if (!tied) pairs.push(['dv', v.grad!, raw.dv]);
      for (const [what, t, want] of pairs) {
        const got = t.dataSync() as Float32Array;
        expect(firstBitwiseDifference(got, want as Float32Array), `${what} ${where(name)}`).toBe(-1);
        expect(firstNonFinite(got), `${what} ${where(name)}`).toBe(-1);
      }
    });
  }

  it('dropout: same seed same result, another seed another, p = 0 is the plain op', () => {
    const rng = rngFor('ops dropout');
    const q = randTensor(rng, [1, 2, 30, 8], { dtype: 'float32' });
    const k = randTensor(rng, [1, 2, 50, 8], { dtype: 'float32' });
    const a = values(ops.softmaxAttention(q, k, k, { dropout: 0.4, seed: 3 }));
    expect(values(ops.softmaxAttention(q, k, k, { dropout: 0.4, seed: 3 }))).toEqual(a);
    expect(values(ops.softmaxAttention(q, k, k, { dropout: 0.4, seed: 4 }))).not.toEqual(a);
    expect(values(ops.softmaxAttention(q, k, k, { dropout: 0, seed: 3 }))).toEqual(values(ops.softmaxAttention(q, k, k)));
  });

  it('keys without any query or query rows: empty and degenerate shapes', () => {
    const q = randTensor(rngFor('degenerate'), [2, 1, 3, 4], { requiresGrad: true });
    const k = zeros([2, 1, 0, 4], { dtype: 'float64', requiresGrad: true });
    const y = ops.softmaxAttention(q, k, k, { causal: true });
    expect(y.shape).toEqual([2, 1, 3, 4]);
    expect(values(y).every((x) => x === 0)).toBe(true);
    y.backward(randTensor(rngFor('degenerate g'), [2, 1, 3, 4]));
    expect(values(q.grad!).every((x) => x === 0)).toBe(true);
    const e = ops.softmaxAttention(zeros([2, 1, 0, 4], { dtype: 'float64' }), k, k);
    expect(e.shape).toEqual([2, 1, 0, 4]);
  });
});

// ---- determinism --------------------------------------------------------------------------------

describe('bitwise determinism across thread counts', () => {
  let threads = 1;
  beforeAll(() => {
    threads = getNumThreads();
  });
  afterAll(() => setNumThreads(threads));

  const shapes: Case[] = [
    { B: 1, h: 2, n: 300, m: 700, dh: 32, causal: true, masked: true, tied: false }, // 8 key chunks
    { B: 4, h: 4, n: 200, m: 200, dh: 64, causal: false, masked: true, tied: true, dropout: 0.1 }, // B*h = 16
    { B: 1, h: 1, n: 1000, m: 90, dh: 16, causal: true, masked: false, tied: false },
  ];
  for (const c of shapes) {
    for (const dtype of ['float32', 'float64'] as const) {
      it(`${label(c)} ${dtype}`, () => {
        const results = [1, 2, 3].map((t) => {
          setNumThreads(t);
          const rng = rngFor(`det ${label(c)} ${dtype}`);
          const q = randTensor(rng, [c.B, c.h, c.n, c.dh], { dtype, requiresGrad: true, scale: 2 });
          const k = randTensor(rng, [c.B, c.h, c.m, c.dh], { dtype, requiresGrad: true });
          const v = c.tied ? k : randTensor(rng, [c.B, c.h, c.m, c.dh], { dtype, requiresGrad: true });
          const mask = c.masked ? maskTensor(randomMask(rng, c.B, c.m), c.B, c.m) : null;
          const y = ops.softmaxAttention(q, k, v, { keyPaddingMask: mask, causal: c.causal, dropout: c.dropout, seed: 5 });
          y.backward(randTensor(rng, y.shape, { dtype }));
          return [y, q.grad!, k.grad!, v.grad!].map((t) => t.dataSync() as FloatArray);
        });
        for (let t = 1; t < results.length; t++)
          for (let x = 0; x < 4; x++) {
            const d = firstBitwiseDifference(results[0][x], results[t][x]);
            expect(d, `output ${x} differs at ${d} between 1 and ${t + 1} threads ${where(label(c))}`).toBe(-1);
          }
      });
    }
  }
});

// ---- validation ---------------------------------------------------------------------------------

describe('validation', () => {
  const rng = rngFor('validation');
  const q = randTensor(rng, [2, 3, 5, 4]);
  const k = randTensor(rng, [2, 3, 7, 4]);
  const v = randTensor(rng, [2, 3, 7, 4]);
  const call = (a: unknown, b: unknown, c: unknown, o?: unknown) => () =>
    ops.softmaxAttention(a as Tensor, b as Tensor, c as Tensor, o as never);

  it('tensors, dtypes and shapes', () => {
    expectLunaError(call([1, 2], k, v), 'ERR_ARGUMENT', /softmaxAttention: q expected a Tensor/);
    expectLunaError(call(q, k, null), 'ERR_ARGUMENT', /softmaxAttention: v expected a Tensor/);
    expectLunaError(call(tensor([1, 0], { dtype: 'bool' }), k, v), 'ERR_DTYPE', /q\.dtype expected float32 or float64, got bool/);
    const k32 = randTensor(rng, [2, 3, 7, 4], { dtype: 'float32' });
    expectLunaError(call(q, k32, v), 'ERR_DTYPE', /k\.dtype expected float64 \(matching q; no implicit conversion\)/);
    expectLunaError(call(randTensor(rng, [2, 5, 4]), k, v), 'ERR_SHAPE', /q\.shape expected \[B,h,n,dh\] \(rank 4\)/);
    expectLunaError(call(q, randTensor(rng, [2, 3, 7, 5]), v), 'ERR_SHAPE', /k\.shape expected \[2,3,\*,4\]/);
    const v6 = randTensor(rng, [2, 3, 6, 4]);
    expectLunaError(call(q, k, v6), 'ERR_SHAPE', /v\.shape expected \[2,3,7,4\] \(B,h,m,dh matching k\), got \[2,3,6,4\]/);
  });

  it('options', () => {
    const m = maskTensor(new Uint8Array(14), 2, 7);
    expectLunaError(call(q, k, v, 5), 'ERR_ARGUMENT', /options expected an options object/);
    const known = /unknown key "isCausal" \(known keys: keyPaddingMask, causal, scale, dropout, seed\)/;
    expectLunaError(call(q, k, v, { isCausal: true }), 'ERR_ARGUMENT', known);
    expectLunaError(call(q, k, v, { causal: 1 }), 'ERR_ARGUMENT', /options\.causal expected a boolean, got 1/);
    expectLunaError(call(q, k, v, { scale: Infinity }), 'ERR_ARGUMENT', /options\.scale expected a finite number/);
    expectLunaError(call(q, k, v, { dropout: 1 }), 'ERR_ARGUMENT', /options\.dropout expected a probability in \[0, 1\), got 1/);
    expectLunaError(call(q, k, v, { dropout: 0.1, seed: -1 }), 'ERR_ARGUMENT', /options\.seed expected a non-negative integer/);
    const floatMask = randTensor(rng, [2, 7]);
    expectLunaError(call(q, k, v, { keyPaddingMask: floatMask }), 'ERR_DTYPE', /options\.keyPaddingMask\.dtype expected bool/);
    const shortMask = maskTensor(new Uint8Array(10), 2, 5);
    const shape = /options\.keyPaddingMask\.shape expected \[2,7\] \(B,m\), got \[2,5\]/;
    expectLunaError(call(q, k, v, { keyPaddingMask: shortMask }), 'ERR_SHAPE', shape);
    expect(ops.softmaxAttention(q, k, v, { keyPaddingMask: m, causal: undefined }).shape).toEqual([2, 3, 5, 4]);
  });

  it('disposed inputs', () => {
    const d = randTensor(rng, [2, 3, 5, 4]);
    d.dispose();
    expectLunaError(call(d, k, v), 'ERR_DISPOSED');
  });
});

describe('the raw binding refuses bad arguments without crashing', () => {
  const base = () => {
    const p = makeProblem({ B: 1, h: 1, n: 3, m: 4, dh: 2, causal: false, masked: false, tied: false }, rngFor('raw'));
    return { ...forwardArgs(p) } as Record<string, unknown>;
  };
  const refuse = (args: unknown, kind: typeof TypeError | typeof RangeError, message: RegExp, backward = false) => {
    let err: unknown = null;
    try {
      if (backward) addon.softmaxBackward(args as SoftmaxBackwardArgs);
      else addon.softmaxForward(args as SoftmaxForwardArgs);
    } catch (e) {
      err = e;
    }
    expect(err, `expected a ${kind.name} matching ${message}`).toBeInstanceOf(kind);
    expect((err as Error).message).toMatch(message);
  };

  it('names the field', () => {
    refuse(undefined, TypeError, /expected one options object/);
    refuse({ ...base(), causal: 'yes' }, TypeError, /causal must be a boolean/);
    refuse({ ...base(), dropout: 1.5, seed: 1 }, RangeError, /dropout must be in \[0, 1\)/);
    refuse({ ...base(), dropout: 0.5 }, RangeError, /seed must be a finite number/);
    refuse({ ...base(), q: new Float32Array(5) }, RangeError, /q must have 6 elements, got 5/);
    refuse({ ...base(), q: [1, 2, 3, 4, 5, 6] }, TypeError, /q must be a Float32Array or Float64Array/);
    refuse({ ...base(), lse: new Float64Array(3) }, TypeError, /lse must be a Float32Array/);
    refuse({ ...base(), lk: 0 }, RangeError, /lk must be a positive integer/);
    refuse({ ...base(), mask: new Uint8Array(3) }, RangeError, /mask must have 4 elements/);
    const b = base();
    refuse({ ...b, out: b.q }, RangeError, /out must not share memory with q/);
    refuse({ ...b, lse: (b.out as Float32Array).subarray(0, 3) }, RangeError, /out and lse must not share memory/);
    const f32 = (n: number) => new Float32Array(n);
    const grads = () => ({ dout: f32(6), dq: f32(6), dk: f32(8), dv: f32(8) });
    refuse({ ...b, ...grads(), dv: b.k }, RangeError, /dv must not share memory with k/, true);
    const dk = new Float32Array(8);
    refuse({ ...b, ...grads(), dk, dv: dk }, TypeError, /dk and dv must be the same array exactly when k and v are/, true);
    // A correct call still works after all that.
    addon.softmaxBackward({ ...b, ...grads() } as SoftmaxBackwardArgs);
  });
});
