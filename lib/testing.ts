/**
 * Internal hooks for the test suites. Not exported from the package entry point: tests import
 * this module by path (`../lib/testing`).
 *
 * @packageDocumentation
 */
import { checkBoolean } from './errors';

let poisonOutputs = false;

/**
 * When on, every output buffer an op allocates (forward `out`/`lse`, backward `dq`/`dk`/`dv`)
 * is filled with NaN before the kernel runs, so an element the kernel forgets to write shows up
 * as NaN instead of as a plausible zero.
 */
export function setPoisonOutputs(on: boolean): void {
  poisonOutputs = checkBoolean('setPoisonOutputs', 'on', on);
}

/** Whether output poisoning is on (see {@link setPoisonOutputs}). */
export function isPoisonOutputs(): boolean {
  return poisonOutputs;
}

/** Internal: NaN-fills `buffers` when poisoning is on. */
export function poison(...buffers: (Float32Array | Float64Array)[]): void {
  if (!poisonOutputs) return;
  for (const b of buffers) b.fill(Number.NaN);
}

/** The addon loader, re-exported so tests can call the reference kernels directly. */
export { loadNative } from './native';
