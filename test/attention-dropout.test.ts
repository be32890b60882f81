// Dropout on the attention probabilities, fused into the pack and unpack kernels.
//   - the fast kernels against the float64 reference with the same mask (the 2x/3x policy of
//     design.md), float32 and float64;
//   - float64 gradchecks of both ops with a fixed seed (the backward regenerates the mask);
//   - the mask: drop fraction near p, same seed -> same output, different seed -> different,
//     independent of the thread count; p = 0 leaves the op unchanged.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { getNumThreads, gradcheck, ops, setNumThreads } from '../lib/index';
import { isPoisonOutputs, setPoisonOutputs } from '../lib/testing';
import { maskTensor, maxAbs, maxAbsDiff, randTensor, randnF64, randomMask, rngFor, values, where, type FloatArray } from './helpers';
import { addon, toF64, type Kernel, type Problem } from './native-helpers';

const EPS32 = 2 ** -23;

interface Case {
  kernel: 'pack' | 'unpack';
  B: number;
  h: number;
  lq: number;
  lk: number;
  dh: number;
  p: number;
  tied: boolean;
  masked: boolean;
}

const label = (c: Case) =>
  `${c.kernel} B=${c.B} h=${c.h} lq=${c.lq} lk=${c.lk} dh=${c.dh} p=${c.p}${c.tied ? ' tied' : ''}${c.masked ? ' masked' : ''}`;

function problem(c: Case): Problem & { dropout: number; seed: number } {
  const rng = rngFor(label(c));
  const q = Float32Array.from(randnF64(rng, c.B * c.h * c.lq * c.dh));
  const k = Float32Array.from(randnF64(rng, c.B * c.h * c.lk * c.dh));
  const v = c.tied ? k : Float32Array.from(randnF64(rng, k.length));
  const mask = c.masked ? randomMask(rng, c.B, c.lk, 0.3) : null;
  return { q, k, v, mask, B: c.B, h: c.h, lq: c.lq, lk: c.lk, dh: c.dh, scale: 1 / Math.sqrt(c.dh), dropout: c.p, seed: rng.int(0, 2 ** 30) };
}

function run(kernel: Kernel, p: Problem & { dropout: number; seed: number }, dout: FloatArray) {
  const mk = (n: number) => (p.q instanceof Float64Array ? new Float64Array(n) : new Float32Array(n)).fill(NaN);
  const out = mk(p.q.length);
  const lse = mk(p.B * p.h * p.lq);
  const args = { ...p, out, lse };
  if (kernel === 'pack') addon.packForward(args);
  else if (kernel === 'unpack') addon.unpackForward(args);
  else addon.referenceForward(args);
  const dq = mk(p.q.length);
  const dk = mk(p.k.length);
  const dv = p.k === p.v ? dk : mk(p.v.length);
  const bargs = { ...args, dout, dq, dk, dv };
  if (kernel === 'pack') addon.packBackward(bargs);
  else if (kernel === 'unpack') addon.unpackBackward(bargs);
  else addon.referenceBackward(bargs);
  return { out, lse, dq, dk, dv };
}

const CASES: Case[] = [
  { kernel: 'pack', B: 2, h: 2, lq: 3, lk: 1100, dh: 12, p: 0.1, tied: true, masked: true },
  { kernel: 'pack', B: 1, h: 3, lq: 16, lk: 257, dh: 32, p: 0.3, tied: false, masked: false },
  { kernel: 'unpack', B: 2, h: 2, lq: 1030, lk: 5, dh: 12, p: 0.1, tied: true, masked: true },
  { kernel: 'unpack', B: 1, h: 3, lq: 65, lk: 16, dh: 32, p: 0.5, tied: false, masked: false },
];

describe('fused attention dropout', () => {
  let poisonBefore = false;
  beforeAll(() => {
    poisonBefore = isPoisonOutputs();
    setPoisonOutputs(true);
  });
  afterAll(() => setPoisonOutputs(poisonBefore));

  for (const c of CASES) {
    it(`matches the float64 reference with the same mask: ${label(c)}`, () => {
      const ctx = where(label(c));
      const p32 = problem(c);
      const p64 = { ...toF64(p32), dropout: p32.dropout, seed: p32.seed };
      const dout32 = Float32Array.from(randnF64(rngFor(`${label(c)} dout`), p32.q.length));
      const ref = run('reference', p64, Float64Array.from(dout32));
      const plain = run('reference', p32, dout32);
      const fast = run(c.kernel, p32, dout32);
      const fast64 = run(c.kernel, p64, Float64Array.from(dout32));
      for (const [name, factor] of [['out', 2], ['lse', 2], ['dq', 3], ['dk', 3], ['dv', 3]] as const) {
        const errFast = maxAbsDiff(fast[name], ref[name]);
        const bound = factor * maxAbsDiff(plain[name], ref[name]) + 4 * EPS32 * maxAbs(ref[name]);
        expect(errFast, `${name}: fast error ${errFast} > bound ${bound} ${ctx}`).toBeLessThanOrEqual(bound);
        const err64 = maxAbsDiff(fast64[name], ref[name]);
        expect(err64, `${name} float64: ${err64} ${ctx}`).toBeLessThanOrEqual(1e-11 * Math.max(1, maxAbs(ref[name])));
      }
    });
  }

  for (const kind of ['pack', 'unpack'] as const) {
    for (const tied of [true, false]) {
      it(`gradcheck (float64) of ${kind}Attention with dropout 0.3${tied ? ', tied' : ''}`, () => {
        const label = `gradcheck dropout ${kind} ${tied}`;
        const rng = rngFor(label);
        const [lq, lk] = kind === 'pack' ? [3, 9] : [9, 3];
        const q = randTensor(rng, [2, 2, lq, 5], { requiresGrad: true });
        const k = randTensor(rng, [2, 2, lk, 5], { requiresGrad: true });
        const v = tied ? k : randTensor(rng, [2, 2, lk, 5], { requiresGrad: true });
        const mask = maskTensor(randomMask(rng, 2, lk, 0.3), 2, lk);
        const op = kind === 'pack' ? ops.packAttention : ops.unpackAttention;
        const seed = rng.int(0, 1000000);
        const inputs = tied ? [q, k] : [q, k, v];
        const fn = tied
          ? (a: typeof q, b: typeof q) => op(a, b, b, { keyPaddingMask: mask, dropout: 0.3, seed })
          : (a: typeof q, b: typeof q, c: typeof q) => op(a, b, c, { keyPaddingMask: mask, dropout: 0.3, seed });
        expect(gradcheck(fn as never, inputs, { eps: 1e-6, atol: 1e-5, rtol: 1e-3 }), where(label)).toBe(true);
      });
    }
  }

  it('drops about a fraction p, reproducibly, whatever the thread count', () => {
    const rng = rngFor('dropout statistics');
    // Values all 1: each output element is the mean of kept factors, so the mean over the
    // output estimates E[factor] = 1 and the fraction of exact zeros in a 1-key op estimates p.
    const q = randTensor(rng, [1, 4, 4096, 8], { dtype: 'float32' });
    const k = randTensor(rng, [1, 4, 1, 8], { dtype: 'float32' });
    const p = 0.25;
    const threads = getNumThreads();
    try {
      setNumThreads(1);
      const a = values(ops.unpackAttention(q, k, k, { dropout: p, seed: 7 }));
      setNumThreads(2);
      const b = values(ops.unpackAttention(q, k, k, { dropout: p, seed: 7 }));
      const other = values(ops.unpackAttention(q, k, k, { dropout: p, seed: 8 }));
      expect(b).toEqual(a);
      expect(other).not.toEqual(a);
      // One key: each row's output is either 0 (dropped) or v / (1 - p) (kept).
      let dropped = 0;
      for (let r = 0; r < a.length / 8; r++) if (a[r * 8] === 0) dropped++;
      const frac = dropped / (a.length / 8);
      // 16384 Bernoulli(0.25) draws: std ~0.0034; 6 sigma.
      expect(Math.abs(frac - p), `dropped fraction ${frac}`).toBeLessThan(0.02);
    } finally {
      setNumThreads(threads);
    }
  });

  it('dropout 0 is the plain op', () => {
    const rng = rngFor('dropout zero');
    const q = randTensor(rng, [1, 2, 5, 4], { dtype: 'float32' });
    const k = randTensor(rng, [1, 2, 40, 4], { dtype: 'float32' });
    expect(values(ops.packAttention(q, k, k, { dropout: 0, seed: 3 }))).toEqual(values(ops.packAttention(q, k, k)));
    // And a positive p does change it (the reference comparison above would pass if both
    // sides ignored dropout).
    expect(values(ops.packAttention(q, k, k, { dropout: 0.5, seed: 3 }))).not.toEqual(values(ops.packAttention(q, k, k)));
  });
});
