/**
 * The library's global random stream for things that need a seed but were not given one:
 * dropout masks (fused attention dropout and `ops.dropout`). `manualSeed(s)` makes a whole
 * training run reproducible, as torch.manual_seed does.
 *
 * @packageDocumentation
 */
import { checkInteger } from './errors';
import { Rng, randomSeed } from './random';

let stream = new Rng(randomSeed());

/** Reseeds the global stream: the dropout masks drawn afterwards are reproducible. */
export function manualSeed(seed: number): void {
  stream = new Rng(checkInteger('manualSeed', 'seed', seed, Number.MIN_SAFE_INTEGER));
}

/** Internal: the next 53-bit seed of the global stream (for one dropout mask). */
export function nextSeed(): number {
  return stream.nextUint32() * 2097152 + (stream.nextUint32() >>> 11);
}
