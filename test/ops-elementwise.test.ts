// Elementwise ops with broadcasting (add, sub, mul, scale), reductions (sum, mean) and
// broadcastTo: forward values against plain JS float64 loops, float64 gradchecks at odd and
// broadcasting shapes (size-1 dims, scalar-shaped [], empty dims), bitwise determinism of the
// reductions across thread counts, validation errors, and the raw addon's own argument checks.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { getNumThreads, gradcheck, ops, setNumThreads, tensor, type Tensor } from '../lib/index';
import { loadNative, setPoisonOutputs } from '../lib/testing';
import { expectLunaError, firstBitwiseDifference, maxAbsDiff, randTensor, rngFor, values, where } from './helpers';
import { shapeSize as size, unravel } from './helpers';

const TOL = { eps: 1e-6, atol: 1e-7, rtol: 1e-6 };
const addon = loadNative();

beforeAll(() => setPoisonOutputs(true));
afterAll(() => setPoisonOutputs(false));

// ---- plain JS float64 versions ----

/** Flat index into `shape` of the broadcast multi-index `idx` (aligned at the trailing dims). */
function broadcastIndex(idx: readonly number[], shape: readonly number[]): number {
  const off = idx.length - shape.length;
  let flat = 0;
  for (let d = 0; d < shape.length; d++) flat = flat * shape[d] + (shape[d] === 1 ? 0 : idx[d + off]);
  return flat;
}

function jsBroadcastShape(a: readonly number[], b: readonly number[]): number[] {
  const r = Math.max(a.length, b.length);
  return Array.from({ length: r }, (_, d) => {
    const x = a[d - (r - a.length)] ?? 1;
    const y = b[d - (r - b.length)] ?? 1;
    return x === 1 ? y : x;
  });
}

function jsBinary(op: 'add' | 'sub' | 'mul', a: Tensor, b: Tensor): { shape: number[]; data: number[] } {
  const shape = jsBroadcastShape(a.shape, b.shape);
  const av = values(a);
  const bv = values(b);
  const data = Array.from({ length: size(shape) }, (_, i) => {
    const idx = unravel(i, shape);
    const x = av[broadcastIndex(idx, a.shape)];
    const y = bv[broadcastIndex(idx, b.shape)];
    return op === 'add' ? x + y : op === 'sub' ? x - y : x * y;
  });
  return { shape, data };
}

function jsSum(x: Tensor, axes: readonly number[]): number[] {
  const keep = x.shape.map((n, d) => (axes.includes(d) ? 1 : n));
  const out = new Array<number>(size(keep)).fill(0);
  const xv = values(x);
  xv.forEach((v, i) => (out[broadcastIndex(unravel(i, x.shape), keep)] += v));
  return out;
}

function closeTo(actual: ArrayLike<number>, expected: ArrayLike<number>, tol: number, ctx: string): void {
  expect(actual.length, ctx).toBe(expected.length);
  const err = maxAbsDiff(actual, expected);
  expect(err, ctx).toBeLessThanOrEqual(tol);
}

// ---- forward values ----

const BINARY_CASES: [number[], number[]][] = [
  [[3, 1, 5], [4, 1]],
  [[], [2, 3]],
  [[2, 3], []],
  [[], []],
  [[1], [7]],
  [[5, 1], [1, 6]],
  [[2, 3, 4], [3, 4]],
  [[17, 13], [17, 13]],
  [[2, 1, 3, 1, 2], [4, 3, 1, 1]],
  [[0, 3], [3]],
  [[2, 0, 3], [1, 3]],
  [[301, 257], [257]], // row broadcast, several tasks
  [[129, 1], [129, 300]], // column broadcast, several tasks
];

describe('add / sub / mul forward', () => {
  for (const op of ['add', 'sub', 'mul'] as const) {
    for (const [sa, sb] of BINARY_CASES) {
      for (const dtype of ['float64', 'float32'] as const) {
        const label = `${op} [${sa}] [${sb}] ${dtype}`;
        it(label, () => {
          const rng = rngFor(label);
          const a = randTensor(rng, sa, { dtype });
          const b = randTensor(rng, sb, { dtype });
          const y = ops[op](a, b);
          const ref = jsBinary(op, a, b);
          expect(y.shape, where(label)).toEqual(ref.shape);
          expect(y.dtype).toBe(dtype);
          // Inputs are exactly representable, so one rounding to float32 is all the difference.
          closeTo(values(y), ref.data, dtype === 'float64' ? 0 : 1e-5, where(label));
        });
      }
    }
  }

  it('matches the plain-loop reference kernel bitwise at random ranks', () => {
    const rng = rngFor('binary vs reference');
    for (let iter = 0; iter < 40; iter++) {
      const rank = rng.int(1, 6);
      const shape = Array.from({ length: rank }, () => rng.int(1, 6));
      const n = size(shape);
      const a = new Float32Array(n).map(() => rng.normal());
      const b = new Float32Array(n).map(() => rng.normal());
      const strides = shape.map((_, d) => size(shape.slice(d + 1)));
      const bStrides = strides.map((s) => (rng.uniform() < 0.4 ? 0 : s));
      const fast = new Float32Array(n).fill(NaN);
      const slow = new Float32Array(n).fill(NaN);
      const args = { op: 'mul' as const, a, b, shape, aStrides: strides, bStrides };
      addon.elementwiseBinary({ ...args, out: fast });
      addon.referenceElementwiseBinary({ ...args, out: slow });
      expect(firstBitwiseDifference(fast, slow), where(`shape ${shape} b ${bStrides}`)).toBe(-1);
    }
  });
});

describe('scale forward', () => {
  it('y = s * x + offset', () => {
    const x = tensor([1, -2, 3.5], { dtype: 'float64' });
    expect(values(ops.scale(x, 2))).toEqual([2, -4, 7]);
    expect(values(ops.scale(x, -0.5, 1))).toEqual([0.5, 2, -0.75]);
    expect(ops.scale(tensor(3, { dtype: 'float64' }), 2).shape).toEqual([]);
    expect(ops.scale(tensor([], { shape: [0, 2] }), 2).shape).toEqual([0, 2]);
  });
});

describe('sum / mean forward', () => {
  const cases: { shape: number[]; axis?: number | number[]; keepDim?: boolean }[] = [
    { shape: [3, 4, 5] },
    { shape: [3, 4, 5], axis: 0 },
    { shape: [3, 4, 5], axis: -1 },
    { shape: [3, 4, 5], axis: 1, keepDim: true },
    { shape: [3, 4, 5], axis: [0, 2] },
    { shape: [3, 4, 5], axis: [2, 0], keepDim: true },
    { shape: [2, 1, 3, 1, 4], axis: [1, 2, 4] },
    { shape: [7] },
    { shape: [] },
    { shape: [1, 1] },
    { shape: [40000, 3], axis: 0 }, // a long axis: partial sums in chunks
    { shape: [3, 70001], axis: 1 },
    { shape: [2, 40, 2100], axis: 1 }, // column blocks and row chunks
  ];
  for (const c of cases) {
    for (const dtype of ['float64', 'float32'] as const) {
      const label = `sum/mean [${c.shape}] axis=${JSON.stringify(c.axis)} keepDim=${c.keepDim} ${dtype}`;
      it(label, () => {
        const rng = rngFor(label);
        const x = randTensor(rng, c.shape, { dtype });
        const opts = { axis: c.axis, keepDim: c.keepDim };
        const axes = c.axis === undefined ? c.shape.map((_, d) => d) : [c.axis].flat().map((a) => (a < 0 ? a + c.shape.length : a));
        const ref = jsSum(x, axes);
        const count = axes.reduce((p, a) => p * c.shape[a], 1);
        const expectShape = c.keepDim ? c.shape.map((n, d) => (axes.includes(d) ? 1 : n)) : c.shape.filter((_, d) => !axes.includes(d));
        const s = ops.sum(x, opts);
        const m = ops.mean(x, opts);
        expect(s.shape).toEqual(expectShape);
        expect(m.shape).toEqual(expectShape);
        // float32 sums of n terms: allow n ulps of the magnitude of the summands.
        const tol = dtype === 'float64' ? 1e-9 * count : 1e-6 * count;
        closeTo(values(s), ref, tol, where(label));
        closeTo(values(m), ref.map((v) => v / count), tol / count, where(label));
      });
    }
  }

  it('reduces empty tensors: sum 0, mean NaN', () => {
    const x = tensor([], { shape: [3, 0], dtype: 'float64' });
    expect(values(ops.sum(x, { axis: 1 }))).toEqual([0, 0, 0]);
    expect(ops.sum(x, { axis: 0 }).shape).toEqual([0]);
    expect(values(ops.sum(x))).toEqual([0]);
    expect(values(ops.mean(x))[0]).toBeNaN();
  });

  it('matches the plain-loop reference kernel at random ranks', () => {
    const rng = rngFor('reduce vs reference');
    for (let iter = 0; iter < 40; iter++) {
      const rank = rng.int(1, 7);
      const shape = Array.from({ length: rank }, () => rng.int(1, 5));
      const outShape = shape.map((n) => (rng.uniform() < 0.5 ? 1 : n));
      const x = new Float64Array(size(shape)).map(() => rng.normal());
      const fast = new Float64Array(size(outShape)).fill(NaN);
      const slow = new Float64Array(size(outShape)).fill(NaN);
      addon.reduceSum({ x, shape, outShape, out: fast });
      addon.referenceReduceSum({ x, shape, outShape, out: slow });
      expect(maxAbsDiff(fast, slow), where(`${shape} -> ${outShape}`)).toBeLessThanOrEqual(1e-12);
    }
  });
});

describe('broadcastTo forward', () => {
  for (const [from, to] of [
    [[4, 5], [3, 4, 5]],
    [[1], [2, 3]],
    [[], [2, 2]],
    [[3, 1], [3, 6]],
    [[2, 1, 3], [2, 4, 3]],
    [[5], [0, 5]],
  ] as [number[], number[]][]) {
    const label = `broadcastTo [${from}] -> [${to}]`;
    it(label, () => {
      const x = randTensor(rngFor(label), from);
      const y = ops.broadcastTo(x, to);
      expect(y.shape).toEqual(to);
      const xv = values(x);
      expect(values(y)).toEqual(Array.from({ length: size(to) }, (_, i) => xv[broadcastIndex(unravel(i, to), from)]));
    });
  }
});

// ---- gradients ----

describe('float64 gradchecks', () => {
  const GRAD_CASES: [number[], number[]][] = [
    [[3, 1, 5], [4, 1]],
    [[], [2, 3]],
    [[2, 3], []],
    [[1], [1]],
    [[5, 1], [1, 3]],
    [[2, 3, 4], [3, 4]],
    [[3, 4], [3, 4]],
  ];
  for (const op of ['add', 'sub', 'mul'] as const) {
    for (const [sa, sb] of GRAD_CASES) {
      const label = `${op} [${sa}] [${sb}]`;
      it(label, () => {
        const rng = rngFor(label);
        const a = randTensor(rng, sa, { requiresGrad: true });
        const b = randTensor(rng, sb, { requiresGrad: true });
        expect(gradcheck((x, y) => ops[op](x, y), [a, b], TOL), where(label)).toBe(true);
      });
    }
    it(`${op} with the same tensor twice`, () => {
      const x = randTensor(rngFor(`${op} xx`), [2, 3], { requiresGrad: true });
      expect(gradcheck((t) => ops[op](t, t), [x], TOL)).toBe(true);
    });
  }

  it('only one input requiring grad', () => {
    const rng = rngFor('one input');
    const a = randTensor(rng, [3, 4], { requiresGrad: true });
    const b = randTensor(rng, [4]);
    expect(gradcheck((x) => ops.mul(x, b), [a], TOL)).toBe(true);
    expect(gradcheck((x) => ops.sub(b, x), [a], TOL)).toBe(true);
  });

  it('scale', () => {
    const x = randTensor(rngFor('scale'), [3, 5], { requiresGrad: true });
    expect(gradcheck((t) => ops.scale(t, -1.7, 0.25), [x], TOL)).toBe(true);
  });

  for (const [shape, axis, keepDim] of [
    [[3, 4, 5], undefined, false],
    [[3, 4, 5], 1, false],
    [[3, 4, 5], [0, 2], true],
    [[2, 1, 3], -1, true],
    [[], undefined, false],
    [[5], 0, false],
  ] as [number[], number | number[] | undefined, boolean][]) {
    for (const op of ['sum', 'mean'] as const) {
      const label = `${op} [${shape}] axis=${JSON.stringify(axis)} keepDim=${keepDim}`;
      it(label, () => {
        const x = randTensor(rngFor(label), shape, { requiresGrad: true });
        expect(gradcheck((t) => ops[op](t, { axis, keepDim }), [x], TOL), where(label)).toBe(true);
      });
    }
  }

  for (const [from, to] of [
    [[4, 5], [3, 4, 5]],
    [[], [2, 3]],
    [[3, 1], [2, 3, 4]],
    [[1, 1], [1, 1]],
  ] as [number[], number[]][]) {
    it(`broadcastTo [${from}] -> [${to}]`, () => {
      const x = randTensor(rngFor(`bt ${from} ${to}`), from, { requiresGrad: true });
      expect(gradcheck((t) => ops.broadcastTo(t, to), [x], TOL)).toBe(true);
    });
  }

  it('a chain: mean((a + b) * c - broadcastTo(p))', () => {
    const rng = rngFor('chain');
    const a = randTensor(rng, [2, 3, 4], { requiresGrad: true });
    const b = randTensor(rng, [4], { requiresGrad: true });
    const c = randTensor(rng, [3, 1], { requiresGrad: true });
    const p = randTensor(rng, [3, 4], { requiresGrad: true });
    const f = (w: Tensor, x: Tensor, y: Tensor, z: Tensor) =>
      ops.mean(ops.sub(ops.mul(ops.add(w, x), y), ops.broadcastTo(z, [2, 3, 4])), { axis: 1 });
    expect(gradcheck(f, [a, b, c, p], TOL)).toBe(true);
  });
});

// ---- determinism ----

describe('bitwise determinism of reductions across thread counts', () => {
  let saved = 0;
  beforeAll(() => {
    saved = getNumThreads();
  });
  afterAll(() => setNumThreads(saved));

  for (const [shape, axis] of [
    [[3, 100003], 1],
    [[70001, 7], 0],
    [[4, 600, 300], [0, 1]],
    [[250001], undefined],
  ] as [number[], number | number[] | undefined][]) {
    const label = `sum [${shape}] axis=${JSON.stringify(axis)}`;
    it(label, () => {
      const runs = [1, 2, 3].map((n) => {
        setNumThreads(n);
        const x = randTensor(rngFor(label), shape, { dtype: 'float32', requiresGrad: true });
        const b = randTensor(rngFor(`${label} b`), shape.slice(-1), { dtype: 'float32', requiresGrad: true });
        const y = ops.sum(ops.add(x, b), { axis });
        const g = randTensor(rngFor(`${label} g`), y.shape, { dtype: 'float32' });
        y.backward(g);
        return [y.dataSync(), b.grad!.dataSync()] as (Float32Array | Float64Array)[];
      });
      for (const r of runs.slice(1)) {
        expect(firstBitwiseDifference(r[0], runs[0][0]), where(label)).toBe(-1);
        expect(firstBitwiseDifference(r[1], runs[0][1]), where(`${label} bias grad`)).toBe(-1);
      }
    });
  }
});

// ---- validation ----

describe('validation', () => {
  const f32 = tensor([1, 2, 3], { dtype: 'float32' });
  const f64 = tensor([1, 2, 3], { dtype: 'float64' });
  const m = tensor([1, 0, 1], { dtype: 'bool' });

  it('refuses mixed dtypes, bool tensors and non-tensors', () => {
    expectLunaError(() => ops.add(f32, f64), 'ERR_DTYPE', /add: b\.dtype expected float32.*got float64/);
    expectLunaError(() => ops.mul(m, m), 'ERR_DTYPE', /mul: a\.dtype expected float32 or float64, got bool/);
    expectLunaError(() => ops.sub(f32, 2 as unknown as Tensor), 'ERR_ARGUMENT', /sub: b expected a Tensor, got 2/);
    expectLunaError(() => ops.sum(m), 'ERR_DTYPE', /sum: x\.dtype/);
  });

  it('refuses shapes that do not broadcast', () => {
    const a = tensor([1, 2, 3, 4, 5, 6], { shape: [2, 3] });
    const b = tensor([1, 2], { shape: [2] });
    expectLunaError(() => ops.add(a, b), 'ERR_SHAPE', /add: b\.shape expected a shape broadcastable with a\.shape \[2,3\].*got \[2\]/);
    expectLunaError(() => ops.broadcastTo(a, [3, 3]), 'ERR_SHAPE', /broadcastTo: shape expected .*\[2,3\].*got \[3,3\]/);
    expectLunaError(() => ops.broadcastTo(a, [3]), 'ERR_SHAPE', /broadcastTo: shape/);
    expectLunaError(() => ops.broadcastTo(a, [2, -3]), 'ERR_ARGUMENT', /broadcastTo: shape\[1\]/);
  });

  it('refuses bad scale arguments', () => {
    expectLunaError(() => ops.scale(f32, Number.NaN), 'ERR_ARGUMENT', /scale: s expected a finite number, got NaN/);
    expectLunaError(() => ops.scale(f32, 1, Infinity), 'ERR_ARGUMENT', /scale: offset expected a finite number/);
    expectLunaError(() => ops.scale(f32, '2' as unknown as number), 'ERR_ARGUMENT', /scale: s/);
  });

  it('refuses bad reduction options', () => {
    const x = tensor([1, 2, 3, 4, 5, 6], { shape: [2, 3] });
    expectLunaError(() => ops.sum(x, { axis: 2 }), 'ERR_ARGUMENT', /sum: options\.axis expected an integer axis in \[-2, 1\], got 2/);
    expectLunaError(() => ops.mean(x, { axis: [0, -2] }), 'ERR_ARGUMENT', /mean: options\.axis expected distinct axes/);
    expectLunaError(() => ops.sum(x, { axis: [] }), 'ERR_ARGUMENT', /sum: options\.axis/);
    expectLunaError(() => ops.sum(x, { axis: 0.5 }), 'ERR_ARGUMENT', /options\.axis/);
    expectLunaError(() => ops.sum(x, { keepdim: true } as never), 'ERR_ARGUMENT', /unknown key "keepdim"/);
    expectLunaError(() => ops.sum(x, { keepDim: 1 } as never), 'ERR_ARGUMENT', /options\.keepDim expected a boolean/);
  });

  it('refuses disposed tensors', () => {
    const x = tensor([1, 2]);
    x.dispose();
    expectLunaError(() => ops.add(x, f32), 'ERR_DISPOSED', /add: a has been disposed/);
  });
});

describe('the raw addon refuses bad arguments with a JS exception', () => {
  const a = new Float32Array(6);
  const out = new Float32Array(6);
  const cases: [string, () => void][] = [
    ['no object', () => (addon.elementwiseBinary as unknown as () => void)()],
    ['bad op', () => addon.elementwiseBinary({ op: 'div' as 'add', a, b: a, out, shape: [6], aStrides: [1], bStrides: [1] })],
    ['a too short', () => addon.elementwiseBinary({ op: 'add', a: a.subarray(1), b: a, out, shape: [6], aStrides: [1], bStrides: [1] })],
    ['stride too large', () => addon.elementwiseBinary({ op: 'add', a, b: a, out, shape: [2, 3], aStrides: [3, 1], bStrides: [4, 1] })],
    ['negative stride', () => addon.stridedCopy({ x: a, out, shape: [6], strides: [-1] })],
    ['mixed types', () => addon.stridedCopy({ x: a, out: new Float64Array(6), shape: [6], strides: [1] })],
    ['out too short', () => addon.stridedCopy({ x: a, out: out.subarray(1), shape: [6], strides: [1] })],
    ['rank 9', () => addon.stridedCopy({ x: a, out, shape: [1, 1, 1, 1, 1, 1, 1, 1, 6], strides: [0, 0, 0, 0, 0, 0, 0, 0, 1] })],
    ['strides length', () => addon.stridedCopy({ x: a, out, shape: [2, 3], strides: [3] })],
    ['zero dim', () => addon.stridedCopy({ x: a, out, shape: [0, 6], strides: [6, 1] })],
    ['huge shape', () => addon.stridedCopy({ x: a, out, shape: [65536, 65536], strides: [0, 0] })],
    ['bad outShape', () => addon.reduceSum({ x: a, out: new Float32Array(2), shape: [2, 3], outShape: [2, 2] })],
    ['reduce x length', () => addon.reduceSum({ x: a, out: new Float32Array(2), shape: [2, 4], outShape: [2, 1] })],
    ['scale length', () => addon.scaleShift({ x: a, out: new Float32Array(5), scale: 1, offset: 0 })],
    ['scale NaN', () => addon.scaleShift({ x: a, out, scale: NaN, offset: 0 })],
    ['blocks src', () => addon.copyBlocks({ src: a, dst: out, rows: 2, cols: 3, srcStride: 4, srcOffset: 0, dstStride: 3, dstOffset: 0 })],
    ['blocks dst', () => addon.copyBlocks({ src: a, dst: out, rows: 1, cols: 3, srcStride: 3, srcOffset: 0, dstStride: 3, dstOffset: 4 })],
    ['blocks overlap', () => addon.copyBlocks({ src: a, dst: out, rows: 2, cols: 3, srcStride: 3, srcOffset: 0, dstStride: 2, dstOffset: 0 })],
    ['not an array', () => addon.stridedCopy({ x: [1, 2] as unknown as Float32Array, out, shape: [2], strides: [1] })],
  ];
  for (const [label, fn] of cases) {
    it(label, () => {
      let caught: unknown = null;
      try {
        fn();
      } catch (err) {
        caught = err;
      }
      expect(caught instanceof TypeError || caught instanceof RangeError, String(caught)).toBe(true);
    });
  }
});
