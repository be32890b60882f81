// The fast float32 kernels against the float64 reference, with design.md's tolerance policy:
//   maxabs(fast - ref64) <= F * maxabs(plain32 - ref64) + 4 * 2^-23 * maxabs(ref64)
// F = 2 for the forward (out, lse) and 3 for the backward (dq, dk, dv), where plain32 is the
// reference's plain float32 instantiation of the same math. Every output buffer is NaN-poisoned
// before the kernel runs, so an element a kernel fails to write fails the comparison.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ops, type Tensor } from '../lib/index';
import { isPoisonOutputs, poison, setPoisonOutputs } from '../lib/testing';
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
import { addon, backward, forward, toF64, type Kernel, type Problem } from './native-helpers';

const EPS32 = 2 ** -23;

interface Case {
  kernel: 'pack' | 'unpack';
  B: number;
  h: number;
  lq: number;
  lk: number;
  dh: number;
  masked: boolean;
  tied: boolean;
  qScale: number; // multiplies q: 4 gives logits with std ~4, stressing the online softmax
  scale?: number; // the logit scale; default 1/sqrt(dh)
}

function label(c: Case): string {
  return (
    `${c.kernel} B=${c.B} h=${c.h} lq=${c.lq} lk=${c.lk} dh=${c.dh}` +
    `${c.masked ? ' masked' : ''}${c.tied ? ' tied' : ''}${c.qScale !== 1 ? ` q*${c.qScale}` : ''}` +
    `${c.scale !== undefined ? ` scale=${c.scale}` : ''}`
  );
}

function makeProblem(c: Case): Problem {
  const rng = rngFor(label(c));
  const nq = c.B * c.h * c.lq * c.dh;
  const nk = c.B * c.h * c.lk * c.dh;
  const q = Float32Array.from(randnF64(rng, nq, c.qScale));
  const k = Float32Array.from(randnF64(rng, nk));
  const v = c.tied ? k : Float32Array.from(randnF64(rng, nk));
  const mask = c.masked ? randomMask(rng, c.B, c.lk, 0.3) : null;
  return { q, k, v, mask, B: c.B, h: c.h, lq: c.lq, lk: c.lk, dh: c.dh, scale: c.scale ?? 1 / Math.sqrt(c.dh) };
}

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

function checkParity(c: Case) {
  const ctx = where(label(c));
  const p32 = makeProblem(c);
  const p64 = toF64(p32);
  const kernel: Kernel = c.kernel;

  const ref = forward('reference', p64);
  const plain = forward('reference', p32);
  const fast = forward(kernel, p32);
  expectFinite(fast.out, 'out', ctx);
  expectFinite(fast.lse, 'lse', ctx);
  expectFinite(ref.out, 'reference out', ctx);
  expectWithin('out', fast.out, plain.out, ref.out, 2, ctx);
  expectWithin('lse', fast.lse, plain.lse, ref.lse, 2, ctx);

  const dout32 = Float32Array.from(randnF64(rngFor(`${label(c)} dout`), p32.q.length));
  const dout64 = Float64Array.from(dout32);
  const refB = backward('reference', p64, ref.out, ref.lse, dout64);
  const plainB = backward('reference', p32, plain.out, plain.lse, dout32);
  const fastB = backward(kernel, p32, fast.out, fast.lse, dout32);
  expectFinite(fastB.dq, 'dq', ctx);
  expectFinite(fastB.dk, 'dk', ctx);
  expectFinite(fastB.dv, 'dv', ctx);
  expectWithin('dq', fastB.dq, plainB.dq, refB.dq, 3, ctx);
  expectWithin(c.tied ? 'dk+dv (tied)' : 'dk', fastB.dk, plainB.dk, refB.dk, 3, ctx);
  if (!c.tied) expectWithin('dv', fastB.dv, plainB.dv, refB.dv, 3, ctx);
  if (c.masked) {
    // Masked keys get exactly zero gradient. (One expect at the end: per-element expects are
    // slow at these sizes.)
    let bad = '';
    for (let b = 0; b < c.B && !bad; b++)
      for (let j = 0; j < c.lk && !bad; j++) {
        if (!p32.mask![b * c.lk + j]) continue;
        for (let hh = 0; hh < c.h && !bad; hh++) {
          const base = ((b * c.h + hh) * c.lk + j) * c.dh;
          for (let e = 0; e < c.dh; e++) {
            if (fastB.dk[base + e] !== 0 || fastB.dv[base + e] !== 0) {
              bad = `masked key b=${b} h=${hh} j=${j}: dk ${fastB.dk[base + e]}, dv ${fastB.dv[base + e]}`;
              break;
            }
          }
        }
      }
    expect(bad, `gradient of a masked key is not 0 ${ctx}`).toBe('');
  }
}

// The float64 fast kernels (what gradchecks and float64 models run) against the reference. There
// is no plain float128 to scale a bound by; rounding in float64 at these sizes is ~1e-14 of the
// largest value, and any real defect is many orders larger, so the bound is 1e-11 of the max.
function checkParity64(c: Case) {
  const ctx = where(`${label(c)} float64`);
  const p = toF64(makeProblem(c));
  const ref = forward('reference', p);
  const fast = forward(c.kernel, p);
  const dout = randnF64(rngFor(`${label(c)} dout`), p.q.length);
  const refB = backward('reference', p, ref.out, ref.lse, dout);
  const fastB = backward(c.kernel, p, fast.out, fast.lse, dout);
  const pairs: [string, FloatArray, FloatArray][] = [
    ['out', fast.out, ref.out],
    ['lse', fast.lse, ref.lse],
    ['dq', fastB.dq, refB.dq],
    ['dk', fastB.dk, refB.dk],
    ['dv', fastB.dv, refB.dv],
  ];
  for (const [what, got, want] of pairs) {
    const err = maxAbsDiff(got, want);
    const bound = 1e-11 * Math.max(1, maxAbs(want));
    expect(err, `${what}: float64 error ${err.toExponential(3)} > ${bound.toExponential(3)} ${ctx}`).toBeLessThanOrEqual(bound);
  }
}

// ---- The case list ----
const LS = [1, 3, 16, 17, 64, 256];
const NS = [1, 7, 33, 257, 1000];
const DHS = [5, 32, 48, 64, 80, 128];

function gridCases(): Case[] {
  const cases: Case[] = [];
  let i = 0;
  for (const kernel of ['pack', 'unpack'] as const) {
    for (const swapped of [false, true]) {
      for (let li = 0; li < LS.length; li++) {
        for (let ni = 0; ni < NS.length; ni++) {
          const l = LS[li];
          const n = NS[ni];
          // pack's own shape is few queries (l) over many keys (n); unpack's is the reverse.
          // "swapped" runs each kernel on the other op's shape: both are correct for any sizes.
          const natural = kernel === 'pack' ? [l, n] : [n, l];
          const [lq, lk] = swapped ? [natural[1], natural[0]] : natural;
          const dh = DHS[(li + 2 * ni + 3 * (kernel === 'pack' ? 0 : 1) + (swapped ? 1 : 0)) % DHS.length];
          // At least 64 query rows (B*h*lq) per case: the policy compares two maxima, and over a
          // handful of rows the plain float32 maximum is sometimes luckily small (measured: ~0.1%
          // of checks fail at 6 rows with a correct kernel, none at 64 rows).
          const B = lq * lk * dh < 20000 ? 2 : 1;
          const h = Math.max(B === 2 ? 3 : 2, Math.ceil(64 / (B * lq)));
          cases.push({
            kernel,
            B,
            h,
            lq,
            lk,
            dh,
            masked: i % 3 !== 0,
            tied: i % 2 === 0,
            qScale: i % 5 === 0 ? 4 : 1,
            scale: i % 7 === 3 ? 0.37 : undefined,
          });
          i++;
        }
      }
    }
  }
  return cases;
}

// The fast paths (dh 32/64/128) at a realistic Luna size, every kernel and orientation.
function fastPathCases(): Case[] {
  const cases: Case[] = [];
  for (const kernel of ['pack', 'unpack'] as const) {
    for (const dh of [32, 64, 128]) {
      const few = 17;
      const many = 1000;
      for (const swapped of [false, true]) {
        const [lq, lk] = (kernel === 'pack') !== swapped ? [few, many] : [many, few];
        cases.push({ kernel, B: 2, h: 1, lq, lk, dh, masked: true, tied: true, qScale: 1 });
        cases.push({ kernel, B: 1, h: 2, lq, lk, dh, masked: false, tied: false, qScale: 4 });
      }
    }
    cases.push({ kernel, B: 1, h: 1, lq: kernel === 'pack' ? 256 : 1000, lk: kernel === 'pack' ? 1000 : 256, dh: 128, masked: true, tied: false, qScale: 1 });
  }
  return cases;
}

describe('reference kernels (the truth) agree with a direct JS implementation', () => {
  // A plain JS softmax attention in float64: guards against a reference that is wrong in the
  // same way as the fast kernels.
  function jsAttention(p: Problem): { out: Float64Array; lse: Float64Array } {
    const { B, h, lq, lk, dh, scale } = p;
    const out = new Float64Array(B * h * lq * dh);
    const lse = new Float64Array(B * h * lq);
    for (let b = 0; b < B; b++)
      for (let hh = 0; hh < h; hh++)
        for (let i = 0; i < lq; i++) {
          const row = (b * h + hh) * lq + i;
          const s: number[] = [];
          for (let j = 0; j < lk; j++) {
            if (p.mask && p.mask[b * lk + j]) {
              s.push(-Infinity);
              continue;
            }
            let d = 0;
            for (let e = 0; e < dh; e++) d += p.q[row * dh + e] * p.k[((b * h + hh) * lk + j) * dh + e];
            s.push(scale * d);
          }
          const m = Math.max(...s);
          if (m === -Infinity) {
            lse[row] = -Infinity;
            continue;
          }
          const w = s.map((x) => Math.exp(x - m));
          const z = w.reduce((a, x) => a + x, 0);
          lse[row] = m + Math.log(z);
          for (let j = 0; j < lk; j++)
            for (let e = 0; e < dh; e++) out[row * dh + e] += (w[j] / z) * p.v[((b * h + hh) * lk + j) * dh + e];
        }
    return { out, lse };
  }

  for (const [lq, lk, dh, tied] of [
    [1, 1, 1, false],
    [3, 7, 5, false],
    [4, 9, 6, true],
  ] as const) {
    it(`lq=${lq} lk=${lk} dh=${dh}${tied ? ' tied' : ''} with a mask`, () => {
      const c: Case = { kernel: 'pack', B: 2, h: 2, lq, lk, dh, masked: true, tied, qScale: 2 };
      const p = toF64(makeProblem(c));
      const ref = forward('reference', p);
      const js = jsAttention(p);
      expect(maxAbsDiff(ref.out, js.out), where(label(c))).toBeLessThan(1e-13);
      expect(maxAbsDiff(ref.lse, js.lse), where(label(c))).toBeLessThan(1e-13);
    });
  }

  it('the tied reference gradient is the untied dk + dv', () => {
    const c: Case = { kernel: 'pack', B: 2, h: 2, lq: 5, lk: 9, dh: 6, masked: true, tied: true, qScale: 1 };
    const p = toF64(makeProblem(c));
    const untied: Problem = { ...p, v: Float64Array.from(p.k) };
    const f = forward('reference', p);
    const dout = randnF64(rngFor('tied ref dout'), p.q.length);
    const t = backward('reference', p, f.out, f.lse, dout);
    const u = backward('reference', untied, f.out, f.lse, dout);
    const sum = u.dk.map((x, i) => x + u.dv[i]);
    expect(t.dk).toBe(t.dv);
    expect(maxAbsDiff(t.dk, sum), where(label(c))).toBeLessThan(1e-13);
    expect(maxAbsDiff(t.dq, u.dq), where(label(c))).toBe(0);
  });
});

describe('fast float32 kernels vs the float64 reference (raw addon, poisoned outputs)', () => {
  for (const c of gridCases()) it(label(c), () => checkParity(c));
  for (const c of fastPathCases()) it(`fast path: ${label(c)}`, () => checkParity(c));
});

describe('fast float64 kernels vs the float64 reference (raw addon, poisoned outputs)', () => {
  for (const c of gridCases()) it(label(c), () => checkParity64(c));
});

describe('fully masked rows (raw addon)', () => {
  for (const kernel of ['pack', 'unpack'] as const) {
    for (const dtype of [Float32Array, Float64Array]) {
      it(`${kernel} ${dtype.name}: out 0, lse -Infinity, zero gradients`, () => {
        const B = 3, h = 2, lq = kernel === 'pack' ? 5 : 40, lk = kernel === 'pack' ? 40 : 5, dh = 32;
        const name = `${kernel} masked rows ${dtype.name}`;
        const rng = rngFor(name);
        const mask = randomMask(rng, B, lk, 0.3);
        mask.fill(1, lk, 2 * lk); // batch 1: every key padding
        const k = dtype.from(randnF64(rng, B * h * lk * dh));
        const p: Problem = {
          q: dtype.from(randnF64(rng, B * h * lq * dh)),
          k,
          v: dtype.from(randnF64(rng, B * h * lk * dh)),
          mask,
          B,
          h,
          lq,
          lk,
          dh,
          scale: 1 / Math.sqrt(dh),
        };
        const f = forward(kernel, p);
        const g = backward(kernel, p, f.out, f.lse, dtype.from(randnF64(rng, p.q.length)));
        for (let b = 0; b < B; b++)
          for (let hh = 0; hh < h; hh++)
            for (let i = 0; i < lq; i++) {
              const row = (b * h + hh) * lq + i;
              if (b === 1) expect(f.lse[row], where(name)).toBe(-Infinity);
              else expect(Number.isFinite(f.lse[row]), where(name)).toBe(true);
              for (let e = 0; e < dh; e++) {
                if (b === 1) {
                  expect(f.out[row * dh + e], where(`${name} out row ${row}`)).toBe(0);
                  expect(g.dq[row * dh + e], where(`${name} dq row ${row}`)).toBe(0);
                } else {
                  expect(Number.isFinite(f.out[row * dh + e]), where(name)).toBe(true);
                  expect(Number.isFinite(g.dq[row * dh + e]), where(name)).toBe(true);
                }
              }
            }
        for (let b = 0; b < B; b++)
          for (let hh = 0; hh < h; hh++)
            for (let j = 0; j < lk; j++)
              for (let e = 0; e < dh; e++) {
                const x = ((b * h + hh) * lk + j) * dh + e;
                if (mask[b * lk + j]) {
                  expect(g.dk[x], where(`${name} dk key ${j} of batch ${b}`)).toBe(0);
                  expect(g.dv[x], where(`${name} dv key ${j} of batch ${b}`)).toBe(0);
                } else {
                  expect(Number.isFinite(g.dk[x]) && Number.isFinite(g.dv[x]), where(name)).toBe(true);
                }
              }
      });
    }
  }
});

describe('rows with a single valid key (raw addon)', () => {
  // With one unmasked key the softmax is the constant 1, so out = v exactly and the logits get
  // no gradient: dS = P * (dO.v - dO.out) = 0, hence dq = 0 and dk = 0 exactly (the plain
  // float32 reference gets exactly 0, so design.md's bound 3 x 0 + 4 ulp x max|0| is exactly 0).
  // This is Luna's l_eff = 1 and lk = 1 case.
  for (const kernel of ['pack', 'unpack'] as const) {
    for (const dtype of [Float32Array, Float64Array]) {
      it(`${kernel} ${dtype.name}: out = v, dq = 0, dk = 0`, () => {
        const name = `${kernel} single key ${dtype.name}`;
        const rng = rngFor(name);
        const B = 2, h = 2, dh = 32;
        const [lq, lk] = kernel === 'pack' ? [4, 5] : [20, 5];
        const mask = new Uint8Array(B * lk).fill(1);
        const keep = [rng.int(0, lk - 1), rng.int(0, lk - 1)];
        mask[keep[0]] = 0;
        mask[lk + keep[1]] = 0;
        const p: Problem = {
          q: dtype.from(randnF64(rng, B * h * lq * dh)),
          k: dtype.from(randnF64(rng, B * h * lk * dh)),
          v: dtype.from(randnF64(rng, B * h * lk * dh)),
          mask,
          B,
          h,
          lq,
          lk,
          dh,
          scale: 1 / Math.sqrt(dh),
        };
        const dout = dtype.from(randnF64(rng, p.q.length));
        const f = forward(kernel, p);
        const g = backward(kernel, p, f.out, f.lse, dout);
        for (let b = 0; b < B; b++)
          for (let hh = 0; hh < h; hh++) {
            const kv = ((b * h + hh) * lk + keep[b]) * dh;
            for (let i = 0; i < lq; i++) {
              const row = ((b * h + hh) * lq + i) * dh;
              // The policy's forward bound (the plain float32 reference gets out = v exactly).
              const ulp4 = 4 * (dtype === Float32Array ? EPS32 : 2 ** -52) * maxAbs(p.v);
              const err = maxAbsDiff(f.out.subarray(row, row + dh), p.v.subarray(kv, kv + dh));
              expect(err, `out = v at b=${b} h=${hh} i=${i} ${where(name)}`).toBeLessThanOrEqual(ulp4);
            }
          }
        expect(maxAbs(g.dq), `max |dq| ${where(name)}`).toBe(0);
        expect(maxAbs(g.dk), `max |dk| ${where(name)}`).toBe(0);
        expect(maxAbs(g.dv), `dv is not all zero ${where(name)}`).toBeGreaterThan(0);
      });
    }
  }
});

describe('poisoned outputs through ops (setPoisonOutputs)', () => {
  beforeAll(() => setPoisonOutputs(true));
  afterAll(() => setPoisonOutputs(false));

  it('poisoning is on and really NaN-fills (so the checks below are not vacuous)', () => {
    expect(isPoisonOutputs()).toBe(true);
    const a = new Float32Array(5);
    const b = new Float64Array(3);
    poison(a, b);
    expect(Array.from(a).every(Number.isNaN) && Array.from(b).every(Number.isNaN)).toBe(true);
  });

  const shapes = [
    { B: 2, h: 3, l: 17, n: 257, dh: 64 },
    { B: 1, h: 2, l: 1, n: 33, dh: 5 },
    { B: 2, h: 1, l: 16, n: 1000, dh: 128 },
    { B: 3, h: 2, l: 3, n: 7, dh: 80 },
  ];
  for (const s of shapes) {
    for (const tied of [false, true]) {
      const name = `poison B=${s.B} h=${s.h} l=${s.l} n=${s.n} dh=${s.dh}${tied ? ' tied' : ''}`;
      it(name, () => {
        const rng = rngFor(name);
        const pq = randTensor(rng, [s.B, s.h, s.l, s.dh], { dtype: 'float32', requiresGrad: true });
        const c = randTensor(rng, [s.B, s.h, s.n, s.dh], { dtype: 'float32', requiresGrad: true });
        const cv = tied ? c : randTensor(rng, [s.B, s.h, s.n, s.dh], { dtype: 'float32', requiresGrad: true });
        const x = randTensor(rng, [s.B, s.h, s.n, s.dh], { dtype: 'float32', requiresGrad: true, scale: 4 });
        const cm = randomMask(rng, s.B, s.n);
        const pm = randomMask(rng, s.B, s.l);
        const p = ops.packAttention(pq, c, cv, { keyPaddingMask: maskTensor(cm, s.B, s.n) });
        const y = ops.unpackAttention(x, p, p, { keyPaddingMask: maskTensor(pm, s.B, s.l) });
        y.backward(randTensor(rng, y.shape, { dtype: 'float32' }));
        const check = (t: Tensor | null, what: string) => {
          expect(t, `${what} missing ${where(name)}`).toBeTruthy();
          const i = firstNonFinite(values(t!));
          expect(i, `${what}[${i}] not finite ${where(name)}`).toBe(-1);
        };
        check(p, 'pack out');
        check(y, 'unpack out');
        check(pq.grad, 'dpq');
        check(c.grad, 'dc');
        if (!tied) check(cv.grad, 'dcv');
        check(x.grad, 'dx');
      });
    }
  }

  it('a fully masked batch through ops gives exactly 0 output and gradient, never NaN', () => {
    const name = 'poison masked batch';
    const rng = rngFor(name);
    const B = 2, h = 2, l = 4, n = 9, dh = 8;
    const q = randTensor(rng, [B, h, l, dh], { dtype: 'float32', requiresGrad: true });
    const kv = randTensor(rng, [B, h, n, dh], { dtype: 'float32', requiresGrad: true });
    const m = randomMask(rng, B, n);
    m.fill(1, 0, n);
    const y = ops.packAttention(q, kv, kv, { keyPaddingMask: maskTensor(m, B, n) });
    y.backward(randTensor(rng, y.shape, { dtype: 'float32' }));
    const half = h * l * dh;
    const yv = values(y);
    const dq = values(q.grad!);
    const dkv = values(kv.grad!);
    expect(yv.slice(0, half).every((x) => x === 0), where(name)).toBe(true);
    expect(dq.slice(0, half).every((x) => x === 0), where(name)).toBe(true);
    expect(dkv.slice(0, h * n * dh).every((x) => x === 0), where(name)).toBe(true);
    expect(firstNonFinite(yv), where(name)).toBe(-1);
    expect(firstNonFinite(dq), where(name)).toBe(-1);
    expect(firstNonFinite(dkv), where(name)).toBe(-1);
  });
});

describe('ops agree bit for bit with the raw kernels they call', () => {
  for (const op of ['pack', 'unpack'] as const) {
    it(`${op}Attention (float32) = addon.${op}Forward/${op}Backward`, () => {
      const name = `ops = raw ${op}`;
      const rng = rngFor(name);
      const B = 2, h = 2, lq = op === 'pack' ? 16 : 100, lk = op === 'pack' ? 100 : 16, dh = 64;
      const q = randTensor(rng, [B, h, lq, dh], { dtype: 'float32', requiresGrad: true });
      const k = randTensor(rng, [B, h, lk, dh], { dtype: 'float32', requiresGrad: true });
      const v = randTensor(rng, [B, h, lk, dh], { dtype: 'float32', requiresGrad: true });
      const m = randomMask(rng, B, lk);
      const g = randTensor(rng, [B, h, lq, dh], { dtype: 'float32' });
      const fn = op === 'pack' ? ops.packAttention : ops.unpackAttention;
      const y = fn(q, k, v, { keyPaddingMask: maskTensor(m, B, lk), scale: 0.2 });
      y.backward(g);
      const p: Problem = {
        q: q.dataSync() as Float32Array,
        k: k.dataSync() as Float32Array,
        v: v.dataSync() as Float32Array,
        mask: m,
        B,
        h,
        lq,
        lk,
        dh,
        scale: 0.2,
      };
      const f = forward(op, p);
      const b = backward(op, p, f.out, f.lse, g.dataSync() as Float32Array);
      expect(values(y), where(name)).toEqual(Array.from(f.out));
      expect(values(q.grad!), where(name)).toEqual(Array.from(b.dq));
      expect(values(k.grad!), where(name)).toEqual(Array.from(b.dk));
      expect(values(v.grad!), where(name)).toEqual(Array.from(b.dv));
    });
  }
});

describe('typed-array views (raw addon)', () => {
  // Arrays that are views into larger buffers at an offset must be read and written at that
  // offset, and nothing outside the view may be touched.
  for (const kernel of ['pack', 'unpack', 'reference'] as const) {
    it(`${kernel}: offsets are honoured and the memory around an output view is left alone`, () => {
      const name = `views ${kernel}`;
      const rng = rngFor(name);
      const B = 2, h = 2, lq = 9, lk = 13, dh = 32;
      const c: Case = { kernel: 'pack', B, h, lq, lk, dh, masked: true, tied: false, qScale: 1 };
      const p = makeProblem({ ...c });
      const dout = Float32Array.from(randnF64(rng, p.q.length));
      const f = forward(kernel, p);
      const g = backward(kernel, p, f.out, f.lse, dout);

      const PAD = 7;
      const SENTINEL = 12345.5;
      const view = (src: Float32Array) => {
        const big = new Float32Array(src.length + 2 * PAD).fill(SENTINEL);
        big.set(src, PAD);
        return big.subarray(PAD, PAD + src.length);
      };
      const blank = (n: number) => view(new Float32Array(n).fill(NaN));
      const maskBig = new Uint8Array(p.mask!.length + 3);
      maskBig.set(p.mask!, 3);
      const pv: Problem = { ...p, q: view(p.q as Float32Array), k: view(p.k as Float32Array), v: view(p.v as Float32Array), mask: maskBig.subarray(3) };
      const out = blank(p.q.length);
      const lse = blank(f.lse.length);
      const args = { ...pv, out, lse };
      if (kernel === 'pack') addon.packForward(args);
      else if (kernel === 'unpack') addon.unpackForward(args);
      else addon.referenceForward(args);
      const dq = blank(p.q.length);
      const dk = blank(p.k.length);
      const dv = blank(p.v.length);
      const bargs = { ...args, dout: view(dout), dq, dk, dv };
      if (kernel === 'pack') addon.packBackward(bargs);
      else if (kernel === 'unpack') addon.unpackBackward(bargs);
      else addon.referenceBackward(bargs);

      for (const [what, got, want] of [
        ['out', out, f.out],
        ['lse', lse, f.lse],
        ['dq', dq, g.dq],
        ['dk', dk, g.dk],
        ['dv', dv, g.dv],
      ] as [string, Float32Array, FloatArray][]) {
        expect(firstBitwiseDifference(got, want as Float32Array), `${what} through a view ${where(name)}`).toBe(-1);
        const whole = new Float32Array(got.buffer);
        for (let i = 0; i < PAD; i++) {
          expect(whole[i], `${what}: wrote before the view ${where(name)}`).toBe(SENTINEL);
          expect(whole[whole.length - 1 - i], `${what}: wrote after the view ${where(name)}`).toBe(SENTINEL);
        }
      }
    });
  }
});
