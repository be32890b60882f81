/**
 * Full softmax attention, the baseline Luna is measured against, with the same care: fused
 * flash-style kernels (the n x m probability matrix is never stored), the same thread pool,
 * float32 and float64, key padding mask, causal mask, dropout and a deterministic backward.
 * luna-math.md section 5.1 is the math of the backward.
 *
 * @packageDocumentation
 */
import { LunaError, checkBoolean, checkFinite, checkInteger, checkOptions, describe, formatShape, mismatch } from '../errors';
import { nextSeed } from '../seed';
import { DType, Device, isFloatDType } from '../dtype';
import { Storage, Tensor, assertLive, checkTensor, floatData, makeTensor, nativeData, tensorData } from '../tensor';
import { attachNode, shouldRecord } from '../autograd';
import { loadNative } from '../native';
import type { SoftmaxBackwardArgs, SoftmaxForwardArgs } from '../native-ops';
import { cloneBuffer, fillBuffer, outputBuffer, runKernel } from './common';

/** Options of {@link softmaxAttention}. */
export interface SoftmaxAttentionOptions {
  /**
   * bool [B, m], true (1) where a key is padding and must be ignored. A query row that sees no
   * key (all masked, or none allowed by `causal`) gives output 0 and gradient 0.
   */
  keyPaddingMask?: Tensor | null;
  /**
   * Causal mask: query i sees keys j <= i + (m - n), the two sequences aligned at their ends
   * (for n == m, torch's `is_causal`). With n > m the first n - m queries see no key (output 0).
   * Default false.
   */
  causal?: boolean;
  /** Multiplies the logits q k^T. Must be finite. Default 1/sqrt(dh). */
  scale?: number;
  /**
   * Dropout probability on the attention probabilities, in [0, 1) (default 0). Applied inside
   * the fused kernel after the softmax; the backward regenerates the same mask from the seed.
   */
  dropout?: number;
  /** Seed of the dropout mask (a non-negative safe integer); default: drawn from the global stream (see manualSeed). */
  seed?: number;
}

const OP = 'softmaxAttention';
const OPTION_KEYS = ['keyPaddingMask', 'causal', 'scale', 'dropout', 'seed'] as const;

/** Everything validation establishes about one call. */
interface Checked {
  q: Tensor;
  k: Tensor;
  v: Tensor;
  mask: Tensor | null;
  B: number;
  h: number;
  n: number;
  m: number;
  dh: number;
  causal: boolean;
  scale: number;
  /** dropout probability and the mask's seed (seed unused when dropout is 0) */
  dropout: number;
  seed: number;
  dtype: DType;
  device: Device;
}

function validate(qIn: unknown, kIn: unknown, vIn: unknown, options: unknown): Checked {
  const q = checkTensor(OP, 'q', qIn);
  const k = checkTensor(OP, 'k', kIn);
  const v = checkTensor(OP, 'v', vIn);
  const opts = checkOptions(OP, options, OPTION_KEYS);

  if (!isFloatDType(q.dtype)) {
    throw mismatch('ERR_DTYPE', OP, 'q.dtype', 'float32 or float64', q.dtype);
  }
  for (const [name, t] of [['k', k], ['v', v]] as const) {
    if (t.dtype !== q.dtype) {
      throw mismatch('ERR_DTYPE', OP, `${name}.dtype`, `${q.dtype} (matching q; no implicit conversion)`, t.dtype);
    }
    if (t.device !== q.device) {
      throw mismatch('ERR_DEVICE', OP, `${name}.device`, `${q.device} (matching q)`, t.device);
    }
  }

  if (q.rank !== 4) {
    throw mismatch('ERR_SHAPE', OP, 'q.shape', '[B,h,n,dh] (rank 4)', formatShape(q.shape));
  }
  const [B, h, n, dh] = q.shape;
  const ks = k.shape;
  if (k.rank !== 4 || ks[0] !== B || ks[1] !== h || ks[3] !== dh) {
    throw mismatch('ERR_SHAPE', OP, 'k.shape', `${formatShape([B, h, '*', dh])} (B,h,m,dh matching q)`, formatShape(ks));
  }
  const m = ks[2];
  const vs = v.shape;
  if (v.rank !== 4 || vs[0] !== B || vs[1] !== h || vs[2] !== m || vs[3] !== dh) {
    throw mismatch('ERR_SHAPE', OP, 'v.shape', `${formatShape(ks)} (B,h,m,dh matching k)`, formatShape(vs));
  }

  let mask: Tensor | null = null;
  if (opts.keyPaddingMask !== undefined && opts.keyPaddingMask !== null) {
    mask = checkTensor(OP, 'options.keyPaddingMask', opts.keyPaddingMask);
    if (mask.dtype !== 'bool') {
      throw mismatch('ERR_DTYPE', OP, 'options.keyPaddingMask.dtype', 'bool (1 = padding)', mask.dtype);
    }
    if (mask.rank !== 2 || mask.shape[0] !== B || mask.shape[1] !== m) {
      throw mismatch('ERR_SHAPE', OP, 'options.keyPaddingMask.shape', `${formatShape([B, m])} (B,m)`, formatShape(mask.shape));
    }
    if (mask.device !== q.device) {
      throw mismatch('ERR_DEVICE', OP, 'options.keyPaddingMask.device', `${q.device} (matching q)`, mask.device);
    }
  }

  const causal = opts.causal === undefined ? false : checkBoolean(OP, 'options.causal', opts.causal);
  let scale: number;
  if (opts.scale === undefined) {
    // With dh = 0 the output is empty and the scale never used; avoid an infinite default.
    scale = dh > 0 ? 1 / Math.sqrt(dh) : 1;
  } else {
    scale = checkFinite(OP, 'options.scale', opts.scale);
  }
  let dropout = 0;
  if (opts.dropout !== undefined) {
    dropout = checkFinite(OP, 'options.dropout', opts.dropout);
    if (dropout < 0 || dropout >= 1) {
      throw mismatch('ERR_ARGUMENT', OP, 'options.dropout', 'a probability in [0, 1)', describe(opts.dropout));
    }
  }
  const seed = opts.seed === undefined ? (dropout > 0 ? nextSeed() : 0) : checkInteger(OP, 'options.seed', opts.seed, 0);
  return { q, k, v, mask, B, h, n, m, dh, causal, scale, dropout, seed, dtype: q.dtype, device: q.device };
}

/**
 * Full softmax attention: softmax(scale * q k^T + mask) v per (batch, head), computed by fused
 * flash-style kernels that never store the n x m probabilities (the forward saves the row
 * log-sum-exp; the backward recomputes the probabilities from it).
 *
 * q [B,h,n,dh], k and v [B,h,m,dh] -> [B,h,n,dh]. `keyPaddingMask` is bool [B,m]; `causal`
 * lets query i see keys j <= i + (m - n). Pass the same tensor as k and v for a tied key/value
 * projection (one buffer read, one summed gradient). Differentiable in q, k and v.
 *
 * @throws LunaError ERR_SHAPE, ERR_DTYPE, ERR_DEVICE or ERR_ARGUMENT on bad arguments.
 * @example
 * const y = ops.softmaxAttention(q, k, v, { causal: true });
 */
export function softmaxAttention(q: Tensor, k: Tensor, v: Tensor, options?: SoftmaxAttentionOptions): Tensor {
  const c = validate(q, k, v, options);
  const { mask, B, h, n, m, dh, causal, scale, dropout, seed, dtype, device } = c;
  // Nothing to compute: an empty output, or no keys at all (then every row sees no key: output
  // 0, lse -Infinity, zero gradients). The addon wants positive sizes.
  const degenerate = B === 0 || h === 0 || n === 0 || dh === 0 || m === 0;
  const addon = degenerate ? null : loadNative();

  // Tied key/value is recognised by object identity: the kernel then reads one buffer and
  // writes one summed gradient, and the graph records k once so it is not counted twice.
  const tied = c.k === c.v;
  const qData = nativeData(c.q, OP, 'q');
  const kData = nativeData(c.k, OP, 'k');
  let vData = tied ? kData : nativeData(c.v, OP, 'v');
  if (!tied && vData === kData) {
    // Distinct tensors sharing one buffer (e.g. v = k.detach()): their gradients differ, so
    // hide the aliasing from the kernel, which would otherwise take the tied path.
    vData = cloneBuffer(OP, vData, dtype);
  }
  const maskData = mask === null ? null : (nativeData(mask, OP, 'options.keyPaddingMask') as unknown as Uint8Array);

  const out = outputBuffer(OP, dtype, B * h * n * dh, device);
  const lse = outputBuffer(OP, dtype, B * h * n, device);
  const fwd: SoftmaxForwardArgs = { q: qData, k: kData, v: vData, mask: maskData, out, lse, B, h, lq: n, lk: m, dh, scale, causal };
  if (dropout > 0) {
    fwd.dropout = dropout;
    fwd.seed = seed;
  }
  if (addon === null) {
    fillBuffer(OP, out, 0);
    fillBuffer(OP, lse, Number.NEGATIVE_INFINITY);
  } else {
    runKernel(OP, () => addon.softmaxForward(fwd));
  }
  const result = makeTensor(out, [B, h, n, dh], dtype, device);

  const inputs = tied ? [c.q, c.k] : [c.q, c.k, c.v];
  if (!shouldRecord(inputs)) return result;

  // Retain every storage the backward reads, so disposing an input or the output after the
  // forward does not pull the data from under the graph.
  const retained: Storage[] = [];
  for (const t of [c.q, c.k, tied ? null : c.v, mask, result]) {
    if (t !== null) retained.push(assertLive(t, OP).retain());
  }
  let saved: SoftmaxForwardArgs | null = fwd;

  const backward = (gradOut: Tensor): (Tensor | null)[] => {
    const where = `${OP} (backward)`;
    if (saved === null) {
      throw new LunaError('ERR_DISPOSED', `${where}: the saved tensors were already released`);
    }
    const dout = nativeData(gradOut, where, 'gradient');
    const dq = outputBuffer(where, dtype, c.q.size, device);
    const dk = outputBuffer(where, dtype, c.k.size, device);
    const dv = tied ? dk : outputBuffer(where, dtype, c.v.size, device);
    const args: SoftmaxBackwardArgs = { ...saved, dout, dq, dk, dv };
    if (addon === null) {
      fillBuffer(OP, dq, 0);
      fillBuffer(OP, dk, 0);
      fillBuffer(OP, dv, 0);
    } else {
      runKernel(where, () => addon.softmaxBackward(args));
    }
    const grads = [makeTensor(dq, c.q.shape, dtype, device), makeTensor(dk, c.k.shape, dtype, device)];
    if (!tied) grads.push(makeTensor(dv, c.v.shape, dtype, device));
    return grads;
  };
  const release = (): void => {
    saved = null;
    for (const s of retained) s.release();
    retained.length = 0;
  };
  attachNode(result, OP, inputs, backward, release);
  return result;
}

/** The softmax-attention ops, spread into the `ops` namespace by lib/ops/index.ts. */
export const softmaxOps = { softmaxAttention };
