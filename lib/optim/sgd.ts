/**
 * Stochastic gradient descent with optional momentum, Nesterov momentum and L2 weight decay,
 * step for step the rule of `torch.optim.SGD` (with dampening 0).
 *
 * @packageDocumentation
 */
import { LunaError, checkBoolean, checkOptions, mismatch } from '../errors';
import type { Tensor } from '../tensor';
import { Optimizer, checkNonNegative } from './optimizer';

/** Options of {@link SGD}. */
export interface SGDOptions {
  /** The learning rate (required), a finite number >= 0. */
  lr: number;
  /** Momentum factor, >= 0. Default 0 (plain SGD). */
  momentum?: number;
  /** L2 penalty added to the gradient (`g + weightDecay * p`), >= 0. Default 0. */
  weightDecay?: number;
  /** Nesterov momentum; needs `momentum > 0`. Default false. */
  nesterov?: boolean;
}

const KEYS = ['lr', 'momentum', 'weightDecay', 'nesterov'] as const;

/**
 * SGD, as `torch.optim.SGD(params, lr, momentum, dampening=0, weight_decay, nesterov)`:
 * ```
 * g = grad + weightDecay * p
 * buf = g (first step) or momentum * buf + g
 * g = nesterov ? g + momentum * buf : buf          (when momentum > 0)
 * p = p - lr * g
 * ```
 */
export class SGD extends Optimizer {
  /** The momentum factor. */
  readonly momentum: number;
  /** The L2 weight decay. */
  readonly weightDecay: number;
  /** Whether the update uses Nesterov momentum. */
  readonly nesterov: boolean;
  protected readonly bufferNames: readonly string[];

  /**
   * @param params - the leaf tensors to update (float32 or float64, CPU)
   * @param options - see {@link SGDOptions}; `lr` is required
   */
  constructor(params: Tensor[], options: SGDOptions) {
    const where = 'SGD';
    const opts = checkOptions(where, options, KEYS);
    if (opts.lr === undefined) throw mismatch('ERR_ARGUMENT', where, 'options.lr', 'a finite number >= 0', 'undefined');
    const lr = checkNonNegative(where, 'options.lr', opts.lr);
    const momentum = checkNonNegative(where, 'options.momentum', opts.momentum ?? 0);
    const weightDecay = checkNonNegative(where, 'options.weightDecay', opts.weightDecay ?? 0);
    const nesterov = checkBoolean(where, 'options.nesterov', opts.nesterov ?? false);
    if (nesterov && momentum === 0) {
      throw new LunaError('ERR_ARGUMENT', `${where}: options.nesterov needs options.momentum > 0`);
    }
    super(where, params, lr);
    this.momentum = momentum;
    this.weightDecay = weightDecay;
    this.nesterov = nesterov;
    this.bufferNames = momentum > 0 ? ['momentum_buffer'] : [];
  }

  /** One update of every parameter that has a gradient. */
  step(): void {
    const { lr, momentum, weightDecay: wd, nesterov } = this;
    this.eachParamWithGrad((i, p, g) => {
      const s = this.stateFor(i);
      const first = s.step === 0;
      s.step++;
      if (momentum === 0) {
        for (let j = 0; j < p.length; j++) p[j] -= lr * (g[j] + wd * p[j]);
        return;
      }
      // As in torch, the buffer starts as a copy of the first (decayed) gradient.
      const buf = s.buffers.momentum_buffer;
      for (let j = 0; j < p.length; j++) {
        const gj = g[j] + wd * p[j];
        buf[j] = first ? gj : momentum * buf[j] + gj;
        p[j] -= lr * (nesterov ? gj + momentum * buf[j] : buf[j]);
      }
    });
  }
}
