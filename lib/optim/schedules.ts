/**
 * Learning-rate schedules that set an optimizer's `lr` step by step: linear warmup followed by
 * inverse square-root decay (fairseq's `inverse_sqrt`, the schedule of the Luna MT models) and
 * linear warmup followed by linear decay (the MLM/LRA recipes' `polynomial_decay` with power 1).
 *
 * Usage: `optimizer.step(); schedule.step();` once per update. The constructor already sets
 * the learning rate of the first update.
 *
 * @packageDocumentation
 */
import { LunaError, checkNonNegativeInt, checkOptions, checkPositiveInt, describe, mismatch } from '../errors';
import { Optimizer, checkNonNegative } from './optimizer';

/** Shared mechanics: the update counter and writing the rate into the optimizer. */
abstract class Schedule {
  /** The optimizer whose `lr` this schedule sets. */
  readonly optimizer: Optimizer;
  private count = 0;

  protected constructor(where: string, optimizer: unknown) {
    if (!(optimizer instanceof Optimizer)) {
      throw mismatch('ERR_ARGUMENT', where, 'optimizer', 'an optimizer (optim.SGD, optim.Adam, optim.AdamW)', describe(optimizer));
    }
    this.optimizer = optimizer;
  }

  /** Subclasses call this at the end of their constructor: sets the rate of the first update. */
  protected start(): void {
    this.optimizer.lr = this.lrAt(0);
  }

  /** The learning rate after `step` completed updates (for the update numbered `step + 1`). */
  abstract lrAt(step: number): number;

  /** The number of `step()` calls so far. */
  get stepCount(): number {
    return this.count;
  }

  /** The learning rate the next optimizer update uses. */
  get lr(): number {
    return this.lrAt(this.count);
  }

  /** Records one completed update and sets the optimizer's rate for the next; returns it. */
  step(): number {
    this.count++;
    const lr = this.lrAt(this.count);
    this.optimizer.lr = lr;
    return lr;
  }

  /** The schedule's state (the update count), for checkpoints. */
  stateDict(): { stepCount: number } {
    return { stepCount: this.count };
  }

  /** Restores {@link Schedule.stateDict}'s state and sets the optimizer's rate to match. */
  loadStateDict(state: { stepCount: number }): void {
    const where = `${this.constructor.name}.loadStateDict`;
    const opts = checkOptions(where, state, ['stepCount']);
    this.count = checkNonNegativeInt(where, 'state.stepCount', opts.stepCount);
    this.optimizer.lr = this.lrAt(this.count);
  }

  /** For subclasses: `step` as a non-negative integer, or ERR_ARGUMENT naming `lrAt`. */
  protected checkStep(step: number): number {
    return checkNonNegativeInt(`${this.constructor.name}.lrAt`, 'step', step);
  }
}

/** Options of {@link LinearWarmupInverseSqrt}. */
export interface LinearWarmupInverseSqrtOptions {
  /** Updates of linear warmup, a positive integer. */
  warmupSteps: number;
  /** The rate reached at the end of warmup. */
  peakLr: number;
  /** The rate of the first update. Default 0. */
  initLr?: number;
}

/**
 * fairseq's `inverse_sqrt` schedule: after `t` updates the rate is
 * `initLr + t * (peakLr - initLr) / warmupSteps` while `t < warmupSteps`, then
 * `peakLr * sqrt(warmupSteps / t)`.
 */
export class LinearWarmupInverseSqrt extends Schedule {
  /** Updates of warmup. */
  readonly warmupSteps: number;
  /** The peak rate. */
  readonly peakLr: number;
  /** The starting rate. */
  readonly initLr: number;

  /**
   * @param optimizer - the optimizer to drive; its `lr` is set to `initLr` right away
   * @param options - see {@link LinearWarmupInverseSqrtOptions}
   */
  constructor(optimizer: Optimizer, options: LinearWarmupInverseSqrtOptions) {
    const where = 'LinearWarmupInverseSqrt';
    super(where, optimizer);
    const opts = checkOptions(where, options, ['warmupSteps', 'peakLr', 'initLr']);
    this.warmupSteps = checkPositiveInt(where, 'options.warmupSteps', opts.warmupSteps);
    this.peakLr = checkNonNegative(where, 'options.peakLr', opts.peakLr);
    this.initLr = checkNonNegative(where, 'options.initLr', opts.initLr ?? 0);
    this.start();
  }

  /** The learning rate after `step` completed updates. */
  lrAt(step: number): number {
    const t = this.checkStep(step);
    const w = this.warmupSteps;
    if (t < w) return this.initLr + (t * (this.peakLr - this.initLr)) / w;
    return this.peakLr * Math.sqrt(w / t);
  }
}

/** Options of {@link LinearDecay}. */
export interface LinearDecayOptions {
  /** Updates of linear warmup from 0 to `peakLr`. Default 0 (start at the peak). */
  warmupSteps?: number;
  /** The update count at which the rate reaches `endLr` (and stays there); >= warmupSteps, > 0. */
  totalSteps: number;
  /** The rate at the end of warmup. */
  peakLr: number;
  /** The final rate. Default 0. */
  endLr?: number;
}

/**
 * Linear warmup from 0 to `peakLr` over `warmupSteps` updates, then a straight line down to
 * `endLr` at `totalSteps`, constant afterwards (fairseq's `polynomial_decay` with power 1).
 */
export class LinearDecay extends Schedule {
  /** Updates of warmup. */
  readonly warmupSteps: number;
  /** Where the decay ends. */
  readonly totalSteps: number;
  /** The peak rate. */
  readonly peakLr: number;
  /** The final rate. */
  readonly endLr: number;

  /**
   * @param optimizer - the optimizer to drive; its `lr` is set right away (0 with warmup, else peakLr)
   * @param options - see {@link LinearDecayOptions}
   */
  constructor(optimizer: Optimizer, options: LinearDecayOptions) {
    const where = 'LinearDecay';
    super(where, optimizer);
    const opts = checkOptions(where, options, ['warmupSteps', 'totalSteps', 'peakLr', 'endLr']);
    this.warmupSteps = checkNonNegativeInt(where, 'options.warmupSteps', opts.warmupSteps ?? 0);
    this.totalSteps = checkPositiveInt(where, 'options.totalSteps', opts.totalSteps);
    this.peakLr = checkNonNegative(where, 'options.peakLr', opts.peakLr);
    this.endLr = checkNonNegative(where, 'options.endLr', opts.endLr ?? 0);
    if (this.totalSteps < this.warmupSteps) {
      throw new LunaError(
        'ERR_ARGUMENT',
        `${where}: options.totalSteps (${this.totalSteps}) must be at least options.warmupSteps (${this.warmupSteps})`,
      );
    }
    this.start();
  }

  /** The learning rate after `step` completed updates. */
  lrAt(step: number): number {
    const t = this.checkStep(step);
    const { warmupSteps: w, totalSteps: total, peakLr: peak, endLr: end } = this;
    if (t < w) return (peak * t) / w;
    if (t >= total) return end;
    return end + (peak - end) * (1 - (t - w) / (total - w));
  }
}

export type { Schedule };
