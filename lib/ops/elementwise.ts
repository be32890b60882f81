/**
 * Elementwise arithmetic with NumPy broadcasting (`add`, `sub`, `mul`, `scale`), reductions
 * (`sum`, `mean`) and `broadcastTo`, with their backward passes. The backward of broadcasting
 * is a sum over the broadcast dims (`reduceTo` below), which the addon's `reduceSum` computes.
 *
 * The strided helpers at the end of this file (broadcast strides, the walk that fuses dims,
 * `stridedCopyData`, `reduceTo`) are shared with lib/ops/shape.ts.
 *
 * @packageDocumentation
 */
import { checkBoolean, checkFinite, checkOptions, describe, formatShape, mismatch } from '../errors';
import { DType, allocate, checkShape, sameShape, shapeSize } from '../dtype';
import { Tensor } from '../tensor';
import { FloatArray, loadNative } from '../native';
import { checkAxis, copyBuffer, dataOf, deviceOfBuffer, floatInput, outputBuffer, record, runKernel, wrap, zeroBuffer } from './common';

/** The largest rank the addon's strided kernels take (after fusing dims, see {@link simplifyWalk}). */
const MAX_KERNEL_RANK = 8;

/** Options of `sum` and `mean`. */
export interface ReduceOptions {
  /** The axis or axes to reduce (negative counts from the end). Default: every axis. */
  axis?: number | readonly number[];
  /** Keep each reduced axis as a dim of size 1. Default false. */
  keepDim?: boolean;
}

type BinaryKind = 'add' | 'sub' | 'mul';

// ---------------------------------------------------------------------------------------------
// Strided helpers (also used by lib/ops/shape.ts)

/** Row-major element strides of a contiguous tensor of `shape`. */
export function contiguousStrides(shape: readonly number[]): number[] {
  const strides = new Array<number>(shape.length);
  let s = 1;
  for (let d = shape.length - 1; d >= 0; d--) {
    strides[d] = s;
    s *= shape[d];
  }
  return strides;
}

/**
 * The strides with which a contiguous tensor of `shape` is read when broadcast to `outShape`
 * (aligned at the trailing dims): 0 along every dim it is broadcast in, and for missing
 * leading dims.
 */
export function broadcastStrides(shape: readonly number[], outShape: readonly number[]): number[] {
  const off = outShape.length - shape.length;
  const own = contiguousStrides(shape);
  return outShape.map((_, d) => (d < off || shape[d - off] === 1 ? 0 : own[d - off]));
}

/**
 * Simplifies a walk over a contiguous output of `shape` that reads inputs through `strides`:
 * dims of size 1 are dropped and neighbouring dims fused wherever every input steps through
 * them as through one dim. Lets tensors of any rank reach the rank-8 kernels in nearly every
 * case, and hands the kernels their fast paths in canonical form.
 */
export function simplifyWalk(
  where: string,
  shape: readonly number[],
  strides: readonly (readonly number[])[],
): { shape: number[]; strides: number[][] } {
  const outShape: number[] = [];
  const outStrides: number[][] = strides.map(() => []);
  for (let d = 0; d < shape.length; d++) {
    if (shape[d] === 1) continue;
    const last = outShape.length - 1;
    if (last >= 0 && strides.every((s, k) => outStrides[k][last] === s[d] * shape[d])) {
      outShape[last] *= shape[d];
      strides.forEach((s, k) => (outStrides[k][last] = s[d]));
      continue;
    }
    outShape.push(shape[d]);
    strides.forEach((s, k) => outStrides[k].push(s[d]));
  }
  if (outShape.length > MAX_KERNEL_RANK) {
    throw mismatch(
      'ERR_SHAPE',
      where,
      'the tensors\' shapes',
      `at most ${MAX_KERNEL_RANK} dims once size-1 dims are dropped and contiguous dims fused`,
      `${formatShape(shape)} (${outShape.length} dims after fusing)`,
    );
  }
  return { shape: outShape, strides: outStrides };
}

/** A new buffer of shape `outShape`: `x` read through `strides` (a permute and/or a broadcast). */
export function stridedCopyData(
  where: string,
  x: FloatArray,
  outShape: readonly number[],
  strides: readonly number[],
  dtype: DType,
): FloatArray {
  const out = outputBuffer(where, dtype, shapeSize(outShape), deviceOfBuffer(x));
  if (out.length === 0) return out;
  const walk = simplifyWalk(where, outShape, [strides]);
  const addon = loadNative();
  runKernel(where, () => addon.stridedCopy({ x, out, shape: walk.shape, strides: walk.strides[0] }));
  return out;
}

/**
 * Sums `x` (of `shape`) down to the broadcast-compatible `target` shape: over the leading dims
 * `target` lacks and over the dims where `target` has 1. The backward of broadcasting.
 */
export function reduceTo(
  where: string,
  x: FloatArray,
  shape: readonly number[],
  target: readonly number[],
  dtype: DType,
): FloatArray {
  const size = shapeSize(target);
  const off = shape.length - target.length;
  if (size === shapeSize(shape)) {
    // Nothing is summed (only size-1 dims differ): a copy.
    const out = outputBuffer(where, dtype, size, deviceOfBuffer(x));
    copyBuffer(where, out, x);
    return out;
  }
  if (x.length === 0) return zeroBuffer(where, dtype, size, deviceOfBuffer(x)); // empty sums are 0
  // Group the dims into alternating kept and reduced runs, as the kernel does; this keeps any
  // rank within the kernel's limit unless kept and reduced dims alternate more than 8 times.
  const inDims: number[] = [];
  const kept: boolean[] = [];
  for (let d = 0; d < shape.length; d++) {
    if (shape[d] === 1) continue;
    const keep = d >= off && target[d - off] !== 1;
    if (inDims.length > 0 && kept[kept.length - 1] === keep) {
      inDims[inDims.length - 1] *= shape[d];
    } else {
      inDims.push(shape[d]);
      kept.push(keep);
    }
  }
  if (inDims.length > MAX_KERNEL_RANK) {
    throw mismatch('ERR_SHAPE', where, 'the reduction', `at most ${MAX_KERNEL_RANK} alternating kept and summed runs of dims`, `${formatShape(shape)} -> ${formatShape(target)}`);
  }
  const out = outputBuffer(where, dtype, size, deviceOfBuffer(x));
  const addon = loadNative();
  const outShape = inDims.map((n, i) => (kept[i] ? n : 1));
  runKernel(where, () => addon.reduceSum({ x, out, shape: inDims, outShape }));
  return out;
}

/** out[i] = s * x[i] + offset into a new buffer (or into `into`, which may be `x` itself). */
function scaleData(where: string, x: FloatArray, s: number, offset: number, dtype: DType, into?: FloatArray): FloatArray {
  const out = into ?? outputBuffer(where, dtype, x.length, deviceOfBuffer(x));
  if (x.length === 0) return out;
  const addon = loadNative();
  runKernel(where, () => addon.scaleShift({ x, out, scale: s, offset }));
  return out;
}

/** The broadcast shape of `a` and `b` (NumPy rules), or ERR_SHAPE naming both shapes. */
function broadcastShape(op: string, a: readonly number[], b: readonly number[]): number[] {
  const rank = Math.max(a.length, b.length);
  const out = new Array<number>(rank);
  for (let d = 0; d < rank; d++) {
    const da = d - (rank - a.length) >= 0 ? a[d - (rank - a.length)] : 1;
    const db = d - (rank - b.length) >= 0 ? b[d - (rank - b.length)] : 1;
    if (da !== db && da !== 1 && db !== 1) {
      throw mismatch(
        'ERR_SHAPE',
        op,
        'b.shape',
        `a shape broadcastable with a.shape ${formatShape(a)} (trailing dims equal or 1)`,
        formatShape(b),
      );
    }
    out[d] = da === 1 ? db : da;
  }
  return out;
}

/** out = a (op) b over the broadcast shape `outShape`. */
function binaryData(
  where: string,
  op: BinaryKind,
  a: FloatArray,
  aShape: readonly number[],
  b: FloatArray,
  bShape: readonly number[],
  outShape: readonly number[],
  dtype: DType,
): FloatArray {
  const out = outputBuffer(where, dtype, shapeSize(outShape), deviceOfBuffer(a));
  if (out.length === 0) return out;
  const walk = simplifyWalk(where, outShape, [broadcastStrides(aShape, outShape), broadcastStrides(bShape, outShape)]);
  const addon = loadNative();
  runKernel(where, () =>
    addon.elementwiseBinary({ op, a, b, out, shape: walk.shape, aStrides: walk.strides[0], bStrides: walk.strides[1] }),
  );
  return out;
}

// ---------------------------------------------------------------------------------------------
// The ops

function binary(op: BinaryKind, aIn: Tensor, bIn: Tensor): Tensor {
  const a = floatInput(op, 'a', aIn);
  const b = floatInput(op, 'b', bIn, a, 'a');
  const outShape = broadcastShape(op, a.shape, b.shape);
  // Broadcasting can multiply two long dims into an impossible result: refuse it by name.
  checkShape(op, 'the broadcast shape of a and b', outShape);
  const out = binaryData(op, op, dataOf(a, op, 'a'), a.shape, dataOf(b, op, 'b'), b.shape, outShape, a.dtype);
  const result = wrap(out, outShape, a);
  const saved = op === 'mul' ? [a, b] : [];
  return record(result, op, [a, b], saved, (g, needs, data) => {
    const where = `${op} (backward)`;
    const gd = dataOf(g, where, 'gradient');
    const grads: (Tensor | null)[] = [null, null];
    const inputs = [a, b];
    for (let i = 0; i < 2; i++) {
      if (!needs[i]) continue;
      const shape = inputs[i].shape;
      // The gradient over the output shape: g for add and sub, g times the other operand for
      // mul; then summed over the dims this input was broadcast along, and negated for the
      // second operand of sub.
      let grad = gd;
      let fresh = false;
      if (op === 'mul') {
        grad = binaryData(where, 'mul', gd, outShape, data[1 - i] as FloatArray, inputs[1 - i].shape, outShape, a.dtype);
        fresh = true;
      }
      if (!sameShape(shape, outShape)) {
        grad = reduceTo(where, grad, outShape, shape, a.dtype);
        fresh = true;
      }
      if (op === 'sub' && i === 1) {
        grad = scaleData(where, grad, -1, 0, a.dtype, fresh ? grad : undefined);
      } else if (!fresh) {
        grads[i] = g; // passed straight through; the engine never adds into a shared gradient
        continue;
      }
      grads[i] = wrap(grad, shape, a);
    }
    return grads;
  });
}

/**
 * a + b with NumPy broadcasting: the shapes are aligned at their trailing dims, and each pair
 * of dims must be equal or contain a 1. Both must be float tensors of one dtype and device.
 *
 * @example
 * ops.add(x, bias); // x [B,n,d], bias [d] -> [B,n,d]
 */
export function add(a: Tensor, b: Tensor): Tensor {
  return binary('add', a, b);
}

/** a - b with NumPy broadcasting (see {@link add}). */
export function sub(a: Tensor, b: Tensor): Tensor {
  return binary('sub', a, b);
}

/** a * b elementwise with NumPy broadcasting (see {@link add}). */
export function mul(a: Tensor, b: Tensor): Tensor {
  return binary('mul', a, b);
}

/** y = s * x + offset elementwise; `s` and `offset` must be finite numbers. */
export function scale(x: Tensor, s: number, offset = 0): Tensor {
  const op = 'scale';
  const t = floatInput(op, 'x', x);
  checkFinite(op, 's', s);
  checkFinite(op, 'offset', offset);
  const out = scaleData(op, dataOf(t, op, 'x'), s, offset, t.dtype);
  return record(wrap(out, t.shape, t), op, [t], [], (g) => {
    const where = `${op} (backward)`;
    return [wrap(scaleData(where, dataOf(g, where, 'gradient'), s, 0, t.dtype), t.shape, t)];
  });
}

/** Reads `axis` / `keepDim`: the reduced axes (sorted), the kept-dims shape and the result shape. */
function reduceArgs(
  op: string,
  x: Tensor,
  options: unknown,
): { keepShape: number[]; outShape: number[]; count: number } {
  const opts = checkOptions(op, options, ['axis', 'keepDim']);
  const keepDim = opts.keepDim === undefined ? false : checkBoolean(op, 'options.keepDim', opts.keepDim);
  const rank = x.rank;
  let axes: number[];
  if (opts.axis === undefined) {
    axes = x.shape.map((_, d) => d);
  } else if (Array.isArray(opts.axis)) {
    const list = opts.axis as unknown[];
    if (list.length === 0) {
      throw mismatch('ERR_ARGUMENT', op, 'options.axis', 'an axis or a non-empty array of axes (omit it to reduce every axis)', '[]');
    }
    axes = list.map((v, i) => checkAxis(op, `options.axis[${i}]`, v, rank));
    const seen = new Set<number>();
    for (const a of axes) {
      if (seen.has(a)) throw mismatch('ERR_ARGUMENT', op, 'options.axis', 'distinct axes', describe(opts.axis));
      seen.add(a);
    }
  } else {
    axes = [checkAxis(op, 'options.axis', opts.axis, rank)];
  }
  const reduced = new Set(axes);
  const keepShape = x.shape.map((n, d) => (reduced.has(d) ? 1 : n));
  const outShape = keepDim ? keepShape : x.shape.filter((_, d) => !reduced.has(d));
  let count = 1;
  for (const a of axes) count *= x.shape[a];
  return { keepShape, outShape, count };
}

function reduction(op: 'sum' | 'mean', xIn: Tensor, options: unknown): Tensor {
  const x = floatInput(op, 'x', xIn);
  const { keepShape, outShape, count } = reduceArgs(op, x, options);
  const out = reduceTo(op, dataOf(x, op, 'x'), x.shape, keepShape, x.dtype);
  if (op === 'mean') {
    // The mean of nothing is NaN, as in NumPy.
    if (count === 0) out.fill(Number.NaN);
    else scaleData(op, out, 1 / count, 0, x.dtype, out);
  }
  return record(wrap(out, outShape, x), op, [x], [], (g) => {
    const where = `${op} (backward)`;
    const grad = stridedCopyData(where, dataOf(g, where, 'gradient'), x.shape, broadcastStrides(keepShape, x.shape), x.dtype);
    if (op === 'mean' && count > 0) scaleData(where, grad, 1 / count, 0, x.dtype, grad);
    return [wrap(grad, x.shape, x)];
  });
}

/**
 * The sum of `x` over `options.axis` (an axis or an array of distinct axes; default: every
 * axis, giving shape `[]`). With `keepDim` the reduced axes stay as size-1 dims.
 */
export function sum(x: Tensor, options?: ReduceOptions): Tensor {
  return reduction('sum', x, options);
}

/** The mean of `x` over `options.axis` (see {@link sum}). The mean over an empty axis is NaN. */
export function mean(x: Tensor, options?: ReduceOptions): Tensor {
  return reduction('mean', x, options);
}

/**
 * `x` repeated to `shape` by NumPy broadcasting (x's dims align with the trailing dims of
 * `shape`; each must be equal or 1). The result is a copy. Its backward sums over the
 * broadcast dims; e.g. a learned P [l,d] broadcast to [B,l,d] receives the sum over B.
 */
export function broadcastTo(x: Tensor, shape: readonly number[]): Tensor {
  const op = 'broadcastTo';
  const t = floatInput(op, 'x', x);
  const target = checkShape(op, 'shape', shape).shape;
  const off = target.length - t.rank;
  if (off < 0 || t.shape.some((n, d) => n !== 1 && n !== target[d + off])) {
    throw mismatch(
      'ERR_SHAPE',
      op,
      'shape',
      `a shape that x.shape ${formatShape(t.shape)} broadcasts to (as many or more dims; x's trailing dims equal or 1)`,
      formatShape(target),
    );
  }
  const out = stridedCopyData(op, dataOf(t, op, 'x'), target, broadcastStrides(t.shape, target), t.dtype);
  return record(wrap(out, target, t), op, [t], [], (g) => {
    const where = `${op} (backward)`;
    return [wrap(reduceTo(where, dataOf(g, where, 'gradient'), target, t.shape, t.dtype), t.shape, t)];
  });
}

/** The ops of this family, spread into the public `ops` object by lib/ops/index.ts. */
export const elementwiseOps = {
  /** a + b with NumPy broadcasting. */
  add,
  /** a - b with NumPy broadcasting. */
  sub,
  /** a * b elementwise with NumPy broadcasting. */
  mul,
  /** s * x + offset elementwise, for numbers s and offset. */
  scale,
  /** The sum over some axes (default: all). */
  sum,
  /** The mean over some axes (default: all). */
  mean,
  /** A copy of x broadcast to a larger shape. */
  broadcastTo,
};
