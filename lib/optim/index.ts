/**
 * Optimizers, gradient clipping and learning-rate schedules, gathered into the `optim`
 * namespace object of the public API.
 *
 * @packageDocumentation
 */
import { Optimizer } from './optimizer';
import { SGD } from './sgd';
import { Adam, AdamW } from './adam';
import { clipGradNorm } from './clip';
import { LinearDecay, LinearWarmupInverseSqrt } from './schedules';

export { Optimizer, SGD, Adam, AdamW, clipGradNorm, LinearDecay, LinearWarmupInverseSqrt };
export type { ParamState } from './optimizer';
export type { SGDOptions } from './sgd';
export type { AdamOptions } from './adam';
export type { ClipGradNormOptions } from './clip';
export type { LinearDecayOptions, LinearWarmupInverseSqrtOptions, Schedule } from './schedules';

/**
 * The optimizers (`SGD`, `Adam`, `AdamW`, all subclasses of `Optimizer`), `clipGradNorm`, and
 * the schedules `LinearWarmupInverseSqrt` and `LinearDecay`.
 *
 * @example
 * const opt = new optim.AdamW(model.parameters(), { lr: 5e-4 });
 * const sched = new optim.LinearWarmupInverseSqrt(opt, { warmupSteps: 4000, peakLr: 5e-4 });
 * loss.backward(); optim.clipGradNorm(model.parameters(), 1.0); opt.step(); sched.step(); opt.zeroGrad();
 */
export const optim = Object.freeze({
  Optimizer,
  SGD,
  Adam,
  AdamW,
  /** Rescales the gradients in place so their joint L2 norm is at most `maxNorm`; returns the norm before. */
  clipGradNorm,
  LinearWarmupInverseSqrt,
  LinearDecay,
});

/** The type of the `optim` namespace object. */
export type Optim = typeof optim;
