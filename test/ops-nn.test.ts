// The nn building-block ops (layerNorm, gelu, relu, dropout, embedding, crossEntropy) and the
// int32 dtype they index with: float64 gradchecks at odd sizes, values against plain JS
// formulas (PyTorch semantics), the fast float32 kernels against the float64 reference with
// design.md's tolerance policy, dropout statistics and determinism, thread-count independence of
// the parameter gradients, and validation errors. Outputs are NaN-poisoned throughout.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { getNumThreads, gradcheck, ones, ops, randn, setNumThreads, tensor, zeros, type Tensor } from '../lib/index';
import { manualSeed } from '../lib/ops/nn-functional';
import { isPoisonOutputs, setPoisonOutputs } from '../lib/testing';
import {
  expectLunaError,
  firstBitwiseDifference,
  firstNonFinite,
  maxAbs,
  maxAbsDiff,
  randTensor,
  randnF64,
  rngFor,
  values,
  where,
  type FloatArray,
  type Rng,
} from './helpers';
import { addon } from './native-helpers';

const TOL = { eps: 1e-6, atol: 1e-5, rtol: 1e-3 };
const EPS32 = 2 ** -23;

let wasPoisoned = false;
beforeAll(() => {
  wasPoisoned = isPoisonOutputs();
  setPoisonOutputs(true);
});
afterAll(() => setPoisonOutputs(wasPoisoned));

function check(label: string, fn: (...xs: Tensor[]) => Tensor, inputs: Tensor[], seed: number): void {
  let ok: boolean;
  try {
    ok = gradcheck(fn, inputs, { ...TOL, seed });
  } catch (e) {
    throw new Error(`${(e as Error).message} ${where(label)}`);
  }
  expect(ok, where(label)).toBe(true);
}

function randomIds(rng: Rng, n: number, V: number): Int32Array {
  const a = new Int32Array(n);
  for (let i = 0; i < n; i++) a[i] = rng.int(0, V - 1);
  return a;
}

// ---------------------------------------------------------------------------------------------
describe('int32 tensors', () => {
  it('are created from numbers and Int32Array, and read back as Int32Array', () => {
    const a = tensor([1, -2, 3], { dtype: 'int32' });
    expect(a.dtype).toBe('int32');
    expect(a.dataSync()).toBeInstanceOf(Int32Array);
    expect(Array.from(a.dataSync())).toEqual([1, -2, 3]);
    const b = tensor(new Int32Array([4, 5, 6, 7]), { shape: [2, 2] });
    expect(b.dtype).toBe('int32');
    expect(b.shape).toEqual([2, 2]);
    const c = tensor([[2147483647, -2147483648]], { dtype: 'int32' });
    expect(Array.from(c.dataSync())).toEqual([2147483647, -2147483648]);
    expect(Array.from(tensor(new Float64Array([1, 2]), { dtype: 'int32' }).dataSync())).toEqual([1, 2]);
    expect(Array.from(zeros([2], { dtype: 'int32' }).dataSync())).toEqual([0, 0]);
    expect(Array.from(ones([2], { dtype: 'int32' }).dataSync())).toEqual([1, 1]);
    expect(tensor(9, { dtype: 'int32' }).shape).toEqual([]);
  });

  it('refuse fractions, out-of-range values, booleans and requiresGrad', () => {
    expectLunaError(() => tensor([1, 1.5], { dtype: 'int32' }), 'ERR_ARGUMENT', /data\[1\].*int32.*1\.5/);
    expectLunaError(() => tensor([2 ** 31], { dtype: 'int32' }), 'ERR_ARGUMENT', /int32/);
    expectLunaError(() => tensor(new Float32Array([NaN]), { dtype: 'int32' }), 'ERR_ARGUMENT', /int32/);
    expectLunaError(() => tensor([true], { dtype: 'int32' }), 'ERR_DTYPE', /int32/);
    expectLunaError(() => tensor([1], { dtype: 'int32', requiresGrad: true }), 'ERR_DTYPE', /requiresGrad/);
    expectLunaError(() => randn([2], { dtype: 'int32' }), 'ERR_DTYPE', /float32 or float64/);
    const t = tensor([1], { dtype: 'int32' });
    expectLunaError(() => {
      t.requiresGrad = true;
    }, 'ERR_DTYPE');
  });
});

// ---------------------------------------------------------------------------------------------
describe('gradcheck (float64)', () => {
  for (const d of [1, 3, 17]) {
    for (const [hasW, hasB] of [[true, true], [true, false], [false, true], [false, false]] as const) {
      const label = `layerNorm d=${d}${hasW ? ' weight' : ''}${hasB ? ' bias' : ''}`;
      it(label, () => {
        const rng = rngFor(label);
        const x = randTensor(rng, [2, 3, d], { requiresGrad: true });
        const w = randTensor(rng, [d], { requiresGrad: true });
        const b = randTensor(rng, [d], { requiresGrad: true });
        const inputs = [x, ...(hasW ? [w] : []), ...(hasB ? [b] : [])];
        check(label, (...t: Tensor[]) => ops.layerNorm(t[0], hasW ? t[1] : null, hasB ? t[hasW ? 2 : 1] : null, { eps: 1e-3 }), inputs, rng.u32());
      });
    }
  }

  it('layerNorm with only the parameters requiring grad', () => {
    const rng = rngFor('layerNorm params only');
    const x = randTensor(rng, [5, 7]);
    const w = randTensor(rng, [7], { requiresGrad: true });
    const b = randTensor(rng, [7], { requiresGrad: true });
    check('layerNorm params only', (ww, bb) => ops.layerNorm(x, ww, bb), [w, b], rng.u32());
  });

  for (const name of ['gelu', 'relu'] as const) {
    it(name, () => {
      const rng = rngFor(name);
      const x = randTensor(rng, [3, 7], { requiresGrad: true, scale: 2 });
      check(name, (t) => ops[name](t), [x], rng.u32());
    });
  }

  it('dropout with a fixed seed', () => {
    const rng = rngFor('dropout');
    const x = randTensor(rng, [4, 9], { requiresGrad: true });
    const seed = rng.u32();
    check('dropout', (t) => ops.dropout(t, 0.3, { seed }), [x], rng.u32());
  });

  it('embedding with repeated ids; paddingIdx zeroes exactly its row of that gradient', () => {
    const rng = rngFor('embedding');
    const ids = tensor(new Int32Array([2, 0, 2, 4, 2, 1, 0, 3]), { shape: [2, 4] });
    const w = randTensor(rng, [6, 5], { requiresGrad: true });
    check('embedding', (t) => ops.embedding(ids, t), [w], rng.u32());
    // The padding row is still looked up but receives no gradient, so a central difference
    // cannot check it: compare with the plain gradient instead, row by row.
    const g = randTensor(rng, [2, 4, 5]);
    ops.embedding(ids, w).backward(g);
    const plain = values(w.grad!);
    w.grad = null;
    ops.embedding(ids, w, { paddingIdx: 2 }).backward(g);
    const padded = values(w.grad!);
    expect(padded).toEqual(plain.map((v, i) => (Math.floor(i / 5) === 2 ? 0 : v)));
    expect(plain.slice(10, 15).every((v) => v !== 0)).toBe(true);
  });

  for (const reduction of ['mean', 'sum', 'none'] as const) {
    for (const labelSmoothing of [0, 0.15]) {
      const label = `crossEntropy ${reduction} smoothing=${labelSmoothing}`;
      it(label, () => {
        const rng = rngFor(label);
        const z = randTensor(rng, [7, 5], { requiresGrad: true, scale: 2 });
        const t = tensor(new Int32Array([0, 4, -100, 2, 2, -100, 1]));
        check(label, (l) => ops.crossEntropy(l, t, { reduction, labelSmoothing }), [z], rng.u32());
      });
    }
  }
});

// ---------------------------------------------------------------------------------------------
describe('values (PyTorch semantics)', () => {
  it('layerNorm normalizes each row with the biased variance', () => {
    const x = tensor([[1, 2, 4], [3, 3, 3]], { dtype: 'float64' });
    const w = tensor([1, 2, 3], { dtype: 'float64' });
    const b = tensor([0, 1, -1], { dtype: 'float64' });
    const y = values(ops.layerNorm(x, w, b, { eps: 1e-5 }));
    const mean = 7 / 3;
    const rstd = 1 / Math.sqrt(((1 - mean) ** 2 + (2 - mean) ** 2 + (4 - mean) ** 2) / 3 + 1e-5);
    const want = [(1 - mean) * rstd, (2 - mean) * rstd * 2 + 1, (4 - mean) * rstd * 3 - 1, 0, 1, -1];
    expect(maxAbsDiff(y, want)).toBeLessThan(1e-12);
  });

  it('gelu is the exact erf form; relu clamps', () => {
    const x = tensor([-3, -1, 0, 0.5, 1, 2], { dtype: 'float64' });
    const g = values(ops.gelu(x));
    // x * Phi(x) from Python's math.erfc, to the last digit.
    const want = [-0.004049694094890287, -0.15865525393145707, 0, 0.34573123063700656, 0.8413447460685429, 1.9544997361036416];
    expect(maxAbsDiff(g, want)).toBeLessThan(1e-12);
    expect(values(ops.relu(x))).toEqual([0, 0, 0, 0.5, 1, 2]);
  });

  it('embedding returns the rows of weight in the shape of ids', () => {
    const w = tensor([[0, 1], [10, 11], [20, 21]], { dtype: 'float32' });
    const y = ops.embedding(tensor([[2, 0, 2]], { dtype: 'int32' }), w);
    expect(y.shape).toEqual([1, 3, 2]);
    expect(values(y)).toEqual([20, 21, 0, 1, 20, 21]);
  });

  it('crossEntropy matches the formula with smoothing, ignored rows and each reduction', () => {
    const rng = rngFor('ce values');
    const N = 6;
    const C = 4;
    const z = randnF64(rng, N * C, 3);
    const tg = [3, -1, 0, 2, -1, 1];
    const s = 0.2;
    const rows: number[] = [];
    for (let i = 0; i < N; i++) {
      const row = Array.from(z.subarray(i * C, (i + 1) * C));
      const lse = Math.log(row.reduce((a, v) => a + Math.exp(v), 0));
      if (tg[i] === -1) rows.push(0);
      else rows.push((1 - s) * (lse - row[tg[i]]) + (s / C) * row.reduce((a, v) => a + (lse - v), 0));
    }
    const logits = tensor(z, { shape: [N, C] });
    const targets = tensor(tg, { dtype: 'int32' });
    const opts = { labelSmoothing: s, ignoreIndex: -1 };
    const none = values(ops.crossEntropy(logits, targets, { ...opts, reduction: 'none' }));
    expect(maxAbsDiff(none, rows)).toBeLessThan(1e-12);
    const total = rows.reduce((a, v) => a + v, 0);
    expect(values(ops.crossEntropy(logits, targets, { ...opts, reduction: 'sum' }))[0]).toBeCloseTo(total, 12);
    const mean = ops.crossEntropy(logits, targets, opts);
    expect(mean.shape).toEqual([]);
    expect(values(mean)[0]).toBeCloseTo(total / 4, 12);
  });

  it('crossEntropy with every target ignored gives 0 and a zero gradient', () => {
    const z = tensor([[1, 2], [3, 4]], { dtype: 'float64', requiresGrad: true });
    const loss = ops.crossEntropy(z, tensor([-100, -100], { dtype: 'int32' }));
    expect(values(loss)).toEqual([0]);
    loss.backward();
    expect(values(z.grad!)).toEqual([0, 0, 0, 0]);
  });

  it('the padding row of an embedding gets exactly zero gradient', () => {
    const w = randTensor(rngFor('pad'), [4, 3], { requiresGrad: true });
    const y = ops.embedding(tensor([1, 3, 1, 0], { dtype: 'int32' }), w, { paddingIdx: -3 });
    y.backward(ones([4, 3], { dtype: 'float64' }));
    expect(values(w.grad!)).toEqual([1, 1, 1, 0, 0, 0, 0, 0, 0, 1, 1, 1]);
  });

  it('empty inputs give empty outputs and zero parameter gradients', () => {
    const x = zeros([0, 4], { dtype: 'float64', requiresGrad: true });
    const w = ones([4], { dtype: 'float64', requiresGrad: true });
    const y = ops.layerNorm(x, w, null);
    expect(y.shape).toEqual([0, 4]);
    y.backward(zeros([0, 4], { dtype: 'float64' }));
    expect(values(w.grad!)).toEqual([0, 0, 0, 0]);
    expect(ops.gelu(zeros([0], { dtype: 'float32' })).shape).toEqual([0]);
  });
});

// ---------------------------------------------------------------------------------------------
// The fast float32 kernels against the float64 reference (design.md's policy):
//   maxabs(fast - ref64) <= F * maxabs(plain32 - ref64) + 4 * 2^-23 * maxabs(ref64),
// F = 2 forward, 3 backward; plain32 is the reference's float32 instantiation.
function expectWithin(what: string, fast: FloatArray, plain: FloatArray, ref: FloatArray, factor: number, ctx: string): void {
  const i = firstNonFinite(fast);
  expect(i, `${what}[${i}] = ${fast[i]} is not finite ${ctx}`).toBe(-1);
  const errFast = maxAbsDiff(fast, ref);
  const errPlain = maxAbsDiff(plain, ref);
  const bound = factor * errPlain + 4 * EPS32 * maxAbs(ref);
  expect(errFast, `${what}: fast error ${errFast.toExponential(3)} > bound ${bound.toExponential(3)} ${ctx}`).toBeLessThanOrEqual(bound);
}

const f32 = (n: number): Float32Array => new Float32Array(n).fill(NaN);
const f64 = (n: number): Float64Array => new Float64Array(n).fill(NaN);

function layerNormRun(x: FloatArray, w: FloatArray, b: FloatArray, dout: FloatArray, rows: number, d: number, reference: boolean) {
  const mk = x instanceof Float64Array ? f64 : f32;
  const out = mk(rows * d);
  const mean = mk(rows);
  const rstd = mk(rows);
  addon.layerNormForward({ x, weight: w, bias: b, out, mean, rstd, rows, d, eps: 1e-5, reference });
  const dx = mk(rows * d);
  const dweight = mk(d);
  const dbias = mk(d);
  addon.layerNormBackward({ x, weight: w, mean, rstd, dout, dx, dweight, dbias, rows, d, reference });
  return { out, mean, rstd, dx, dweight, dbias };
}

function crossEntropyRun(logits: FloatArray, targets: Int32Array, dloss: FloatArray, N: number, C: number, s: number, reference: boolean) {
  const mk = logits instanceof Float64Array ? f64 : f32;
  const loss = mk(N);
  const lse = mk(N);
  const args = { logits, targets, N, C, labelSmoothing: s, ignoreIndex: -100, reference };
  addon.crossEntropyForward({ ...args, loss, lse });
  const dlogits = mk(N * C);
  addon.crossEntropyBackward({ ...args, lse, dloss, dlogits });
  return { loss, lse, dlogits };
}

describe('float32 kernels vs the float64 reference', () => {
  for (const [rows, d, shift] of [[64, 5, 0], [64, 64, 3], [48, 768, 0], [40, 1001, 10]] as const) {
    const label = `layerNorm rows=${rows} d=${d} shift=${shift}`;
    it(label, () => {
      const rng = rngFor(label);
      const x32 = Float32Array.from(randnF64(rng, rows * d), (v) => v + shift);
      const w32 = Float32Array.from(randnF64(rng, d));
      const b32 = Float32Array.from(randnF64(rng, d));
      const g32 = Float32Array.from(randnF64(rng, rows * d));
      const ref = layerNormRun(Float64Array.from(x32), Float64Array.from(w32), Float64Array.from(b32), Float64Array.from(g32), rows, d, true);
      const plain = layerNormRun(x32, w32, b32, g32, rows, d, true);
      const fast = layerNormRun(x32, w32, b32, g32, rows, d, false);
      const ctx = where(label);
      for (const k of ['out', 'mean', 'rstd'] as const) expectWithin(k, fast[k], plain[k], ref[k], 2, ctx);
      for (const k of ['dx', 'dweight', 'dbias'] as const) expectWithin(k, fast[k], plain[k], ref[k], 3, ctx);
      // The float64 kernel against the reference: rounding only.
      const fast64 = layerNormRun(Float64Array.from(x32), Float64Array.from(w32), Float64Array.from(b32), Float64Array.from(g32), rows, d, false);
      for (const k of ['out', 'dx', 'dweight', 'dbias'] as const) {
        expect(maxAbsDiff(fast64[k], ref[k]), `${k} float64 ${ctx}`).toBeLessThanOrEqual(1e-11 * Math.max(1, maxAbs(ref[k])));
      }
    });
  }

  for (const [N, C, scale, s] of [[64, 3, 1, 0], [64, 100, 4, 0.1], [32, 1000, 3, 0], [16, 4099, 2, 0.3]] as const) {
    const label = `crossEntropy N=${N} C=${C} scale=${scale} s=${s}`;
    it(label, () => {
      const rng = rngFor(label);
      const z32 = Float32Array.from(randnF64(rng, N * C, scale));
      const targets = randomIds(rng, N, C);
      targets[N - 1] = -100;
      const g32 = Float32Array.from(randnF64(rng, N));
      const ref = crossEntropyRun(Float64Array.from(z32), targets, Float64Array.from(g32), N, C, s, true);
      const plain = crossEntropyRun(z32, targets, g32, N, C, s, true);
      const fast = crossEntropyRun(z32, targets, g32, N, C, s, false);
      const ctx = where(label);
      expectWithin('loss', fast.loss, plain.loss, ref.loss, 2, ctx);
      expectWithin('lse', fast.lse, plain.lse, ref.lse, 2, ctx);
      expectWithin('dlogits', fast.dlogits, plain.dlogits, ref.dlogits, 3, ctx);
      const fast64 = crossEntropyRun(Float64Array.from(z32), targets, Float64Array.from(g32), N, C, s, false);
      for (const k of ['loss', 'lse', 'dlogits'] as const) {
        expect(maxAbsDiff(fast64[k], ref[k]), `${k} float64 ${ctx}`).toBeLessThanOrEqual(1e-11 * Math.max(1, maxAbs(ref[k])));
      }
    });
  }

  it('gelu, relu, dropout and embedding kernels agree with their references', () => {
    const rng = rngFor('elementwise refs');
    const n = 40000;
    const x = randnF64(rng, n, 3);
    const g = randnF64(rng, n);
    for (const name of ['gelu', 'relu'] as const) {
      const fwd = name === 'gelu' ? addon.geluForward : addon.reluForward;
      const bwd = name === 'gelu' ? addon.geluBackward : addon.reluBackward;
      const [a, b, da, db] = [f64(n), f64(n), f64(n), f64(n)];
      fwd({ x, out: a, n });
      fwd({ x, out: b, n, reference: true });
      bwd({ x, dout: g, dx: da, n });
      bwd({ x, dout: g, dx: db, n, reference: true });
      expect(maxAbsDiff(a, b), name).toBeLessThan(1e-14);
      expect(maxAbsDiff(da, db), name).toBeLessThan(1e-14);
    }
    const [o1, o2] = [f64(n), f64(n)];
    addon.dropoutForward({ x, out: o1, n, p: 0.4, seed: 12345 });
    addon.dropoutForward({ x, out: o2, n, p: 0.4, seed: 12345, reference: true });
    expect(firstBitwiseDifference(o1, o2)).toBe(-1);
    const V = 50;
    const d = 900;
    const m = 300;
    const ids = randomIds(rng, m, V);
    const dout = randnF64(rng, m * d);
    const [w1, w2] = [f64(V * d), f64(V * d)];
    addon.embeddingBackward({ ids, dout, dweight: w1, n: m, V, d, paddingIdx: 3 });
    addon.embeddingBackward({ ids, dout, dweight: w2, n: m, V, d, paddingIdx: 3, reference: true });
    expect(firstBitwiseDifference(w1, w2)).toBe(-1);
  });
});

// ---------------------------------------------------------------------------------------------
describe('dropout', () => {
  it('keeps about 1 - p of the elements, scaled by 1 / (1 - p)', () => {
    const n = 100_000;
    const p = 0.3;
    const seed = rngFor('dropout stats').u32();
    const y = ops.dropout(ones([n], { dtype: 'float64' }), p, { seed });
    const v = y.dataSync();
    let kept = 0;
    let bad = -1;
    for (let i = 0; i < n; i++) {
      if (v[i] !== 0) {
        kept++;
        if (v[i] !== 1 / (1 - p) && bad < 0) bad = i;
      }
    }
    expect(bad, `a kept element is not 1/(1-p) ${where('dropout stats')}`).toBe(-1);
    const sigma = Math.sqrt((p * (1 - p)) / n);
    expect(Math.abs(kept / n - (1 - p)), where(`dropout stats seed=${seed}`)).toBeLessThan(6 * sigma);
  });

  it('same seed -> same mask; another seed -> another; the backward uses the same mask', () => {
    const x = randTensor(rngFor('dropout same'), [50, 40], { dtype: 'float32', requiresGrad: true });
    const a = ops.dropout(x, 0.5, { seed: 7 });
    const b = ops.dropout(x, 0.5, { seed: 7 });
    const c = ops.dropout(x, 0.5, { seed: 8 });
    expect(firstBitwiseDifference(a.dataSync() as FloatArray, b.dataSync() as FloatArray)).toBe(-1);
    expect(firstBitwiseDifference(a.dataSync() as FloatArray, c.dataSync() as FloatArray)).not.toBe(-1);
    a.backward(ones([50, 40]));
    const av = a.dataSync();
    const gv = x.grad!.dataSync();
    for (let i = 0; i < av.length; i++) if ((av[i] === 0) !== (gv[i] === 0) || (gv[i] !== 0 && gv[i] !== 2)) throw new Error(`grad[${i}] = ${gv[i]}`);
  });

  it('manualSeed makes unseeded calls reproducible', () => {
    const x = ones([1000]);
    manualSeed(42);
    const a = ops.dropout(x, 0.5).dataSync();
    const a2 = ops.dropout(x, 0.5).dataSync();
    manualSeed(42);
    const b = ops.dropout(x, 0.5).dataSync();
    expect(firstBitwiseDifference(a as FloatArray, b as FloatArray)).toBe(-1);
    expect(firstBitwiseDifference(a as FloatArray, a2 as FloatArray)).not.toBe(-1);
  });

  it('is the identity (x itself) when not training or p = 0, and zeros at p = 1', () => {
    const x = randTensor(rngFor('dropout id'), [3, 4], { requiresGrad: true });
    expect(ops.dropout(x, 0.5, { training: false })).toBe(x);
    expect(ops.dropout(x, 0)).toBe(x);
    const z = ops.dropout(x, 1, { seed: 3 });
    expect(values(z)).toEqual(new Array(12).fill(0));
    z.backward(ones([3, 4], { dtype: 'float64' }));
    expect(values(x.grad!)).toEqual(new Array(12).fill(0));
  });
});

describe('independence of the thread count', () => {
  let saved = 1;
  beforeAll(() => {
    saved = getNumThreads();
  });
  afterAll(() => setNumThreads(saved));

  it('dropout masks, layerNorm gradients and embedding gradients are bitwise equal for 1 and 2 threads', () => {
    const rng = rngFor('threads');
    const x = randTensor(rng, [300, 512], { dtype: 'float32', requiresGrad: true });
    const w = randTensor(rng, [512], { dtype: 'float32', requiresGrad: true });
    const b = randTensor(rng, [512], { dtype: 'float32', requiresGrad: true });
    const table = randTensor(rng, [40, 256], { dtype: 'float32', requiresGrad: true });
    const ids = tensor(randomIds(rng, 900, 40), { shape: [30, 30] });
    const run = (threads: number): FloatArray[] => {
      setNumThreads(threads);
      for (const t of [x, w, b, table]) t.grad = null;
      const drop = ops.dropout(x, 0.25, { seed: 99 });
      const y = ops.layerNorm(drop, w, b);
      y.backward(ones([300, 512]));
      ops.embedding(ids, table, { paddingIdx: 0 }).backward(ones([30, 30, 256]));
      return [drop, x.grad!, w.grad!, b.grad!, table.grad!].map((t) => t.dataSync() as FloatArray);
    };
    const one = run(1);
    const two = run(2);
    ['dropout', 'dx', 'dweight', 'dbias', 'dtable'].forEach((name, i) => {
      expect(firstBitwiseDifference(one[i], two[i]), `${name} differs between 1 and 2 threads`).toBe(-1);
    });
  });
});

// ---------------------------------------------------------------------------------------------
describe('validation', () => {
  const x64 = () => zeros([2, 3], { dtype: 'float64' });
  const ids = (a: number[]) => tensor(a, { dtype: 'int32' });

  it('layerNorm', () => {
    expectLunaError(() => ops.layerNorm(x64(), zeros([4], { dtype: 'float64' }), null), 'ERR_SHAPE', /weight\.shape.*\[3\]/);
    expectLunaError(() => ops.layerNorm(x64(), null, zeros([3], { dtype: 'float32' })), 'ERR_DTYPE', /bias\.dtype/);
    expectLunaError(() => ops.layerNorm(ids([1, 2]), null, null), 'ERR_DTYPE', /x\.dtype/);
    expectLunaError(() => ops.layerNorm(tensor(1), null, null), 'ERR_SHAPE', /x\.shape/);
    expectLunaError(() => ops.layerNorm(x64(), null, null, { eps: -1 }), 'ERR_ARGUMENT', /eps/);
    expectLunaError(() => ops.layerNorm(x64(), null, null, { epsilon: 1 } as never), 'ERR_ARGUMENT', /unknown key "epsilon"/);
  });

  it('gelu, relu, dropout', () => {
    expectLunaError(() => ops.gelu(ids([1])), 'ERR_DTYPE', /x\.dtype/);
    expectLunaError(() => ops.relu('x' as never), 'ERR_ARGUMENT', /x expected a Tensor/);
    expectLunaError(() => ops.dropout(x64(), 1.5), 'ERR_ARGUMENT', /p expected a probability/);
    expectLunaError(() => ops.dropout(x64(), NaN), 'ERR_ARGUMENT', /p expected a finite/);
    expectLunaError(() => ops.dropout(x64(), 0.5, { seed: 1.5 }), 'ERR_ARGUMENT', /seed/);
    expectLunaError(() => ops.dropout(x64(), 0.5, { training: 1 } as never), 'ERR_ARGUMENT', /training/);
    expectLunaError(() => manualSeed(0.5), 'ERR_ARGUMENT', /seed/);
  });

  it('embedding', () => {
    const w = zeros([5, 2]);
    expectLunaError(() => ops.embedding(tensor([1, 2]), w), 'ERR_DTYPE', /ids\.dtype expected int32, got float32/);
    expectLunaError(() => ops.embedding(ids([1]), zeros([5])), 'ERR_SHAPE', /weight\.shape/);
    expectLunaError(() => ops.embedding(tensor([[0, 1], [7, 2]], { dtype: 'int32' }), w), 'ERR_ARGUMENT', /ids\[1\]\[0\] expected an id in \[0, 5\).*got 7/);
    expectLunaError(() => ops.embedding(ids([-1]), w), 'ERR_ARGUMENT', /got -1/);
    expectLunaError(() => ops.embedding(ids([1]), w, { paddingIdx: 5 }), 'ERR_ARGUMENT', /paddingIdx/);
  });

  it('crossEntropy', () => {
    const z = zeros([3, 4]);
    expectLunaError(() => ops.crossEntropy(z, tensor([0, 1, 2])), 'ERR_DTYPE', /targets\.dtype/);
    expectLunaError(() => ops.crossEntropy(z, ids([0, 1])), 'ERR_SHAPE', /targets\.shape.*\[3\]/);
    expectLunaError(() => ops.crossEntropy(zeros([3]), ids([0, 1, 2])), 'ERR_SHAPE', /logits\.shape/);
    expectLunaError(() => ops.crossEntropy(z, ids([0, 4, 1])), 'ERR_ARGUMENT', /targets\[1\].*\[0, 4\).*got 4/);
    expectLunaError(() => ops.crossEntropy(z, ids([0, 1, 1]), { reduction: 'avg' } as never), 'ERR_ARGUMENT', /reduction/);
    expectLunaError(() => ops.crossEntropy(z, ids([0, 1, 1]), { labelSmoothing: 2 }), 'ERR_ARGUMENT', /labelSmoothing/);
    expectLunaError(() => ops.crossEntropy(z, ids([0, 1, 1]), { ignoreIndex: 0.5 }), 'ERR_ARGUMENT', /ignoreIndex/);
    expectLunaError(() => ops.crossEntropy(zeros([3, 4], { dtype: 'float64' }), ids([0, 1, 1]), { weight: 1 } as never), 'ERR_ARGUMENT', /unknown key/);
  });

  it('the raw addon throws (never crashes) on bad lengths, types and indices', () => {
    const x = new Float32Array(6);
    const lnArgs = { x, weight: null, bias: null, out: new Float32Array(6), mean: new Float32Array(2), rstd: new Float32Array(2), rows: 2, d: 3, eps: 1e-5 };
    expect(() => addon.layerNormForward({ ...lnArgs, out: new Float32Array(5) })).toThrow(RangeError);
    expect(() => addon.layerNormForward({ ...lnArgs, weight: new Float64Array(3) })).toThrow(TypeError);
    expect(() => addon.layerNormForward({ ...lnArgs, rows: 0 })).toThrow(RangeError);
    const emb = { ids: new Int32Array([0, 9]), weight: new Float32Array(8), out: new Float32Array(4), n: 2, V: 4, d: 2 };
    expect(() => addon.embeddingForward(emb)).toThrow(/ids\[1\] = 9/);
    expect(() => addon.embeddingForward({ ...emb, ids: new Float32Array(2) as never })).toThrow(/Int32Array/);
    const ce = { logits: new Float32Array(6), targets: new Int32Array([0, 3]), loss: new Float32Array(2), lse: new Float32Array(2), N: 2, C: 3, labelSmoothing: 0, ignoreIndex: -100 };
    expect(() => addon.crossEntropyForward(ce)).toThrow(/targets\[1\] = 3/);
    expect(() => addon.dropoutForward({ x, out: new Float32Array(6), n: 6, p: 2, seed: 0 })).toThrow(RangeError);
  });
});
