// Determinism: the same inputs give bitwise identical outputs and gradients for every thread
// count and on every repetition. The shapes are large enough for the kernels to split the work
// (over rows, and for the key/value gradients over partial sums that must be reduced in a fixed
// order).
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { getNumThreads, ops, setNumThreads, type Tensor } from '../lib/index';
import { firstBitwiseDifference, maskTensor, randTensor, randomMask, rngFor, where, type FloatDtype } from './helpers';

interface Shape {
  B: number;
  h: number;
  n: number;
  l: number;
  dh: number;
}

const SHAPES: Shape[] = [
  { B: 1, h: 2, n: 3000, l: 64, dh: 64 },
  { B: 2, h: 4, n: 1024, l: 16, dh: 32 },
];

type Result = Record<'out' | 'dq' | 'dk' | 'dv', Float32Array | Float64Array>;

function run(op: 'pack' | 'unpack', s: Shape, tied: boolean, masked: boolean, dtype: FloatDtype, label: string): Result {
  // Fresh tensors from the same stream each time: identical inputs, a fresh graph.
  const rng = rngFor(label);
  const [lq, lk] = op === 'pack' ? [s.l, s.n] : [s.n, s.l];
  const q = randTensor(rng, [s.B, s.h, lq, s.dh], { dtype, requiresGrad: true, scale: 2 });
  const k = randTensor(rng, [s.B, s.h, lk, s.dh], { dtype, requiresGrad: true });
  const v = tied ? k : randTensor(rng, [s.B, s.h, lk, s.dh], { dtype, requiresGrad: true });
  const mask = masked ? maskTensor(randomMask(rng, s.B, lk, 0.25), s.B, lk) : undefined;
  const g = randTensor(rng, [s.B, s.h, lq, s.dh], { dtype });
  const fn = op === 'pack' ? ops.packAttention : ops.unpackAttention;
  const y: Tensor = fn(q, k, v, mask ? { keyPaddingMask: mask } : {});
  y.backward(g);
  const data = (t: Tensor) => t.dataSync() as Float32Array | Float64Array;
  return { out: data(y), dq: data(q.grad!), dk: data(k.grad!), dv: data(v.grad!) };
}

describe('bitwise determinism across thread counts and repetitions', () => {
  let saved = 0;
  beforeAll(() => {
    saved = getNumThreads();
  });
  afterAll(() => setNumThreads(saved));

  it('setNumThreads / getNumThreads round-trip', () => {
    for (const n of [1, 2, 3]) {
      setNumThreads(n);
      expect(getNumThreads()).toBe(n);
    }
  });

  for (const op of ['pack', 'unpack'] as const) {
    for (const s of SHAPES) {
      for (const [tied, masked, dtype] of [
        [true, true, 'float32'],
        [false, false, 'float32'],
        [false, true, 'float64'],
      ] as const) {
        const label = `${op} B=${s.B} h=${s.h} n=${s.n} l=${s.l} dh=${s.dh}${tied ? ' tied' : ''}${masked ? ' masked' : ''} ${dtype}`;
        it(label, () => {
          setNumThreads(1);
          const base = run(op, s, tied, masked, dtype, label);
          const runs: [string, Result][] = [];
          for (const threads of [2, 3, 1, 2]) {
            setNumThreads(threads);
            runs.push([`threads=${threads} (run ${runs.length + 2})`, run(op, s, tied, masked, dtype, label)]);
          }
          for (const [what, r] of runs) {
            for (const key of ['out', 'dq', 'dk', 'dv'] as const) {
              const i = firstBitwiseDifference(base[key], r[key]);
              expect(i, `${key} differs at ${i} (${base[key][i]} vs ${r[key][i]}) with ${what} vs threads=1 ${where(label)}`).toBe(-1);
            }
          }
        });
      }
    }
  }
});
