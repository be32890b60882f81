/**
 * Gradient clipping by global norm, as `torch.nn.utils.clip_grad_norm_`.
 *
 * @packageDocumentation
 */
import { LunaError, checkBoolean, checkOptions, describe, mismatch } from '../errors';
import { isFloatDType } from '../dtype';
import { Tensor, floatData } from '../tensor';
import { checkNonNegative } from './optimizer';

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

  const grads: (Float32Array | Float64Array)[] = [];
  list.forEach((t, i) => {
    if (!(t instanceof Tensor)) throw mismatch('ERR_ARGUMENT', where, `params[${i}]`, 'a Tensor', describe(t));
    if (t.grad === null) return;
    if (!isFloatDType(t.grad.dtype)) {
      throw mismatch('ERR_DTYPE', where, `params[${i}].grad.dtype`, 'float32 or float64', t.grad.dtype);
    }
    grads.push(floatData(t.grad, where, `params[${i}].grad`));
  });
  if (grads.length === 0) return 0;

  // Accumulate in float64 whatever the gradients' dtype: the sum of squares of many float32
  // values loses digits fast in float32.
  let total: number;
  if (p === Infinity) {
    total = 0;
    for (const g of grads) {
      for (let j = 0; j < g.length; j++) {
        const a = Math.abs(g[j]);
        if (!(a <= total)) total = a; // lets NaN through, as torch's max does
      }
    }
  } else {
    let sum = 0;
    for (const g of grads) {
      if (p === 2) for (let j = 0; j < g.length; j++) sum += g[j] * g[j];
      else if (p === 1) for (let j = 0; j < g.length; j++) sum += Math.abs(g[j]);
      else for (let j = 0; j < g.length; j++) sum += Math.abs(g[j]) ** p;
    }
    total = p === 1 ? sum : p === 2 ? Math.sqrt(sum) : sum ** (1 / p);
  }
  if (strict && !Number.isFinite(total)) {
    throw new LunaError(
      'ERR_ARGUMENT',
      `${where}: the total norm of order ${p} of the gradients is ${total}, so they cannot be clipped (errorIfNonfinite is set)`,
    );
  }
  const coef = max / (total + 1e-6);
  // `!(coef >= 1)` is also true for NaN, which then spreads into the gradients as in torch.
  if (!(coef >= 1)) {
    for (const g of grads) for (let j = 0; j < g.length; j++) g[j] *= coef;
  }
  return total;
}
