// Direct calls into the raw addon (native/INTERFACE.md) for the reference-parity, poisoning and
// determinism suites: allocate outputs (NaN-poisoned by default, so an element the kernel never
// writes shows up), call a kernel, return the outputs.
import { loadNative, type AttentionBackwardArgs, type NativeAddon } from '../lib/native';
import type { FloatArray } from './helpers';

// lib/native.ts loads the addon lazily; the tests want it loaded (a load failure fails them).
export const addon: NativeAddon = loadNative();

export type Kernel = 'pack' | 'unpack' | 'reference';

export interface Problem {
  q: FloatArray;
  k: FloatArray;
  v: FloatArray; // the same array as k when tied
  mask: Uint8Array | null;
  B: number;
  h: number;
  lq: number;
  lk: number;
  dh: number;
  scale: number;
}

function alloc(like: FloatArray, n: number, poison: boolean): FloatArray {
  const a = like instanceof Float64Array ? new Float64Array(n) : new Float32Array(n);
  if (poison) a.fill(NaN);
  return a;
}

/** Runs a forward kernel; returns { out, lse }. */
export function forward(kernel: Kernel, p: Problem, poison = true): { out: FloatArray; lse: FloatArray } {
  const out = alloc(p.q, p.B * p.h * p.lq * p.dh, poison);
  const lse = alloc(p.q, p.B * p.h * p.lq, poison);
  const args = { ...p, out, lse };
  if (kernel === 'pack') addon.packForward(args);
  else if (kernel === 'unpack') addon.unpackForward(args);
  else addon.referenceForward(args);
  return { out, lse };
}

/**
 * Runs a backward kernel from a forward's out/lse; returns { dq, dk, dv } (dk === dv when tied,
 * holding dk + dv, as the interface specifies).
 */
export function backward(
  kernel: Kernel,
  p: Problem,
  out: FloatArray,
  lse: FloatArray,
  dout: FloatArray,
  poison = true,
): { dq: FloatArray; dk: FloatArray; dv: FloatArray } {
  const dq = alloc(p.q, p.q.length, poison);
  const dk = alloc(p.q, p.k.length, poison);
  const dv = p.k === p.v ? dk : alloc(p.q, p.v.length, poison);
  const args: AttentionBackwardArgs = { ...p, out, lse, dout, dq, dk, dv };
  if (kernel === 'pack') addon.packBackward(args);
  else if (kernel === 'unpack') addon.unpackBackward(args);
  else addon.referenceBackward(args);
  return { dq, dk, dv };
}

/** The same problem with every float array converted to Float64Array (tying preserved). */
export function toF64(p: Problem): Problem {
  const k = Float64Array.from(p.k);
  return { ...p, q: Float64Array.from(p.q), k, v: p.v === p.k ? k : Float64Array.from(p.v) };
}
