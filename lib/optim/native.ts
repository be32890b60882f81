/**
 * The addon functions behind the optimizers (native/bindings/optim_binding.cc): fused updates
 * and the gradient-norm reduction. Every buffer is a parameter's, a gradient's or a state
 * buffer, handed over as it is stored: a typed array for a CPU tensor (the C++ kernels run), a
 * DeviceArray for a CUDA one (the CUDA kernels run). No loop in lib/ touches the elements.
 *
 * @packageDocumentation
 */
import { LunaError } from '../errors';
import { DeviceArray, loadNative } from '../native';
import { runKernel } from '../ops/common';

/** A buffer as the kernels take it: a host float array or a float32 device array. */
export type NativeBuffer = Float32Array | Float64Array | DeviceArray;

/** Arguments of `adamStep`: one Adam/AdamW update of one parameter, in place. */
export interface AdamStepArgs {
  param: NativeBuffer;
  grad: NativeBuffer;
  /** the first moment, updated in place */
  expAvg: NativeBuffer;
  /** the second moment, updated in place */
  expAvgSq: NativeBuffer;
  lr: number;
  beta1: number;
  beta2: number;
  eps: number;
  weightDecay: number;
  /** true for AdamW (decoupled weight decay), false for Adam (L2 in the gradient) */
  decoupled: boolean;
  /** `1 - beta1 ** step`, computed in JS (the kernel does not take powers) */
  biasCorrection1: number;
  /** `1 - beta2 ** step` */
  biasCorrection2: number;
}

/** Arguments of `sgdStep`: one SGD update of one parameter, in place. */
export interface SgdStepArgs {
  param: NativeBuffer;
  grad: NativeBuffer;
  /** updated in place; null when momentum is 0 */
  momentumBuffer: NativeBuffer | null;
  lr: number;
  momentum: number;
  dampening: number;
  weightDecay: number;
  nesterov: boolean;
  /** the parameter's first update: the buffer is set to the gradient instead of being read */
  firstStep: boolean;
}

/** The optimizer functions of the addon. */
export interface OptimNative {
  adamStep(args: AdamStepArgs): void;
  sgdStep(args: SgdStepArgs): void;
  /**
   * Over the concatenation of `xs` (one element type, all on one device), in float64: the sum
   * of squares (normType 2), of magnitudes (1), the largest magnitude (Infinity; a NaN anywhere
   * gives NaN) or the sum of magnitudes to the power normType. Deterministic. On CUDA it waits
   * for the result.
   */
  normReduce(args: { xs: NativeBuffer[]; normType: number }): number;
  /** `normReduce` with normType 2, for one array or a list. */
  sumOfSquares(args: { x: NativeBuffer | NativeBuffer[] }): number;
  /** x = x * scale in place (the product in float64, rounded once). */
  scaleInPlace(args: { x: NativeBuffer; scale: number }): void;
}

const FUNCTIONS: readonly (keyof OptimNative)[] = ['adamStep', 'sgdStep', 'normReduce', 'sumOfSquares', 'scaleInPlace'];

/** The addon's optimizer functions; ERR_NATIVE_LOAD when the binary predates them. */
export function optimNative(): OptimNative {
  const addon = loadNative() as unknown as Record<string, unknown>;
  const missing = FUNCTIONS.filter((name) => typeof addon[name] !== 'function');
  if (missing.length > 0) {
    throw new LunaError(
      'ERR_NATIVE_LOAD',
      `luna-attention: the native addon lacks ${missing.join(', ')} (it is probably stale, built from older sources); ` +
        'rebuild it (`npm rebuild luna-attention`)',
    );
  }
  return addon as unknown as OptimNative;
}

/** Runs a native optimizer call, turning its errors into LunaErrors (ERR_CUDA keeps the runtime's name). */
export function runOptim<T>(where: string, call: () => T): T {
  let out: T | undefined;
  runKernel(where, () => {
    out = call();
  });
  return out as T;
}
