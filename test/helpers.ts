// Shared test helpers: a per-run random seed, seeded generators, random attention inputs and
// error assertions. Not a test file itself (vitest only collects *.test.ts).
//
// Every suite draws fresh random inputs each run. The seed is printed in every failure message
// that depends on it; rerun with LUNA_TEST_SEED=<seed> to reproduce a failure exactly.
import { expect } from 'vitest';
import { tensor, type Tensor } from '../lib/index';

function parseSeed(): number {
  const env = process.env.LUNA_TEST_SEED;
  if (env !== undefined && env !== '') {
    const s = Number(env);
    if (!Number.isInteger(s) || s < 0 || s >= 2 ** 32) {
      throw new Error(`LUNA_TEST_SEED must be an integer in [0, 2^32), got ${env}`);
    }
    return s;
  }
  return Math.floor(Math.random() * 2 ** 32) >>> 0;
}

/** The run's seed (one per test file, as each file runs in its own module scope). */
export const SEED = parseSeed();

/** Text for failure messages: how to reproduce this case. */
export function where(label: string): string {
  return `[${label}; reproduce with LUNA_TEST_SEED=${SEED}]`;
}

// FNV-1a over the label so that each case has its own stream, independent of test order:
// running one test alone with the same seed sees the same numbers.
function hashLabel(label: string): number {
  let h = 0x811c9dc5;
  for (let i = 0; i < label.length; i++) {
    h ^= label.charCodeAt(i);
    h = Math.imul(h, 0x01000193) >>> 0;
  }
  return h;
}

/** A small seeded generator (mulberry32) with uniform and normal draws. */
export class Rng {
  private state: number;
  private spare: number | null = null;
  constructor(seed: number) {
    this.state = seed >>> 0;
  }
  /** Uniform in [0, 1). */
  uniform(): number {
    this.state = (this.state + 0x6d2b79f5) >>> 0;
    let t = this.state;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  }
  /** Integer in [lo, hi] inclusive. */
  int(lo: number, hi: number): number {
    return lo + Math.floor(this.uniform() * (hi - lo + 1));
  }
  /** Standard normal (Box-Muller). */
  normal(): number {
    if (this.spare !== null) {
      const s = this.spare;
      this.spare = null;
      return s;
    }
    let u = 0;
    while (u === 0) u = this.uniform();
    const v = this.uniform();
    const r = Math.sqrt(-2 * Math.log(u));
    this.spare = r * Math.sin(2 * Math.PI * v);
    return r * Math.cos(2 * Math.PI * v);
  }
  /** A 32-bit integer, e.g. to seed the library's own generators. */
  u32(): number {
    return Math.floor(this.uniform() * 2 ** 32) >>> 0;
  }
}

/** A generator for one labelled case, derived from the run's seed. */
export function rngFor(label: string): Rng {
  return new Rng((SEED ^ hashLabel(label)) >>> 0);
}

export type FloatArray = Float32Array | Float64Array;

/** n draws of N(0, scale^2) in a Float64Array. */
export function randnF64(rng: Rng, n: number, scale = 1): Float64Array {
  const a = new Float64Array(n);
  for (let i = 0; i < n; i++) a[i] = rng.normal() * scale;
  return a;
}

/**
 * A random key padding mask [B, lk] (1 = padding). With `neverEmpty`, every batch row keeps at
 * least one unmasked key, so no query row is fully masked.
 */
export function randomMask(rng: Rng, B: number, lk: number, pMask = 0.3, neverEmpty = true): Uint8Array {
  const m = new Uint8Array(B * lk);
  for (let b = 0; b < B; b++) {
    for (let j = 0; j < lk; j++) m[b * lk + j] = rng.uniform() < pMask ? 1 : 0;
    if (neverEmpty) {
      let any = false;
      for (let j = 0; j < lk; j++) if (m[b * lk + j] === 0) any = true;
      if (!any) m[b * lk + rng.int(0, lk - 1)] = 0;
    }
  }
  return m;
}

export function maxAbs(a: ArrayLike<number>): number {
  let m = 0;
  for (let i = 0; i < a.length; i++) {
    const x = Math.abs(a[i]);
    if (!(x <= m)) m = x; // NaN propagates as the max
  }
  return m;
}

/** max |a - b|, NaN if any difference is NaN (so a NaN never passes a `<=` check). */
export function maxAbsDiff(a: ArrayLike<number>, b: ArrayLike<number>): number {
  if (a.length !== b.length) throw new Error(`length mismatch ${a.length} vs ${b.length}`);
  let m = 0;
  for (let i = 0; i < a.length; i++) {
    const d = Math.abs(a[i] - b[i]);
    if (Number.isNaN(d)) return NaN;
    if (d > m) m = d;
  }
  return m;
}

/** Index of the first element that is not finite, or -1. */
export function firstNonFinite(a: ArrayLike<number>): number {
  for (let i = 0; i < a.length; i++) if (!Number.isFinite(a[i])) return i;
  return -1;
}

/** Asserts that fn throws a LunaError-shaped error with the given code (and message pattern). */
export function expectLunaError(fn: () => unknown, code: string, message?: RegExp, ctx = ''): Error {
  let caught: unknown = undefined;
  let threw = false;
  try {
    fn();
  } catch (e) {
    threw = true;
    caught = e;
  }
  expect(threw, `expected ${code} to be thrown ${ctx}`).toBe(true);
  const err = caught as { name?: string; code?: string; message?: string };
  expect(err, `expected an Error object ${ctx}`).toBeInstanceOf(Error);
  expect(err.code, `wrong error code (message: ${err.message}) ${ctx}`).toBe(code);
  if (message) expect(err.message, `message should match ${message} ${ctx}`).toMatch(message);
  return caught as Error;
}

/** Async form of expectLunaError for promise-returning calls. */
export async function expectLunaErrorAsync(fn: () => Promise<unknown>, code: string, message?: RegExp, ctx = ''): Promise<void> {
  let caught: unknown = undefined;
  let threw = false;
  try {
    await fn();
  } catch (e) {
    threw = true;
    caught = e;
  }
  expect(threw, `expected ${code} to be thrown ${ctx}`).toBe(true);
  const err = caught as { code?: string; message?: string };
  expect(err.code, `wrong error code (message: ${err.message}) ${ctx}`).toBe(code);
  if (message) expect(err.message, `message should match ${message} ${ctx}`).toMatch(message);
}

/** Element-wise exact equality of two typed arrays (bitwise for floats, NaN == NaN, -0 != 0). */
export function firstBitwiseDifference(a: FloatArray, b: FloatArray): number {
  if (a.length !== b.length) return Math.min(a.length, b.length);
  const ua = new Uint8Array(a.buffer, a.byteOffset, a.byteLength);
  const ub = new Uint8Array(b.buffer, b.byteOffset, b.byteLength);
  const w = a.BYTES_PER_ELEMENT;
  for (let i = 0; i < ua.length; i++) if (ua[i] !== ub[i]) return Math.floor(i / w);
  return -1;
}

// ---- Tensor helpers (these need lib/) ----

export type FloatDtype = 'float32' | 'float64';

/** A tensor of N(0, scale^2) draws from `rng`. */
export function randTensor(
  rng: Rng,
  shape: readonly number[],
  opts: { dtype?: FloatDtype; requiresGrad?: boolean; scale?: number } = {},
): Tensor {
  const n = shape.reduce((a, b) => a * b, 1);
  const dtype = opts.dtype ?? 'float64';
  const data = randnF64(rng, n, opts.scale ?? 1);
  const typed = dtype === 'float64' ? data : Float32Array.from(data);
  return tensor(typed, { shape, dtype, requiresGrad: opts.requiresGrad ?? false });
}

/** A bool key padding mask tensor [B, lk]. */
export function maskTensor(m: Uint8Array, B: number, lk: number): Tensor {
  return tensor(m, { shape: [B, lk], dtype: 'bool' });
}

/** The values of a tensor as a plain number array. */
export function values(t: Tensor): number[] {
  return Array.from(t.dataSync() as ArrayLike<number>);
}

/** Number of elements of a shape. */
export function shapeSize(shape: readonly number[]): number {
  return shape.reduce((p, n) => p * n, 1);
}

/** The multi-index of flat (row-major) index `i` in `shape`. */
export function unravel(i: number, shape: readonly number[]): number[] {
  const idx = new Array<number>(shape.length);
  for (let d = shape.length - 1; d >= 0; d--) {
    idx[d] = i % shape[d];
    i = Math.floor(i / shape[d]);
  }
  return idx;
}
