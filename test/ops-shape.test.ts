// Layout ops: reshape (a view sharing storage), transpose, permute, splitHeads / mergeHeads,
// concat and slice. Forward values against plain JS index arithmetic, the strided kernel
// against its plain-loop reference (both the run-copy and the tiled-transpose paths), float64
// gradchecks at odd sizes, and validation errors.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { gradcheck, ops, tensor, type Tensor } from '../lib/index';
import { loadNative, setPoisonOutputs } from '../lib/testing';
import { expectLunaError, firstBitwiseDifference, randTensor, rngFor, values, where } from './helpers';
import { shapeSize as size, unravel } from './helpers';

const TOL = { eps: 1e-6, atol: 1e-7, rtol: 1e-6 };
const addon = loadNative();

beforeAll(() => setPoisonOutputs(true));
afterAll(() => setPoisonOutputs(false));

function ravel(idx: readonly number[], shape: readonly number[]): number {
  return idx.reduce((flat, v, d) => flat * shape[d] + v, 0);
}

/** Plain JS permute: result dim i is input dim dims[i]. */
function jsPermute(x: Tensor, dims: readonly number[]): number[] {
  const xv = values(x);
  const outShape = dims.map((d) => x.shape[d]);
  return Array.from({ length: size(outShape) }, (_, i) => {
    const o = unravel(i, outShape);
    const idx = new Array<number>(dims.length);
    dims.forEach((d, k) => (idx[d] = o[k]));
    return xv[ravel(idx, x.shape)];
  });
}

describe('reshape', () => {
  it('shares the storage and infers -1', () => {
    const x = tensor([1, 2, 3, 4, 5, 6], { shape: [2, 3], dtype: 'float64' });
    const y = ops.reshape(x, [3, -1]);
    expect(y.shape).toEqual([3, 2]);
    expect(values(y)).toEqual([1, 2, 3, 4, 5, 6]);
    expect(ops.reshape(x, [6]).shape).toEqual([6]);
    expect(ops.reshape(tensor(5), [1, 1]).shape).toEqual([1, 1]);
    expect(ops.reshape(tensor([], { shape: [0, 3] }), [3, 0]).shape).toEqual([3, 0]);
    // The view keeps the data alive after the original is disposed.
    x.dispose();
    expect(values(y)).toEqual([1, 2, 3, 4, 5, 6]);
    const m = tensor([1, 0, 1, 1], { dtype: 'bool' });
    expect(ops.reshape(m, [2, 2]).dtype).toBe('bool');
  });

  it('gradcheck, and a gradient that is not shared with the caller', () => {
    const x = randTensor(rngFor('reshape'), [2, 3, 2], { requiresGrad: true });
    expect(gradcheck((t) => ops.reshape(t, [3, 4]), [x], TOL)).toBe(true);
    expect(gradcheck((t) => ops.add(ops.reshape(t, [4, 3]), ops.reshape(t, [-1, 3])), [x], TOL)).toBe(true);
    const g = tensor(new Float64Array(12).fill(1), { shape: [12], dtype: 'float64' });
    ops.reshape(x, [12]).backward(g);
    ops.reshape(x, [12]).backward(g);
    expect(values(g)).toEqual(new Array(12).fill(1));
    expect(values(x.grad!)).toEqual(new Array(12).fill(2));
  });

  it('refuses bad shapes', () => {
    const x = tensor([1, 2, 3, 4, 5, 6], { shape: [2, 3] });
    expectLunaError(() => ops.reshape(x, [4, 2]), 'ERR_SHAPE', /reshape: shape expected 6 elements .*got \[4,2\] \(8 elements\)/);
    expectLunaError(() => ops.reshape(x, [-1, -1]), 'ERR_ARGUMENT', /reshape: shape expected at most one -1/);
    expectLunaError(() => ops.reshape(x, [4, -1]), 'ERR_SHAPE', /reshape: shape expected a shape that -1 can complete/);
    expectLunaError(() => ops.reshape(x, [2, 1.5]), 'ERR_ARGUMENT', /reshape: shape\[1\]/);
    expectLunaError(() => ops.reshape(x, 6 as unknown as number[]), 'ERR_ARGUMENT', /reshape: shape expected an array/);
  });
});

describe('transpose / permute', () => {
  const cases: [number[], number[]][] = [
    [[3, 5], [1, 0]],
    [[37, 65], [1, 0]], // tiled transpose path
    [[2, 3, 4], [2, 0, 1]],
    [[2, 3, 4, 5], [0, 2, 1, 3]],
    [[3, 1, 4, 1, 5], [4, 3, 2, 1, 0]],
    [[7], [0]],
    [[], []],
    [[2, 0, 3], [2, 1, 0]],
    [[2, 9, 33, 6], [0, 3, 1, 2]],
  ];
  for (const [shape, dims] of cases) {
    const label = `permute [${shape}] by [${dims}]`;
    it(label, () => {
      const x = randTensor(rngFor(label), shape, { dtype: 'float32' });
      const y = ops.permute(x, dims);
      expect(y.shape).toEqual(dims.map((d) => shape[d]));
      expect(values(y), where(label)).toEqual(jsPermute(x, dims));
    });
  }

  it('transpose swaps two dims, negative axes allowed', () => {
    const x = randTensor(rngFor('transpose'), [2, 3, 4]);
    const y = ops.transpose(x, 0, -1);
    expect(y.shape).toEqual([4, 3, 2]);
    expect(values(y)).toEqual(jsPermute(x, [2, 1, 0]));
  });

  it('the strided kernel matches its plain-loop reference at random ranks', () => {
    const rng = rngFor('strided vs reference');
    for (let iter = 0; iter < 60; iter++) {
      const rank = rng.int(1, 8);
      const inShape = Array.from({ length: rank }, () => rng.int(1, iter % 4 === 0 ? 40 : 5));
      if (size(inShape) > 200000) continue;
      const order = inShape.map((_, d) => d).sort(() => rng.uniform() - 0.5);
      const inStrides = inShape.map((_, d) => size(inShape.slice(d + 1)));
      const shape = order.map((d) => inShape[d]);
      // Some dims broadcast (stride 0) as well.
      const strides = order.map((d) => (rng.uniform() < 0.15 ? 0 : inStrides[d]));
      const x = new Float64Array(size(inShape)).map(() => rng.normal());
      const fast = new Float64Array(size(shape)).fill(NaN);
      const slow = new Float64Array(size(shape)).fill(NaN);
      addon.stridedCopy({ x, shape, strides, out: fast });
      addon.referenceStridedCopy({ x, shape, strides, out: slow });
      expect(firstBitwiseDifference(fast, slow), where(`${shape} strides ${strides}`)).toBe(-1);
    }
  });

  for (const [shape, dims] of [
    [[3, 4], [1, 0]],
    [[2, 3, 5], [1, 2, 0]],
    [[2, 1, 3, 2], [3, 0, 2, 1]],
  ] as [number[], number[]][]) {
    it(`gradcheck permute [${shape}] by [${dims}]`, () => {
      const x = randTensor(rngFor(`g ${shape}`), shape, { requiresGrad: true });
      expect(gradcheck((t) => ops.permute(t, dims), [x], TOL)).toBe(true);
    });
  }
  it('gradcheck transpose', () => {
    const x = randTensor(rngFor('g transpose'), [3, 2, 5], { requiresGrad: true });
    expect(gradcheck((t) => ops.transpose(t, 2, 1), [x], TOL)).toBe(true);
  });

  it('refuses bad dims', () => {
    const x = tensor([1, 2, 3, 4, 5, 6], { shape: [2, 3] });
    expectLunaError(() => ops.permute(x, [0]), 'ERR_ARGUMENT', /permute: dims expected a permutation of the 2 axes/);
    expectLunaError(() => ops.permute(x, [1, 1]), 'ERR_ARGUMENT', /permute: dims expected a permutation/);
    expectLunaError(() => ops.permute(x, [0, 2]), 'ERR_ARGUMENT', /permute: dims\[1\] expected an integer axis in \[-2, 1\], got 2/);
    expectLunaError(() => ops.transpose(x, 0, 5), 'ERR_ARGUMENT', /transpose: dim1 expected an integer axis/);
  });
});

describe('splitHeads / mergeHeads', () => {
  for (const [B, n, h, dh] of [
    [2, 5, 3, 4],
    [1, 1, 1, 7],
    [3, 7, 4, 1],
    [2, 300, 8, 64], // several tasks
  ]) {
    const label = `B=${B} n=${n} h=${h} dh=${dh}`;
    it(`split and merge ${label}`, () => {
      const x = randTensor(rngFor(label), [B, n, h * dh], { dtype: 'float32' });
      const y = ops.splitHeads(x, h);
      expect(y.shape).toEqual([B, h, n, dh]);
      // Head i holds channels [i*dh, (i+1)*dh).
      const xv = values(x);
      const yv = values(y);
      for (let e = 0; e < yv.length; e += Math.max(1, Math.floor(yv.length / 997))) {
        const [b, i, t, c] = unravel(e, [B, h, n, dh]);
        expect(yv[e]).toBe(xv[(b * n + t) * h * dh + i * dh + c]);
      }
      const z = ops.mergeHeads(y);
      expect(z.shape).toEqual([B, n, h * dh]);
      expect(firstBitwiseDifference(z.dataSync() as Float32Array, x.dataSync() as Float32Array)).toBe(-1);
    });
  }

  it('gradchecks', () => {
    const x = randTensor(rngFor('split g'), [2, 3, 6], { requiresGrad: true });
    expect(gradcheck((t) => ops.splitHeads(t, 3), [x], TOL)).toBe(true);
    const y = randTensor(rngFor('merge g'), [2, 3, 2, 5], { requiresGrad: true });
    expect(gradcheck((t) => ops.mergeHeads(t), [y], TOL)).toBe(true);
  });

  it('refuses bad shapes', () => {
    const x = tensor(new Float32Array(2 * 3 * 6), { shape: [2, 3, 6] });
    expectLunaError(() => ops.splitHeads(x, 4), 'ERR_SHAPE', /splitHeads: x\.shape expected \[B,n,d\] with d divisible by h = 4, got \[2,3,6\]/);
    expectLunaError(() => ops.splitHeads(x, 0), 'ERR_ARGUMENT', /splitHeads: h expected a positive integer, got 0/);
    expectLunaError(() => ops.splitHeads(ops.reshape(x, [36]), 2), 'ERR_SHAPE', /splitHeads: x\.shape expected \[B,n,d\] \(rank 3\)/);
    expectLunaError(() => ops.mergeHeads(x), 'ERR_SHAPE', /mergeHeads: x\.shape expected \[B,h,n,dh\] \(rank 4\), got \[2,3,6\]/);
  });
});

describe('concat / slice', () => {
  it('concat along each axis', () => {
    const rng = rngFor('concat');
    const a = randTensor(rng, [2, 3, 4]);
    const b = randTensor(rng, [2, 1, 4]);
    const c = randTensor(rng, [2, 5, 4]);
    const y = ops.concat([a, b, c], 1);
    expect(y.shape).toEqual([2, 9, 4]);
    const parts = [a, b, c].map((t) => values(t));
    const expected: number[] = [];
    for (let i = 0; i < 2; i++) for (const [k, t] of [a, b, c].entries()) expected.push(...parts[k].slice(i * t.shape[1] * 4, (i + 1) * t.shape[1] * 4));
    expect(values(y)).toEqual(expected);
    expect(values(ops.concat([a, a], 0))).toEqual([...parts[0], ...parts[0]]);
    expect(ops.concat([a, a], -1).shape).toEqual([2, 3, 8]);
    expect(values(ops.concat([a], 2))).toEqual(parts[0]);
    const empty = tensor([], { shape: [2, 0, 4], dtype: 'float64' });
    expect(values(ops.concat([empty, a, empty], 1))).toEqual(parts[0]);
  });

  it('slice with Python-style indices', () => {
    const x = randTensor(rngFor('slice'), [3, 7, 2]);
    const xv = values(x);
    const pick = (s: number, e: number) => {
      const out: number[] = [];
      for (let i = 0; i < 3; i++) out.push(...xv.slice((i * 7 + s) * 2, (i * 7 + e) * 2));
      return out;
    };
    expect(values(ops.slice(x, 1, 2, 5))).toEqual(pick(2, 5));
    expect(values(ops.slice(x, 1, -3))).toEqual(pick(4, 7));
    expect(values(ops.slice(x, -2, 1, -1))).toEqual(pick(1, 6));
    expect(ops.slice(x, 1, 3, 3).shape).toEqual([3, 0, 2]);
    expect(values(ops.slice(x, 0, 1, 2))).toEqual(xv.slice(14, 28));
  });

  it('gradchecks', () => {
    const rng = rngFor('concat g');
    const a = randTensor(rng, [2, 3, 2], { requiresGrad: true });
    const b = randTensor(rng, [2, 1, 2], { requiresGrad: true });
    const c = randTensor(rng, [2, 2, 2], { requiresGrad: true });
    expect(gradcheck((x, y, z) => ops.concat([x, y, z, x], 1), [a, b, c], TOL)).toBe(true);
    expect(gradcheck((x) => ops.slice(x, 1, -2, 3), [a], TOL)).toBe(true);
    expect(gradcheck((x) => ops.slice(x, 2, 1), [a], TOL)).toBe(true);
  });

  it('refuses bad arguments', () => {
    const a = tensor(new Float32Array(6), { shape: [2, 3] });
    const b = tensor(new Float32Array(4), { shape: [2, 2] });
    expectLunaError(() => ops.concat([], 0), 'ERR_ARGUMENT', /concat: tensors expected a non-empty array/);
    expectLunaError(() => ops.concat([a, b], 0), 'ERR_SHAPE', /concat: tensors\[1\]\.shape expected \[\*,3\] .*got \[2,2\]/);
    expectLunaError(() => ops.concat([a, tensor(new Float64Array(6), { shape: [2, 3] })], 0), 'ERR_DTYPE', /concat: tensors\[1\]\.dtype/);
    expectLunaError(() => ops.concat([a, b], 2), 'ERR_ARGUMENT', /concat: axis expected an integer axis in \[-2, 1\]/);
    expectLunaError(() => ops.slice(a, 1, 4), 'ERR_ARGUMENT', /slice: start expected an integer in \[-3, 3\], got 4/);
    expectLunaError(() => ops.slice(a, 1, 2, 1), 'ERR_ARGUMENT', /slice: end expected an index at or after start \(2\)/);
    expectLunaError(() => ops.slice(a, 2, 0, 1), 'ERR_ARGUMENT', /slice: axis/);
  });
});
