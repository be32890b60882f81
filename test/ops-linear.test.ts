// matmul and linear, and the GEMM family behind them (native/INTERFACE-gemm.md):
// - float64 central-difference gradchecks at odd sizes (1, 3, 7, 33; with and without bias;
//   batched and shared-b matmul);
// - the fast float32 GEMM against the float64 reference with design.md's policy: error at most
//   2x (forward) / 3x (backward) the error of the plain float32 reference, plus a floor of
//   4 ulp of the rounding scale sqrt(sum_k (alpha a_ik b_kj)^2 + ...) (maxabs of the result,
//   the attention tests' floor, can vanish by cancellation when C has a single element). All
//   outputs are NaN-poisoned before the kernels run;
// - alpha / beta / bias / batch through the raw addon, sizes that are no multiple of any tile;
// - bitwise determinism for 1, 2 and 3 threads; zero sizes; validation errors.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { getNumThreads, gradcheck, ops, setNumThreads, tensor, zeros, type Tensor } from '../lib/index';
import { setPoisonOutputs } from '../lib/testing';
import type { GemmArgs } from '../lib/native-ops';
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
} from './helpers';
import { addon } from './native-helpers';

const EPS32 = 2 ** -23;
const TOL = { eps: 1e-6, atol: 1e-5, rtol: 1e-3 };

beforeAll(() => setPoisonOutputs(true));
afterAll(() => setPoisonOutputs(false));

// ---- gradchecks ----
describe('gradcheck (float64)', () => {
  const mm: [number[], number[]][] = [
    [[1, 1], [1, 1]],
    [[3, 7], [7, 5]],
    [[7, 3], [3, 1]],
    [[1, 33], [33, 7]],
    [[33, 3], [3, 7]],
    [[2, 3, 4, 5], [5, 3]], // shared b
    [[2, 3, 4, 5], [2, 3, 5, 3]], // batched b
    [[3, 1, 7], [3, 7, 1]],
  ];
  for (const [sa, sb] of mm) {
    it(`matmul a${JSON.stringify(sa)} b${JSON.stringify(sb)}`, () => {
      const rng = rngFor(`gc matmul ${sa} ${sb}`);
      const a = randTensor(rng, sa, { requiresGrad: true });
      const b = randTensor(rng, sb, { requiresGrad: true });
      expect(gradcheck((x, y) => ops.matmul(x, y), [a, b], TOL), where(`matmul ${sa} ${sb}`)).toBe(true);
    });
  }

  const lin: [number[], number, boolean][] = [
    [[1, 1], 1, true],
    [[3, 7], 5, true],
    [[3, 7], 5, false],
    [[7], 3, true], // rank-1 input
    [[2, 3, 4], 1, true],
    [[33, 3], 7, false],
    [[1, 33], 3, true],
  ];
  for (const [sx, out, withBias] of lin) {
    it(`linear x${JSON.stringify(sx)} out=${out}${withBias ? ' bias' : ''}`, () => {
      const rng = rngFor(`gc linear ${sx} ${out} ${withBias}`);
      const x = randTensor(rng, sx, { requiresGrad: true });
      const w = randTensor(rng, [out, sx[sx.length - 1]], { requiresGrad: true });
      const inputs = [x, w];
      if (withBias) inputs.push(randTensor(rng, [out], { requiresGrad: true }));
      const fn = (...t: Tensor[]) => ops.linear(t[0], t[1], t[2]);
      expect(gradcheck(fn, inputs, TOL), where(`linear ${sx} ${out}`)).toBe(true);
    });
  }
});

// ---- fast float32 against the float64 reference ----
// A case: the addon's GEMM arguments without the buffers (made per case); bias says whether to add one.
type Gemm = Omit<GemmArgs, 'a' | 'b' | 'c' | 'bias'> & { bias?: boolean };

function label(g: Gemm): string {
  return `gemm M=${g.M} N=${g.N} K=${g.K} tA=${!!g.transA} tB=${!!g.transB} alpha=${g.alpha ?? 1} beta=${g.beta ?? 0} batch=${g.batch ?? 1}${g.bias ? ' bias' : ''}`;
}

type Arrays = { a: FloatArray; b: FloatArray; c: FloatArray; bias: FloatArray | null };

function run(kind: 'gemm' | 'gemmReference', g: Gemm, arr: Arrays): FloatArray {
  const c = arr.c.slice();
  const { bias: withBias, ...dims } = g;
  addon[kind]({ ...dims, a: arr.a, b: arr.b, c, bias: withBias ? arr.bias : null });
  return c;
}

// 4 ulp of the largest sqrt(sum_k (alpha a b)^2 + (beta c)^2 + bias^2): the reference GEMM on
// squared inputs gives sum_k (a b)^2 exactly enough.
function roundingFloor(g: Gemm, arr64: Arrays): number {
  const sq = (x: FloatArray): FloatArray => Float64Array.from(x, (v) => v * v);
  const alpha = g.alpha ?? 1;
  const beta = g.beta ?? 0;
  const s = run('gemmReference', { ...g, alpha: alpha * alpha, beta: beta * beta, bias: !!arr64.bias }, {
    a: sq(arr64.a),
    b: sq(arr64.b),
    c: sq(arr64.c),
    bias: arr64.bias ? sq(arr64.bias) : null,
  });
  let m = 0;
  for (const v of s) m = Math.max(m, Math.sqrt(v));
  return 4 * EPS32 * m;
}

function checkPolicy(what: string, fast: FloatArray, plain: FloatArray, ref: FloatArray, factor: number, floor: number, ctx: string) {
  const i = firstNonFinite(fast);
  expect(i, `${what}[${i}] = ${fast[i]} is not finite (unwritten?) ${ctx}`).toBe(-1);
  const errFast = maxAbsDiff(fast, ref);
  const errPlain = maxAbsDiff(plain, ref);
  const bound = factor * errPlain + floor;
  expect(
    errFast,
    `${what}: fast error ${errFast.toExponential(3)} > ${factor} x plain ${errPlain.toExponential(3)} + floor ${floor.toExponential(3)} ${ctx}`,
  ).toBeLessThanOrEqual(bound);
}

function gemmParity(g: Gemm) {
  const ctx = where(label(g));
  const rng = rngFor(label(g));
  const batch = g.batch ?? 1;
  const f32 = (n: number) => Float32Array.from(randnF64(rng, n));
  const beta = g.beta ?? 0;
  const arr32: Arrays = {
    a: f32(batch * g.M * g.K),
    b: f32(batch * g.K * g.N),
    // beta = 0: C is NaN and must be ignored.
    c: beta === 0 ? new Float32Array(batch * g.M * g.N).fill(NaN) : f32(batch * g.M * g.N),
    bias: g.bias ? f32(g.N) : null,
  };
  const arr64: Arrays = {
    a: Float64Array.from(arr32.a),
    b: Float64Array.from(arr32.b),
    c: Float64Array.from(arr32.c),
    bias: arr32.bias ? Float64Array.from(arr32.bias) : null,
  };
  const ref = run('gemmReference', g, arr64);
  const plain = run('gemmReference', g, arr32);
  const fast = run('gemm', g, arr32);
  const floor = roundingFloor(g, { ...arr64, c: beta === 0 ? new Float64Array(arr64.c.length) : arr64.c });
  checkPolicy('c', fast, plain, ref, 2, floor, ctx);
  // The float64 fast kernel against the reference: rounding ~1e-16 relative, any defect far larger.
  const fast64 = run('gemm', g, arr64);
  const err64 = maxAbsDiff(fast64, ref);
  expect(err64, `float64 error ${err64} ${ctx}`).toBeLessThanOrEqual(1e-11 * Math.max(1, floor / (4 * EPS32)));
}

describe('gemm: fast float32 vs float64 reference (2x plain float32), poisoned outputs', () => {
  const cases: Gemm[] = [];
  for (const transA of [false, true])
    for (const transB of [false, true]) {
      for (const [M, N, K] of [
        [1, 1, 1],
        [1, 1, 37],
        [3, 7, 1],
        [7, 33, 3],
        [15, 17, 33],
        [29, 45, 300], // two K chunks; no multiple of any tile
        [100, 65, 513], // three chunks
      ])
        cases.push({ M, N, K, transA, transB, bias: (M + N) % 2 === 0 });
      cases.push({ M: 37, N: 31, K: 270, transA, transB, alpha: -0.5, beta: 0.75, bias: true });
      cases.push({ M: 13, N: 18, K: 19, transA, transB, alpha: 2, beta: 1, batch: 3 });
      cases.push({ M: 9, N: 5, K: 0, transA, transB, beta: 0.5, bias: true }); // empty product
    }
  cases.push({ M: 300, N: 70, K: 600, bias: true });
  cases.push({ M: 64, N: 256, K: 1200, transA: true });
  for (const g of cases) it(label(g), () => gemmParity(g));
});

describe('linear through ops: float32 vs float64 reference (2x forward, 3x backward)', () => {
  for (const [rows, inF, outF] of [
    [1, 1, 1],
    [7, 3, 33],
    [50, 33, 7],
    [300, 40, 90], // dW sums 300 rows: two K chunks
  ]) {
    it(`x [${rows},${inF}] W [${outF},${inF}] + bias`, () => {
      const ctx = where(`linear parity ${rows} ${inF} ${outF}`);
      const rng = rngFor(`linear parity ${rows} ${inF} ${outF}`);
      const x = randTensor(rng, [rows, inF], { dtype: 'float32', requiresGrad: true });
      const w = randTensor(rng, [outF, inF], { dtype: 'float32', requiresGrad: true });
      const b = randTensor(rng, [outF], { dtype: 'float32', requiresGrad: true });
      const gy = randTensor(rng, [rows, outF], { dtype: 'float32' });
      const y = ops.linear(x, w, b);
      y.backward(gy);
      const d32 = (t: Tensor) => t.dataSync() as Float32Array;
      const [x32, w32, b32, g32] = [d32(x), d32(w), d32(b), d32(gy)];
      const [x64, w64, b64, g64] = [x32, w32, b32, g32].map((v) => Float64Array.from(v));
      const both = (fn: (xx: FloatArray, ww: FloatArray, bb: FloatArray, gg: FloatArray) => FloatArray) => ({
        ref: fn(x64, w64, b64, g64),
        plain: fn(x32, w32, b32, g32),
      });
      const ref = (kind: 'gemmReference', g: Gemm, a: FloatArray, bb: FloatArray, bias: FloatArray | null) =>
        run(kind, g, { a, b: bb, c: a instanceof Float64Array ? new Float64Array(g.M * g.N) : new Float32Array(g.M * g.N), bias });
      const fwd = both((xx, ww, bb) => ref('gemmReference', { M: rows, N: outF, K: inF, transB: true, bias: true }, xx, ww, bb));
      const dx = both((_x, ww, _b, gg) => ref('gemmReference', { M: rows, N: inF, K: outF }, gg, ww, null));
      const dw = both((xx, _w, _b, gg) => ref('gemmReference', { M: outF, N: inF, K: rows, transA: true }, gg, xx, null));
      const colsum = (gg: FloatArray) => {
        const out = gg instanceof Float64Array ? new Float64Array(outF) : new Float32Array(outF);
        addon.columnSumReference({ x: gg, out, rows, cols: outF });
        return out;
      };
      const db = both((_x, _w, _b, gg) => colsum(gg));
      // Floors: 4 ulp of sqrt(K) x the product of the inputs' largest magnitudes (the rounding
      // scale of one element, bounded).
      const mx = (v: FloatArray) => maxAbs(v);
      const floor = (K: number, p: number) => 4 * EPS32 * Math.sqrt(Math.max(K, 1)) * p;
      checkPolicy('y', d32(y), fwd.plain, fwd.ref, 2, floor(inF + 1, Math.max(mx(x32) * mx(w32), mx(b32))), ctx);
      checkPolicy('dx', d32(x.grad!), dx.plain, dx.ref, 3, floor(outF, mx(g32) * mx(w32)), ctx);
      checkPolicy('dW', d32(w.grad!), dw.plain, dw.ref, 3, floor(rows, mx(g32) * mx(x32)), ctx);
      checkPolicy('db', d32(b.grad!), db.plain, db.ref, 3, floor(rows, mx(g32)), ctx);
    });
  }
});

describe('column sums and bias add (raw addon)', () => {
  it('columnSum matches the reference, accumulates, and ignores poisoned output with accumulate off', () => {
    const rng = rngFor('colsum');
    const rows = 1000;
    const cols = 37;
    const x = randnF64(rng, rows * cols);
    const ref = new Float64Array(cols);
    addon.columnSumReference({ x, out: ref, rows, cols });
    const out = new Float64Array(cols).fill(NaN);
    addon.columnSum({ x, out, rows, cols });
    expect(maxAbsDiff(out, ref)).toBeLessThanOrEqual(1e-12);
    const acc = new Float64Array(cols).fill(1);
    addon.columnSum({ x, out: acc, rows, cols, accumulate: true });
    expect(maxAbsDiff(acc, ref.map((v) => v + 1))).toBeLessThanOrEqual(1e-12);
  });
  it('biasAdd adds the row vector to every row', () => {
    const y = Float32Array.from([1, 2, 3, 4, 5, 6]);
    addon.biasAdd({ y, bias: Float32Array.from([10, 20, 30]), rows: 2, cols: 3 });
    expect(Array.from(y)).toEqual([11, 22, 33, 14, 25, 36]);
  });
});

// ---- determinism ----
describe('bitwise determinism across thread counts', () => {
  let saved = 0;
  beforeAll(() => {
    saved = getNumThreads();
  });
  afterAll(() => setNumThreads(saved));

  function linearRun(label: string): FloatArray[] {
    const rng = rngFor(label);
    const x = randTensor(rng, [2, 700, 96], { dtype: 'float32', requiresGrad: true });
    const w = randTensor(rng, [200, 96], { dtype: 'float32', requiresGrad: true });
    const b = randTensor(rng, [200], { dtype: 'float32', requiresGrad: true });
    const y = ops.linear(x, w, b);
    y.backward(randTensor(rng, [2, 700, 200], { dtype: 'float32' }));
    const m = ops.matmul(randTensor(rng, [3, 90, 300], { dtype: 'float32' }), randTensor(rng, [3, 300, 70], { dtype: 'float32' }));
    return [y, x.grad!, w.grad!, b.grad!, m].map((t) => t.dataSync() as FloatArray);
  }

  it('linear forward/backward and batched matmul: 1, 2, 3 threads give the same bits', () => {
    const results = [1, 2, 3].map((n) => {
      setNumThreads(n);
      return linearRun('determinism');
    });
    const names = ['y', 'dx', 'dW', 'db', 'matmul'];
    for (const r of results.slice(1))
      r.forEach((arr, i) => expect(firstBitwiseDifference(arr, results[0][i]), `${names[i]} ${where('determinism')}`).toBe(-1));
  });

  it('a long-K transposed GEMM (the dW shape): 1, 2, 3 threads give the same bits', () => {
    const rng = rngFor('determinism gemm');
    const M = 150;
    const N = 130;
    const K = 3000;
    const a = Float32Array.from(randnF64(rng, K * M));
    const b = Float32Array.from(randnF64(rng, K * N));
    const outs = [1, 2, 3].map((n) => {
      setNumThreads(n);
      const c = new Float32Array(M * N).fill(NaN);
      addon.gemm({ a, b, c, M, N, K, transA: true });
      return c;
    });
    expect(firstBitwiseDifference(outs[1], outs[0])).toBe(-1);
    expect(firstBitwiseDifference(outs[2], outs[0])).toBe(-1);
  });
});

// ---- zero sizes ----
describe('zero sizes', () => {
  it('linear with no rows, and with in = 0 (output = bias, zero weight gradient)', () => {
    const w = zeros([4, 3], { dtype: 'float64', requiresGrad: true });
    const y0 = ops.linear(zeros([0, 3], { dtype: 'float64' }), w);
    expect(y0.shape).toEqual([0, 4]);
    const x = zeros([2, 0], { dtype: 'float64', requiresGrad: true });
    const we = zeros([3, 0], { dtype: 'float64', requiresGrad: true });
    const b = tensor([1, 2, 3], { dtype: 'float64', requiresGrad: true });
    const y = ops.linear(x, we, b);
    expect(values(y)).toEqual([1, 2, 3, 1, 2, 3]);
    y.backward(tensor([[1, 1, 1], [1, 1, 1]], { dtype: 'float64' }));
    expect(values(b.grad!)).toEqual([2, 2, 2]);
    expect(we.grad!.shape).toEqual([3, 0]);
  });
  it('matmul with K = 0 gives zeros', () => {
    const y = ops.matmul(zeros([2, 0]), zeros([0, 3]));
    expect(values(y)).toEqual([0, 0, 0, 0, 0, 0]);
  });
});

// ---- validation ----
describe('validation', () => {
  const f32 = (shape: number[]) => zeros(shape);
  const f64 = (shape: number[]) => zeros(shape, { dtype: 'float64' });
  it('shape errors name the argument, the expectation and what came', () => {
    expectLunaError(() => ops.matmul(f32([3, 4]), f32([5, 2])), 'ERR_SHAPE', /matmul: b\.shape expected \[4,N\].*got \[5,2\]/);
    expectLunaError(() => ops.matmul(f32([4]), f32([4, 2])), 'ERR_SHAPE', /a\.shape expected .*rank >= 2.*got \[4\]/);
    expectLunaError(() => ops.matmul(f32([2, 3, 4]), f32([3, 4, 2])), 'ERR_SHAPE', /b\.shape.*got \[3,4,2\]/);
    expectLunaError(() => ops.matmul(f32([2, 3, 4]), f32([1, 2, 4, 2])), 'ERR_SHAPE', /b\.shape/);
    expectLunaError(() => ops.linear(f32([3, 4]), f32([5, 3])), 'ERR_SHAPE', /linear: weight\.shape expected \[out,4\].*got \[5,3\]/);
    expectLunaError(() => ops.linear(f32([3, 4]), f32([4])), 'ERR_SHAPE', /weight\.shape/);
    expectLunaError(() => ops.linear(f32([3, 4]), f32([5, 4]), f32([4])), 'ERR_SHAPE', /bias\.shape expected \[5\].*got \[4\]/);
    expectLunaError(() => ops.linear(f32([]), f32([5, 4])), 'ERR_SHAPE', /x\.shape/);
  });
  it('dtype errors: no implicit conversion, no bool', () => {
    expectLunaError(() => ops.matmul(f32([3, 4]), f64([4, 2])), 'ERR_DTYPE', /b\.dtype expected float32.*got float64/);
    expectLunaError(() => ops.linear(f64([3, 4]), f64([5, 4]), f32([5])), 'ERR_DTYPE', /bias\.dtype/);
    const mask = tensor([1, 0], { dtype: 'bool' });
    expectLunaError(() => ops.linear(mask, f32([5, 2])), 'ERR_DTYPE', /x\.dtype expected float32 or float64/);
  });
  it('argument errors: not a tensor, disposed', () => {
    expectLunaError(() => ops.matmul([[1]] as unknown as Tensor, f32([1, 1])), 'ERR_ARGUMENT', /matmul: a expected a Tensor/);
    expectLunaError(() => ops.linear(f32([2, 2]), f32([2, 2]), 3 as unknown as Tensor), 'ERR_ARGUMENT', /bias expected a Tensor/);
    const w = f32([2, 2]);
    w.dispose();
    expectLunaError(() => ops.linear(f32([2, 2]), w), 'ERR_DISPOSED');
  });
  it('the raw addon refuses bad arguments with a JS exception, never a crash', () => {
    const a = new Float32Array(6);
    const ok: GemmArgs = { a, b: new Float32Array(6), c: new Float32Array(4), M: 2, N: 2, K: 3 };
    const shared = new Float32Array(8);
    expect(() => addon.gemm(ok)).not.toThrow();
    const bad: [string, unknown][] = [
      ['short c', { ...ok, c: new Float32Array(3) }],
      ['mixed types', { ...ok, b: new Float64Array(6) }],
      ['negative size', { ...ok, M: -1 }],
      ['fractional size', { ...ok, K: 2.5 }],
      ['missing K', { ...ok, K: undefined }],
      ['NaN alpha', { ...ok, alpha: NaN }],
      ['non-boolean transA', { ...ok, transA: 1 }],
      ['c sharing memory with a', { a: shared.subarray(0, 3), b: new Float32Array(6), c: shared.subarray(2, 4), M: 1, N: 2, K: 3 }],
      ['bias of wrong length', { ...ok, bias: new Float32Array(3) }],
      ['huge batch', { ...ok, batch: 2 ** 30 }],
      ['not an object', 5],
    ];
    for (const [what, args] of bad) expect(() => addon.gemm(args as GemmArgs), what).toThrow();
    expect(() => addon.columnSum({ x: new Float32Array(6), out: new Float32Array(2), rows: 2, cols: 3 })).toThrow();
  });
});
