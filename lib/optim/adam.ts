/**
 * Adam and AdamW, step for step the rules of `torch.optim.Adam` and `torch.optim.AdamW`
 * (amsgrad off): the same bias corrections, the same placement of `eps`, and weight decay as
 * an L2 term in the gradient (Adam) or as a decoupled shrink of the weights (AdamW).
 *
 * @packageDocumentation
 */
import { checkOptions, describe, mismatch } from '../errors';
import type { Tensor } from '../tensor';
import { Optimizer, checkNonNegative } from './optimizer';
import { optimNative, runOptim } from './native';

/** Options of {@link Adam} and {@link AdamW}. */
export interface AdamOptions {
  /** The learning rate, a finite number >= 0. Default 1e-3. */
  lr?: number;
  /** Decay rates of the first and second moment estimates, each in [0, 1). Default [0.9, 0.999]. */
  betas?: readonly [number, number];
  /** Added to the denominator for stability, >= 0. Default 1e-8. */
  eps?: number;
  /**
   * Weight decay, >= 0. Adam adds `weightDecay * p` to the gradient (default 0); AdamW
   * multiplies the weights by `1 - lr * weightDecay` before the update (default 0.01).
   */
  weightDecay?: number;
}

const KEYS = ['lr', 'betas', 'eps', 'weightDecay'] as const;

function checkBetas(where: string, value: unknown): [number, number] {
  const ok =
    Array.isArray(value) &&
    value.length === 2 &&
    value.every((b) => typeof b === 'number' && Number.isFinite(b) && b >= 0 && b < 1);
  if (!ok) throw mismatch('ERR_ARGUMENT', where, 'options.betas', 'two numbers in [0, 1)', describe(value));
  return [value[0] as number, value[1] as number];
}

/** The shared update; `decoupled` selects AdamW's weight decay. */
abstract class AdamBase extends Optimizer {
  /** The moment decay rates. */
  readonly betas: readonly [number, number];
  /** The denominator's stabilizer. */
  readonly eps: number;
  /** The weight decay (L2 for Adam, decoupled for AdamW). */
  readonly weightDecay: number;
  protected readonly bufferNames: readonly string[] = ['exp_avg', 'exp_avg_sq'];
  private readonly decoupled: boolean;

  protected constructor(where: string, params: unknown, options: unknown, decoupled: boolean, defaultDecay: number) {
    const opts = checkOptions(where, options, KEYS);
    const lr = checkNonNegative(where, 'options.lr', opts.lr ?? 1e-3);
    const betas = checkBetas(where, opts.betas ?? [0.9, 0.999]);
    const eps = checkNonNegative(where, 'options.eps', opts.eps ?? 1e-8);
    const weightDecay = checkNonNegative(where, 'options.weightDecay', opts.weightDecay ?? defaultDecay);
    super(where, params, lr);
    this.betas = Object.freeze(betas) as readonly [number, number];
    this.eps = eps;
    this.weightDecay = weightDecay;
    this.decoupled = decoupled;
  }

  /**
   * One update of every parameter that has a gradient: one fused native call per parameter
   * (on the GPU for a CUDA parameter), computing per element, in float64 and in this order,
   * ```
   * g = grad + l2 * p;  p *= shrink                       (l2 = wd for Adam; shrink = 1 - lr * wd for AdamW)
   * m = beta1 * m + (1 - beta1) * g;  v = beta2 * v + (1 - beta2) * g * g
   * p -= (lr / bc1) * m / (sqrt(v) / sqrt(bc2) + eps)
   * ```
   * with p, m and v rounded to the storage type where stored: the rules and roundings of the
   * JS loop this replaced, bit for bit.
   */
  step(): void {
    const where = `${this.name}.step`;
    const lr = this.lr;
    const [beta1, beta2] = this.betas;
    const { eps, weightDecay, decoupled } = this;
    const native = optimNative();
    this.eachParamWithGrad((i, param, grad) => {
      const s = this.stateFor(i);
      const t = s.step + 1;
      // torch computes lr / (1 - beta1^t) and sqrt(v) / sqrt(1 - beta2^t) + eps, in that form;
      // eps is added after the correction, which matters when v is tiny. The powers are taken
      // here, with JS's own `**`, so that the update is the one the JS loop made (the C
      // library's pow differs from V8's in the last bit for some (beta, t)).
      runOptim(where, () =>
        native.adamStep({
          param,
          grad,
          expAvg: s.buffers.exp_avg,
          expAvgSq: s.buffers.exp_avg_sq,
          lr,
          beta1,
          beta2,
          eps,
          weightDecay,
          decoupled,
          biasCorrection1: 1 - beta1 ** t,
          biasCorrection2: 1 - beta2 ** t,
        }),
      );
      s.step = t;
    });
  }
}

/**
 * Adam (Kingma & Ba), as `torch.optim.Adam(params, lr, betas, eps, weight_decay)`:
 * ```
 * g = grad + weightDecay * p
 * m = beta1 * m + (1 - beta1) * g;   v = beta2 * v + (1 - beta2) * g^2
 * p = p - lr / (1 - beta1^t) * m / (sqrt(v) / sqrt(1 - beta2^t) + eps)
 * ```
 */
export class Adam extends AdamBase {
  /**
   * @param params - the leaf tensors to update (float32 or float64 on the CPU, float32 on cuda)
   * @param options - see {@link AdamOptions}; weightDecay defaults to 0
   */
  constructor(params: Tensor[], options?: AdamOptions) {
    super('Adam', params, options, false, 0);
  }
}

/**
 * AdamW (Loshchilov & Hutter), as `torch.optim.AdamW`: the Adam update on the raw gradient,
 * after shrinking the weights by `1 - lr * weightDecay`.
 */
export class AdamW extends AdamBase {
  /**
   * @param params - the leaf tensors to update (float32 or float64 on the CPU, float32 on cuda)
   * @param options - see {@link AdamOptions}; weightDecay defaults to 0.01
   */
  constructor(params: Tensor[], options?: AdamOptions) {
    super('AdamW', params, options, true, 0.01);
  }
}
