/**
 * The kit every op is written with: argument checks with the one error shape, output buffers,
 * the kernel call, and recording the backward on the graph.
 *
 * An op looks like this (see lib/ops/attention.ts for a full one):
 * ```ts
 * const x = floatInput(op, 'x', xIn);                  // a live float tensor
 * const out = outputBuffer(op, x.dtype, x.size);       // pooled; NaN-poisoned in tests
 * runKernel(op, () => addon.geluForward({ x: tensorData(x), out, n: x.size }));
 * return record(wrap(out, x.shape, x), op, [x], [x], (g, needs, [xData]) => [...]);
 * ```
 *
 * @packageDocumentation
 */
import { LunaError, describe, mismatch } from '../errors';
import { AnyTypedArray, DType, Device, FloatDType, allocate, allocateUninit, isFloatDType } from '../dtype';
import { cudaError, deviceAlloc, deviceClone, download, isDeviceArray } from '../device';
import { Storage, Tensor, assertLive, checkTensor, makeTensor } from '../tensor';
import { attachNode, shouldRecord } from '../autograd';
import { FloatArray, loadNative } from '../native';
import { poison } from '../testing';

/**
 * Checks that `value` is a live float tensor; with `like`, also that its dtype and device match
 * that tensor's (no implicit conversion anywhere in the library).
 */
export function floatInput(op: string, arg: string, value: unknown, like?: Tensor, likeName = 'the first input'): Tensor {
  const t = checkTensor(op, arg, value);
  if (!isFloatDType(t.dtype)) {
    throw mismatch('ERR_DTYPE', op, `${arg}.dtype`, 'float32 or float64', t.dtype);
  }
  if (like !== undefined) sameKind(op, arg, t, like, likeName);
  return t;
}

/** Throws ERR_DTYPE / ERR_DEVICE unless `t` has the dtype and device of `like`. */
export function sameKind(op: string, arg: string, t: Tensor, like: Tensor, likeName: string): void {
  if (t.dtype !== like.dtype) {
    throw mismatch('ERR_DTYPE', op, `${arg}.dtype`, `${like.dtype} (matching ${likeName}; no implicit conversion)`, t.dtype);
  }
  if (t.device !== like.device) {
    throw mismatch('ERR_DEVICE', op, `${arg}.device`, `${like.device} (matching ${likeName})`, t.device);
  }
}

/**
 * A float output buffer whose every element the kernel will write: pooled (no zero fill, no
 * page faults on reuse) and NaN-filled when tests poison outputs, so a missed element shows.
 */
export function outputBuffer(op: string, dtype: FloatDType | DType, size: number, device: Device): FloatArray {
  // A device buffer is typed as a float array because the kernels' argument types are: it is
  // only ever handed to a kernel, never indexed in JS.
  if (device === 'cuda') return deviceAlloc(op, dtype, size, false) as unknown as FloatArray;
  const buf = allocateUninit(op, dtype, size) as FloatArray;
  poison(buf);
  return buf;
}

/** A zero-filled buffer on `device` (for outputs a kernel accumulates into, and empty sums). */
export function zeroBuffer(op: string, dtype: FloatDType | DType, size: number, device: Device): FloatArray {
  if (device === 'cuda') return deviceAlloc(op, dtype, size, true) as unknown as FloatArray;
  return allocate(op, dtype, size) as FloatArray;
}

/** The device a buffer from {@link dataOf} or {@link outputBuffer} lives on. */
export function deviceOfBuffer(buf: unknown): Device {
  return isDeviceArray(buf) ? 'cuda' : 'cpu';
}

/** dst = src, for two buffers of one length on one device. */
export function copyBuffer(op: string, dst: FloatArray, src: FloatArray): void {
  if (isDeviceArray(dst)) {
    try {
      loadNative().cudaCopy(dst, src as never);
    } catch (err) {
      throw cudaError(op, err);
    }
  } else {
    dst.set(src);
  }
}

/** Wraps a freshly written buffer as a tensor with `like`'s dtype and device. */
export function wrap(data: AnyTypedArray, shape: readonly number[], like: Tensor): Tensor {
  return makeTensor(data, shape, like.dtype, like.device);
}

/**
 * The live buffer of `t` for a kernel call: a typed array on the CPU, a DeviceArray on cuda (ops
 * read inputs through this and never write into them, nor index it in JS).
 */
export function dataOf(t: Tensor, op: string, arg = 'tensor'): FloatArray {
  return assertLive(t, op, arg).data as unknown as FloatArray;
}

/** Runs a kernel, turning a binding's TypeError/RangeError into a LunaError that says whose fault it is. */
export function runKernel(op: string, run: () => void): void {
  try {
    run();
  } catch (err) {
    if (err instanceof LunaError) throw err;
    if ((err as { code?: string })?.code === 'ERR_CUDA') throw cudaError(op, err);
    throw new LunaError(
      'ERR_ARGUMENT',
      `${op}: the native kernel refused its arguments (lib/ validation should have caught this; ` +
        `please report it): ${err instanceof Error ? err.message : describe(err)}`,
      { cause: err },
    );
  }
}

/**
 * The backward of an op: gets the output's gradient, which inputs need a gradient, and the
 * buffers saved at forward time (in the order given to {@link record}; null stays null). Returns
 * one gradient per input (null where not needed). It must not keep `gradOut` or the saved
 * buffers beyond the call.
 */
export type OpBackward = (
  gradOut: Tensor,
  needsGrad: readonly boolean[],
  saved: readonly (AnyTypedArray | null)[],
) => readonly (Tensor | null)[];

/**
 * Records `backward` for `output` when any of `inputs` requires grad (and returns `output`).
 * The storages of `saved` are retained until the backward has run, so disposing an input or the
 * output after the forward does not pull the data out from under the graph.
 */
export function record(
  output: Tensor,
  op: string,
  inputs: readonly Tensor[],
  saved: readonly (Tensor | null)[],
  backward: OpBackward,
): Tensor {
  if (!shouldRecord(inputs)) return output;
  const storages: (Storage | null)[] = saved.map((t) => (t === null ? null : assertLive(t, op).retain()));
  let live = true;
  attachNode(
    output,
    op,
    inputs,
    (g, needs) => {
      if (!live) throw new LunaError('ERR_DISPOSED', `${op} (backward): the saved tensors were already released`);
      return backward(g, needs, storages.map((s) => (s === null ? null : (s.data as AnyTypedArray))));
    },
    () => {
      live = false;
      for (const s of storages) s?.release();
    },
  );
  return output;
}

/** Extra op checks shared by several families. */
export function checkAxis(op: string, arg: string, axis: unknown, rank: number): number {
  if (typeof axis !== 'number' || !Number.isInteger(axis) || axis < -rank || axis >= rank) {
    throw mismatch('ERR_ARGUMENT', op, arg, `an integer axis in [${-rank}, ${rank - 1}]`, describe(axis));
  }
  return axis < 0 ? axis + rank : axis;
}

/** A copy of a buffer on its own device (to break aliasing between two inputs). */
export function cloneBuffer(op: string, buf: FloatArray, dtype: DType): FloatArray {
  if (isDeviceArray(buf)) return deviceClone(op, buf, dtype) as unknown as FloatArray;
  return buf.slice();
}

/** Sets every element of a buffer (host or device) to `value`. */
export function fillBuffer(op: string, buf: FloatArray, value: number): void {
  if (!isDeviceArray(buf)) {
    buf.fill(value);
    return;
  }
  const addon = loadNative();
  try {
    if (value === 0) {
      addon.cudaZero(buf);
    } else {
      const src = addon.cudaUpload(new Float32Array(buf.length).fill(value));
      addon.cudaCopy(buf, src);
      src.release();
    }
  } catch (err) {
    throw cudaError(op, err);
  }
}

/**
 * The values of `t` on the host, for checks that must read them in JS (ids, targets): the
 * tensor's own buffer on the CPU, a copy on cuda (which waits for the GPU).
 */
export function hostValues(t: Tensor, op: string, arg = 'tensor'): AnyTypedArray {
  const data = assertLive(t, op, arg).data;
  return isDeviceArray(data) ? download(op, data, t.dtype) : (data as AnyTypedArray);
}
