/**
 * Gradient clipping by global norm, as `torch.nn.utils.clip_grad_norm_`.
 *
 * @packageDocumentation
 */
import { LunaError, checkBoolean, checkOptions, describe, mismatch } from '../errors';
import { isFloatDType } from '../dtype';
import { Tensor, nativeData } from '../tensor';
import { checkNonNegative } from './optimizer';
import { NativeBuffer, optimNative, runOptim } from './native';

/** Options of {@link clipGradNorm}. */
export interface ClipGradNormOptions {
  /** The p of the p-norm: a finite number > 0, or `Infinity` for the largest magnitude. Default 2. */
  normType?: number;
  /** Throw instead of scaling when the total norm is NaN or infinite. Default false (as torch). */
  errorIfNonfinite?: boolean;
}

/**
 * Rescales the gradients of `params` in place so that their joint norm (the norm of all
 * gradients concatenated) is at most `maxNorm`, and returns the norm measured before clipping.
 * Parameters without a gradient are ignored; with none at all the norm is 0.
 *
 * As in PyTorch, the scale is `maxNorm / (total + 1e-6)` and is applied only when it is below
 * 1; the 1e-6 keeps the division finite for an all-zero gradient. A NaN or infinite total
 * makes every gradient NaN (or zero), unless `errorIfNonfinite` asks for an error instead.
 *
 * The norm is accumulated in float64 by the native reduction, one call per device and dtype
 * (gradients on the GPU are reduced there; only the number comes back), in a fixed order: the
 * same gradients give the same bits on every run and for any thread count.
 *
 * @param params - the parameters (a tensor or an array of tensors)
 * @param maxNorm - the largest allowed norm, a finite number >= 0
 * @param options - see {@link ClipGradNormOptions}
 * @returns the total norm of the gradients before clipping
 */
export function clipGradNorm(
  params: Tensor | readonly Tensor[],
  maxNorm: number,
  options?: ClipGradNormOptions,
): number {
  const where = 'clipGradNorm';
  const list: readonly unknown[] = params instanceof Tensor ? [params] : (params as readonly unknown[]);
  if (!Array.isArray(list)) {
    throw mismatch('ERR_ARGUMENT', where, 'params', 'a Tensor or an array of tensors', describe(params));
  }
  const max = checkNonNegative(where, 'maxNorm', maxNorm);
  const opts = checkOptions(where, options, ['normType', 'errorIfNonfinite']);
  const p = opts.normType ?? 2;
  if (typeof p !== 'number' || Number.isNaN(p) || p <= 0 || p === -Infinity) {
    throw mismatch('ERR_ARGUMENT', where, 'options.normType', 'a number > 0 or Infinity', describe(opts.normType));
  }
  const strict = checkBoolean(where, 'options.errorIfNonfinite', opts.errorIfNonfinite ?? false);

  // Grouped by device and dtype (a native call takes one of each), in order of appearance.
  const groups = new Map<string, NativeBuffer[]>();
  const grads: NativeBuffer[] = [];
  list.forEach((t, i) => {
    if (!(t instanceof Tensor)) throw mismatch('ERR_ARGUMENT', where, `params[${i}]`, 'a Tensor', describe(t));
    if (t.grad === null) return;
    if (!isFloatDType(t.grad.dtype)) {
      throw mismatch('ERR_DTYPE', where, `params[${i}].grad.dtype`, 'float32 or float64', t.grad.dtype);
    }
    const g = nativeData(t.grad, where, `params[${i}].grad`) as NativeBuffer;
    const key = `${t.grad.device}/${t.grad.dtype}`;
    const group = groups.get(key);
    if (group === undefined) groups.set(key, [g]);
    else group.push(g);
    grads.push(g);
  });
  if (grads.length === 0) return 0;

  // Accumulated in float64 whatever the gradients' dtype: the sum of squares of many float32
  // values loses digits fast in float32. For p = Infinity the reduction is the largest
  // magnitude, NaN if any element is NaN (torch's max); otherwise the sum of |g|^p.
  const native = optimNative();
  let reduced = 0;
  for (const xs of groups.values()) {
    const r = runOptim(where, () => native.normReduce({ xs, normType: p }));
    if (p === Infinity) reduced = Number.isNaN(reduced) || r <= reduced ? reduced : r;
    else reduced += r;
  }
  const total = p === Infinity || p === 1 ? reduced : p === 2 ? Math.sqrt(reduced) : reduced ** (1 / p);
  if (strict && !Number.isFinite(total)) {
    throw new LunaError(
      'ERR_ARGUMENT',
      `${where}: the total norm of order ${p} of the gradients is ${total}, so they cannot be clipped (errorIfNonfinite is set)`,
    );
  }
  const coef = max / (total + 1e-6);
  // `!(coef >= 1)` is also true for NaN, which then spreads into the gradients as in torch.
  if (!(coef >= 1)) {
    for (const x of grads) runOptim(where, () => native.scaleInPlace({ x, scale: coef }));
  }
  return total;
}
