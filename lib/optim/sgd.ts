/**
 * Stochastic gradient descent with optional momentum, dampening, Nesterov momentum and L2 weight
 * decay, step for step the rule of `torch.optim.SGD`.
 *
 * @packageDocumentation
 */
import { LunaError, checkBoolean, checkOptions, mismatch } from '../errors';
import type { Tensor } from '../tensor';
import { Optimizer, checkNonNegative } from './optimizer';
import { optimNative, runOptim } from './native';

/** Options of {@link SGD}. */
export interface SGDOptions {
  /** The learning rate (required), a finite number >= 0. */
  lr: number;
  /** Momentum factor, >= 0. Default 0 (plain SGD). */
  momentum?: number;
  /** Dampening of the momentum: the gradient enters the buffer scaled by `1 - dampening`. Default 0. */
  dampening?: number;
  /** L2 penalty added to the gradient (`g + weightDecay * p`), >= 0. Default 0. */
  weightDecay?: number;
  /** Nesterov momentum; needs `momentum > 0` and `dampening` 0 (as torch). Default false. */
  nesterov?: boolean;
}

const KEYS = ['lr', 'momentum', 'dampening', 'weightDecay', 'nesterov'] as const;

/**
 * SGD, as `torch.optim.SGD(params, lr, momentum, dampening, weight_decay, nesterov)`:
 * ```
 * g = grad + weightDecay * p
 * buf = g (first step) or momentum * buf + (1 - dampening) * g
 * g = nesterov ? g + momentum * buf : buf          (when momentum > 0)
 * p = p - lr * g
 * ```
 */
export class SGD extends Optimizer {
  /** The momentum factor. */
  readonly momentum: number;
  /** The dampening of the momentum. */
  readonly dampening: number;
  /** The L2 weight decay. */
  readonly weightDecay: number;
  /** Whether the update uses Nesterov momentum. */
  readonly nesterov: boolean;
  protected readonly bufferNames: readonly string[];

  /**
   * @param params - the leaf tensors to update (float32 or float64 on the CPU, float32 on cuda)
   * @param options - see {@link SGDOptions}; `lr` is required
   */
  constructor(params: Tensor[], options: SGDOptions) {
    const where = 'SGD';
    const opts = checkOptions(where, options, KEYS);
    if (opts.lr === undefined) throw mismatch('ERR_ARGUMENT', where, 'options.lr', 'a finite number >= 0', 'undefined');
    const lr = checkNonNegative(where, 'options.lr', opts.lr);
    const momentum = checkNonNegative(where, 'options.momentum', opts.momentum ?? 0);
    const dampening = checkNonNegative(where, 'options.dampening', opts.dampening ?? 0);
    const weightDecay = checkNonNegative(where, 'options.weightDecay', opts.weightDecay ?? 0);
    const nesterov = checkBoolean(where, 'options.nesterov', opts.nesterov ?? false);
    if (nesterov && momentum === 0) {
      throw new LunaError('ERR_ARGUMENT', `${where}: options.nesterov needs options.momentum > 0`);
    }
    if (nesterov && dampening !== 0) {
      throw new LunaError('ERR_ARGUMENT', `${where}: options.nesterov needs options.dampening 0 (got ${dampening})`);
    }
    super(where, params, lr);
    this.momentum = momentum;
    this.dampening = dampening;
    this.weightDecay = weightDecay;
    this.nesterov = nesterov;
    this.bufferNames = momentum > 0 ? ['momentum_buffer'] : [];
  }

  /**
   * One update of every parameter that has a gradient: one fused native call per parameter (on
   * the GPU for a CUDA parameter), in float64 per element with the buffer and the parameter
   * rounded to the storage type where stored, as the JS loop this replaced did.
   */
  step(): void {
    const where = `${this.name}.step`;
    const { lr, momentum, dampening, weightDecay, nesterov } = this;
    const native = optimNative();
    this.eachParamWithGrad((i, param, grad) => {
      const s = this.stateFor(i);
      // As in torch, the buffer starts as a copy of the first (decayed) gradient.
      runOptim(where, () =>
        native.sgdStep({
          param,
          grad,
          momentumBuffer: momentum > 0 ? s.buffers.momentum_buffer : null,
          lr,
          momentum,
          dampening,
          weightDecay,
          nesterov,
          firstStep: s.step === 0,
        }),
      );
      s.step++;
    });
  }
}
