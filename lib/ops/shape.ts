/**
 * Layout ops: `reshape` (a view sharing the storage), and the copying `transpose`, `permute`,
 * `splitHeads` / `mergeHeads` (the per-layer head folding of Luna attention), `concat` and
 * `slice`, each with its backward. The copies run in the addon's strided kernels, one parallel
 * pass each.
 *
 * @packageDocumentation
 */
import { checkInteger, describe, formatShape, mismatch } from '../errors';
import { DType, MAX_ELEMENTS, allocate, shapeSize } from '../dtype';
import { Tensor, checkTensor, viewOf } from '../tensor';
import { FloatArray, loadNative } from '../native';
import { checkAxis, copyBuffer, dataOf, floatInput, outputBuffer, record, runKernel, wrap, zeroBuffer } from './common';
import { contiguousStrides, stridedCopyData } from './elementwise';

/** A copy of `x` (of `shape`) with its dims reordered: result dim i is input dim dims[i]. */
function permuteData(where: string, x: FloatArray, shape: readonly number[], dims: readonly number[], dtype: DType): FloatArray {
  const strides = contiguousStrides(shape);
  return stridedCopyData(
    where,
    x,
    dims.map((d) => shape[d]),
    dims.map((d) => strides[d]),
    dtype,
  );
}

/** The inverse permutation: where each input dim went. */
function inversePermutation(dims: readonly number[]): number[] {
  const inv = new Array<number>(dims.length);
  dims.forEach((d, i) => (inv[d] = i));
  return inv;
}

/**
 * `x` with a new shape of the same element count; one entry may be -1 (inferred). The result
 * shares x's storage (no copy). Its gradient is the incoming gradient reshaped back.
 */
export function reshape(x: Tensor, shape: readonly number[]): Tensor {
  const op = 'reshape';
  // Any dtype: a view moves no data (bool masks reshape too).
  const t = checkTensor(op, 'x', x);
  if (!Array.isArray(shape)) {
    throw mismatch('ERR_ARGUMENT', op, 'shape', 'an array of non-negative integers (one may be -1)', describe(shape));
  }
  const dims = (shape as unknown[]).map((v, i) => checkInteger(op, `shape[${i}]`, v, -1, MAX_ELEMENTS));
  const inferred = dims.indexOf(-1);
  if (inferred !== dims.lastIndexOf(-1)) {
    throw mismatch('ERR_ARGUMENT', op, 'shape', 'at most one -1', formatShape(dims));
  }
  const known = dims.reduce((p, n) => (n === -1 ? p : p * n), 1);
  if (inferred >= 0) {
    if (known === 0 || t.size % known !== 0) {
      throw mismatch('ERR_SHAPE', op, 'shape', `a shape that -1 can complete to ${t.size} elements (x.shape ${formatShape(t.shape)})`, formatShape(dims));
    }
    dims[inferred] = t.size / known;
  } else if (known !== t.size) {
    throw mismatch('ERR_SHAPE', op, 'shape', `${t.size} elements (x.shape ${formatShape(t.shape)})`, `${formatShape(dims)} (${known} elements)`);
  }
  const view = viewOf(t, dims);
  return record(view, op, [t], [], (g) => {
    // A copy, not a view of g: the engine may add into the gradient it is handed, and g's
    // buffer may belong to someone else.
    const where = `${op} (backward)`;
    const grad = outputBuffer(where, t.dtype, t.size, t.device);
    copyBuffer(where, grad, dataOf(g, where, 'gradient'));
    return [wrap(grad, t.shape, g)];
  });
}

function permuteChecked(op: string, t: Tensor, dims: readonly number[]): Tensor {
  const outShape = dims.map((d) => t.shape[d]);
  const out = permuteData(op, dataOf(t, op, 'x'), t.shape, dims, t.dtype);
  return record(wrap(out, outShape, t), op, [t], [], (g) => {
    const where = `${op} (backward)`;
    return [wrap(permuteData(where, dataOf(g, where, 'gradient'), outShape, inversePermutation(dims), t.dtype), t.shape, t)];
  });
}

/**
 * A copy of `x` with its dims reordered: result dim i is x's dim `dims[i]`. `dims` is a
 * permutation of the axes (negative axes count from the end).
 */
export function permute(x: Tensor, dims: readonly number[]): Tensor {
  const op = 'permute';
  const t = floatInput(op, 'x', x);
  if (!Array.isArray(dims) || dims.length !== t.rank) {
    throw mismatch('ERR_ARGUMENT', op, 'dims', `a permutation of the ${t.rank} axes of x ${formatShape(t.shape)}`, describe(dims));
  }
  const axes = (dims as unknown[]).map((d, i) => checkAxis(op, `dims[${i}]`, d, t.rank));
  if (new Set(axes).size !== axes.length) {
    throw mismatch('ERR_ARGUMENT', op, 'dims', `a permutation of the ${t.rank} axes (each once)`, describe(dims));
  }
  return permuteChecked(op, t, axes);
}

/** A copy of `x` with dims `dim0` and `dim1` swapped (negative axes count from the end). */
export function transpose(x: Tensor, dim0: number, dim1: number): Tensor {
  const op = 'transpose';
  const t = floatInput(op, 'x', x);
  const d0 = checkAxis(op, 'dim0', dim0, t.rank);
  const d1 = checkAxis(op, 'dim1', dim1, t.rank);
  const axes = t.shape.map((_, d) => d);
  axes[d0] = d1;
  axes[d1] = d0;
  return permuteChecked(op, t, axes);
}

/**
 * Splits the channels of `x` [B,n,d] into `h` heads: [B,h,n,d/h], head i holding channels
 * [i*d/h, (i+1)*d/h). One parallel pass. `h` must divide d.
 */
export function splitHeads(x: Tensor, h: number): Tensor {
  const op = 'splitHeads';
  const t = floatInput(op, 'x', x);
  checkInteger(op, 'h', h, 1);
  if (t.rank !== 3) throw mismatch('ERR_SHAPE', op, 'x.shape', '[B,n,d] (rank 3)', formatShape(t.shape));
  const [B, n, d] = t.shape;
  if (d % h !== 0) {
    throw mismatch('ERR_SHAPE', op, 'x.shape', `[B,n,d] with d divisible by h = ${h}`, formatShape(t.shape));
  }
  const dh = d / h;
  const folded = [B, n, h, dh];
  const outShape = [B, h, n, dh];
  const out = permuteData(op, dataOf(t, op, 'x'), folded, [0, 2, 1, 3], t.dtype);
  return record(wrap(out, outShape, t), op, [t], [], (g) => {
    const where = `${op} (backward)`;
    return [wrap(permuteData(where, dataOf(g, where, 'gradient'), outShape, [0, 2, 1, 3], t.dtype), t.shape, t)];
  });
}

/** The inverse of {@link splitHeads}: `x` [B,h,n,dh] -> [B,n,h*dh]. One parallel pass. */
export function mergeHeads(x: Tensor): Tensor {
  const op = 'mergeHeads';
  const t = floatInput(op, 'x', x);
  if (t.rank !== 4) throw mismatch('ERR_SHAPE', op, 'x.shape', '[B,h,n,dh] (rank 4)', formatShape(t.shape));
  const [B, h, n, dh] = t.shape;
  const outShape = [B, n, h * dh];
  const out = permuteData(op, dataOf(t, op, 'x'), t.shape, [0, 2, 1, 3], t.dtype);
  return record(wrap(out, outShape, t), op, [t], [], (g) => {
    const where = `${op} (backward)`;
    return [wrap(permuteData(where, dataOf(g, where, 'gradient'), [B, n, h, dh], [0, 2, 1, 3], t.dtype), t.shape, t)];
  });
}

/** Copies rows x cols elements between two row-major layouts (see CopyBlocksArgs). */
function copyBlocks(
  where: string,
  src: FloatArray,
  dst: FloatArray,
  rows: number,
  cols: number,
  srcStride: number,
  srcOffset: number,
  dstStride: number,
  dstOffset: number,
): void {
  if (rows === 0 || cols === 0) return;
  const addon = loadNative();
  runKernel(where, () => addon.copyBlocks({ src, dst, rows, cols, srcStride, srcOffset, dstStride, dstOffset }));
}

/** The element counts before and after `axis`: the tensor seen as [outer, shape[axis], inner]. */
function around(shape: readonly number[], axis: number): { outer: number; inner: number } {
  return { outer: shapeSize(shape.slice(0, axis)), inner: shapeSize(shape.slice(axis + 1)) };
}

/**
 * The tensors joined along `axis`. All must be float tensors of one dtype and device, of one
 * rank, and of equal sizes in every other dim.
 */
export function concat(tensors: readonly Tensor[], axis: number): Tensor {
  const op = 'concat';
  if (!Array.isArray(tensors) || tensors.length === 0) {
    throw mismatch('ERR_ARGUMENT', op, 'tensors', 'a non-empty array of Tensors', describe(tensors));
  }
  const first = floatInput(op, 'tensors[0]', tensors[0]);
  const list = (tensors as unknown[]).map((t, i) => (i === 0 ? first : floatInput(op, `tensors[${i}]`, t, first, 'tensors[0]')));
  const ax = checkAxis(op, 'axis', axis, first.rank);
  list.forEach((t, i) => {
    if (t.rank !== first.rank || t.shape.some((n, d) => d !== ax && n !== first.shape[d])) {
      const expected = first.shape.map((n, d) => (d === ax ? '*' : n));
      throw mismatch('ERR_SHAPE', op, `tensors[${i}].shape`, `${formatShape(expected)} (matching tensors[0] except along axis ${ax})`, formatShape(t.shape));
    }
  });
  const sizes = list.map((t) => t.shape[ax]);
  const total = sizes.reduce((p, n) => p + n, 0);
  const outShape = first.shape.map((n, d) => (d === ax ? total : n));
  const { outer, inner } = around(first.shape, ax);
  if (shapeSize(outShape) > MAX_ELEMENTS) {
    throw mismatch('ERR_ARGUMENT', op, 'tensors', `at most ${MAX_ELEMENTS} elements in all`, formatShape(outShape));
  }
  const out = outputBuffer(op, first.dtype, shapeSize(outShape), first.device);
  let offset = 0;
  list.forEach((t, i) => {
    const cols = sizes[i] * inner;
    copyBlocks(op, dataOf(t, op, `tensors[${i}]`), out, outer, cols, cols, 0, total * inner, offset * inner);
    offset += sizes[i];
  });
  return record(wrap(out, outShape, first), op, list, [], (g, needs) => {
    const where = `${op} (backward)`;
    const gd = dataOf(g, where, 'gradient');
    let start = 0;
    return list.map((t, i) => {
      const begin = start;
      start += sizes[i];
      if (!needs[i]) return null;
      const cols = sizes[i] * inner;
      const grad = outputBuffer(where, t.dtype, t.size, t.device);
      copyBlocks(where, gd, grad, outer, cols, total * inner, begin * inner, cols, 0);
      return wrap(grad, t.shape, t);
    });
  });
}

/**
 * The elements of `x` with index in [start, end) along `axis` (a copy). Negative `start` and
 * `end` count from the end, as in Python; `end` defaults to the axis length. After that both
 * must lie in [0, length] with start <= end.
 */
export function slice(x: Tensor, axis: number, start: number, end?: number): Tensor {
  const op = 'slice';
  const t = floatInput(op, 'x', x);
  const ax = checkAxis(op, 'axis', axis, t.rank);
  const n = t.shape[ax];
  const s0 = checkInteger(op, 'start', start, -n, n);
  const e0 = end === undefined ? n : checkInteger(op, 'end', end, -n, n);
  const s = s0 < 0 ? s0 + n : s0;
  const e = e0 < 0 ? e0 + n : e0;
  if (s > e) {
    throw mismatch('ERR_ARGUMENT', op, 'end', `an index at or after start (${s}) along axis ${ax} of length ${n}`, String(e0));
  }
  const len = e - s;
  const outShape = t.shape.map((m, d) => (d === ax ? len : m));
  const { outer, inner } = around(t.shape, ax);
  const out = outputBuffer(op, t.dtype, shapeSize(outShape), t.device);
  copyBlocks(op, dataOf(t, op, 'x'), out, outer, len * inner, n * inner, s * inner, len * inner, 0);
  return record(wrap(out, outShape, t), op, [t], [], (g) => {
    const where = `${op} (backward)`;
    // Zero everywhere but the sliced block.
    const grad = zeroBuffer(where, t.dtype, t.size, t.device);
    copyBlocks(where, dataOf(g, where, 'gradient'), grad, outer, len * inner, len * inner, 0, n * inner, s * inner);
    return [wrap(grad, t.shape, t)];
  });
}

/** The ops of this family, spread into the public `ops` object by lib/ops/index.ts. */
export const shapeOps = {
  /** The same elements under a new shape (shares storage; one size may be -1). */
  reshape,
  /** A copy with two dims swapped. */
  transpose,
  /** A copy with the dims reordered. */
  permute,
  /** [B,n,d] -> [B,h,n,d/h]. */
  splitHeads,
  /** [B,h,n,dh] -> [B,n,h*dh], the inverse of splitHeads. */
  mergeHeads,
  /** Tensors joined along an axis. */
  concat,
  /** The elements with index in [start, end) along an axis (a copy). */
  slice,
};
