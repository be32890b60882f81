/**
 * Element types, devices, shapes and the raw buffers behind tensors.
 *
 * Nothing here knows about Tensor or autograd, so every other module can import it freely.
 *
 * @packageDocumentation
 */
import { LunaError, checkNonNegativeInt, describe, formatShape, mismatch } from './errors';
import { takeBuffer } from './pool';

/**
 * Element type of a tensor. `bool` is stored as a Uint8Array holding 0 or 1; `int32` (token
 * ids, class targets) as an Int32Array. Only the float dtypes take part in autograd.
 */
export type DType = 'float32' | 'float64' | 'bool' | 'int32';

/** The floating-point element types: the only ones that take part in math and autograd. */
export type FloatDType = 'float32' | 'float64';

export type { Device } from './device';
export { DEVICES, checkDevice } from './device';

/** The buffer type of each dtype. */
export interface DTypeArrayMap {
  float32: Float32Array;
  float64: Float64Array;
  bool: Uint8Array;
  int32: Int32Array;
}

/** Any buffer a tensor can hold. */
export type TypedArrayOf<D extends DType> = DTypeArrayMap[D];

/** Any buffer a tensor can hold, whatever its dtype. */
export type AnyTypedArray = Float32Array | Float64Array | Uint8Array | Int32Array;

/** All dtypes, in the order messages list them. */
export const DTYPES: readonly DType[] = ['float32', 'float64', 'bool', 'int32'];


/**
 * The largest element count a tensor may have. Kernels index with 32-bit signed offsets in
 * places, and a float64 buffer of this many elements is already 16 GiB.
 */
export const MAX_ELEMENTS = 2 ** 31 - 1;

/** Throws unless `value` names a dtype (ERR_ARGUMENT for a non-string, ERR_DTYPE otherwise). */
export function checkDType(where: string, arg: string, value: unknown): DType {
  if (typeof value !== 'string') {
    throw mismatch('ERR_ARGUMENT', where, arg, `one of ${DTYPES.join(', ')}`, describe(value));
  }
  if (!(DTYPES as readonly string[]).includes(value)) {
    throw mismatch('ERR_DTYPE', where, arg, `one of ${DTYPES.join(', ')}`, describe(value));
  }
  return value as DType;
}

/** True for the floating-point dtypes. */
export function isFloatDType(dtype: DType): dtype is FloatDType {
  return dtype === 'float32' || dtype === 'float64';
}

/**
 * Checks a shape (an array of non-negative integers) and returns a frozen copy and its element
 * count. The count is built up dimension by dimension so that an absurd shape is refused
 * before anything is allocated, and before the product could lose precision.
 */
export function checkShape(
  where: string,
  arg: string,
  shape: unknown,
): { shape: readonly number[]; size: number } {
  if (!Array.isArray(shape)) {
    throw mismatch('ERR_ARGUMENT', where, arg, 'an array of non-negative integers', describe(shape));
  }
  const dims: number[] = [];
  for (let i = 0; i < shape.length; i++) {
    dims.push(checkNonNegativeInt(where, `${arg}[${i}]`, shape[i] as unknown));
  }
  // Multiply step by step and stop at the limit, so the check stays exact (no float rounding
  // of a huge product) and happens before anything is allocated. A single dimension over the
  // limit is refused even when another is 0: no kernel indexes that far.
  let size = 1;
  let tooLarge = dims.some((d) => d > MAX_ELEMENTS);
  if (!dims.includes(0)) {
    for (const d of dims) {
      size *= d;
      if (size > MAX_ELEMENTS) {
        tooLarge = true;
        break;
      }
    }
  } else {
    size = 0;
  }
  if (tooLarge) {
    throw mismatch(
      'ERR_ARGUMENT',
      where,
      arg,
      `at most ${MAX_ELEMENTS} (2^31 - 1) elements`,
      `${formatShape(dims)} (${dims.reduce((a, b) => a * b, 1)} elements)`,
    );
  }
  return { shape: Object.freeze(dims), size };
}

/** Element count of a (valid) shape. */
export function shapeSize(shape: readonly number[]): number {
  let size = 1;
  for (const d of shape) size *= d;
  return size;
}

/** True when two shapes are equal. */
export function sameShape(a: readonly number[], b: readonly number[]): boolean {
  if (a.length !== b.length) return false;
  for (let i = 0; i < a.length; i++) if (a[i] !== b[i]) return false;
  return true;
}

/** Bytes per element of each dtype. */
export function bytesPerElement(dtype: DType): number {
  return dtype === 'float64' ? 8 : dtype === 'float32' || dtype === 'int32' ? 4 : 1;
}

/**
 * Allocates a zero-filled buffer (from the buffer pool when one of the size is free). An
 * allocation V8 refuses (out of memory, over its limits) becomes ERR_ARGUMENT naming the size,
 * rather than a bare RangeError.
 */
export function allocate<D extends DType>(where: string, dtype: D, size: number): TypedArrayOf<D> {
  return takeBuffer(where, dtype, size, true) as TypedArrayOf<D>;
}

/**
 * Like {@link allocate} but the content is unspecified: for outputs a kernel overwrites
 * completely. Skips the zero fill of a reused buffer.
 */
export function allocateUninit<D extends DType>(where: string, dtype: D, size: number): TypedArrayOf<D> {
  return takeBuffer(where, dtype, size, false) as TypedArrayOf<D>;
}

/** The dtype a typed array stands for when no dtype is given, or null for other array types. */
export function dtypeOfArray(data: ArrayBufferView): DType | null {
  if (data instanceof Float32Array) return 'float32';
  if (data instanceof Float64Array) return 'float64';
  if (data instanceof Uint8Array) return 'bool';
  if (data instanceof Int32Array) return 'int32';
  return null;
}
