/**
 * The fused softmax-attention ops of Luna: `packAttention` (few queries, many keys: P attends to
 * the context) and `unpackAttention` (many queries, few keys: X attends to the packed context).
 * Both compute softmax(scale * q k^T + mask) v per (batch, head); they differ only in which
 * kernel the addon runs. luna-math.md section 2 is the math, section 5.1 the backward.
 *
 * @packageDocumentation
 */
import { LunaError, checkFinite, checkInteger, checkOptions, describe, formatShape, mismatch } from '../errors';
import { nextSeed } from '../seed';
import { DType, Device, allocate, isFloatDType } from '../dtype';
import { Storage, Tensor, assertLive, checkTensor, floatData, makeTensor, nativeData, tensorData } from '../tensor';
import { attachNode, shouldRecord } from '../autograd';
import { AttentionBackwardArgs, AttentionForwardArgs, FloatArray, loadNative } from '../native';
import { cloneBuffer, fillBuffer, outputBuffer, runKernel } from './common';

/** Options of `packAttention` and `unpackAttention`. */
export interface AttentionOptions {
  /**
   * bool [B, keyLen], true (1) where a key is padding and must be ignored. A query row whose
   * keys are all masked gives output 0 and gradient 0.
   */
  keyPaddingMask?: Tensor | null;
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

type Kind = 'pack' | 'unpack';

/** Per-op names: the op, and what its query and key lengths are called in shape messages. */
const NAMES: Record<Kind, { op: string; lq: string; lk: string }> = {
  pack: { op: 'packAttention', lq: 'l', lk: 'm' },
  unpack: { op: 'unpackAttention', lq: 'n', lk: 'l' },
};

const OPTION_KEYS = ['keyPaddingMask', 'scale', 'dropout', 'seed'] as const;

/** Everything validation establishes about one call. */
interface Checked {
  q: Tensor;
  k: Tensor;
  v: Tensor;
  mask: Tensor | null;
  B: number;
  h: number;
  lq: number;
  lk: number;
  dh: number;
  scale: number;
  /** dropout probability and the mask's seed (seed unused when dropout is 0) */
  dropout: number;
  seed: number;
  dtype: DType;
  device: Device;
}

function validate(kind: Kind, qIn: unknown, kIn: unknown, vIn: unknown, options: unknown): Checked {
  const { op, lq: lqName, lk: lkName } = NAMES[kind];
  const q = checkTensor(op, 'q', qIn);
  const k = checkTensor(op, 'k', kIn);
  const v = checkTensor(op, 'v', vIn);
  const opts = checkOptions(op, options, OPTION_KEYS);

  if (!isFloatDType(q.dtype)) {
    throw mismatch('ERR_DTYPE', op, 'q.dtype', 'float32 or float64', q.dtype);
  }
  for (const [name, t] of [['k', k], ['v', v]] as const) {
    if (t.dtype !== q.dtype) {
      throw mismatch('ERR_DTYPE', op, `${name}.dtype`, `${q.dtype} (matching q; no implicit conversion)`, t.dtype);
    }
    if (t.device !== q.device) {
      throw mismatch('ERR_DEVICE', op, `${name}.device`, `${q.device} (matching q)`, t.device);
    }
  }

  if (q.rank !== 4) {
    throw mismatch('ERR_SHAPE', op, 'q.shape', `[B,h,${lqName},dh] (rank 4)`, formatShape(q.shape));
  }
  const [B, h, lq, dh] = q.shape;
  const ks = k.shape;
  if (k.rank !== 4 || ks[0] !== B || ks[1] !== h || ks[3] !== dh) {
    throw mismatch('ERR_SHAPE', op, 'k.shape', `${formatShape([B, h, '*', dh])} (B,h,${lkName},dh matching q)`, formatShape(ks));
  }
  const lk = ks[2];
  const vs = v.shape;
  if (v.rank !== 4 || vs[0] !== B || vs[1] !== h || vs[2] !== lk || vs[3] !== dh) {
    throw mismatch('ERR_SHAPE', op, 'v.shape', `${formatShape(ks)} (B,h,${lkName},dh matching k)`, formatShape(vs));
  }

  let mask: Tensor | null = null;
  if (opts.keyPaddingMask !== undefined && opts.keyPaddingMask !== null) {
    mask = checkTensor(op, 'options.keyPaddingMask', opts.keyPaddingMask);
    if (mask.dtype !== 'bool') {
      throw mismatch('ERR_DTYPE', op, 'options.keyPaddingMask.dtype', 'bool (1 = padding)', mask.dtype);
    }
    if (mask.rank !== 2 || mask.shape[0] !== B || mask.shape[1] !== lk) {
      throw mismatch('ERR_SHAPE', op, 'options.keyPaddingMask.shape', `${formatShape([B, lk])} (B,${lkName})`, formatShape(mask.shape));
    }
    if (mask.device !== q.device) {
      throw mismatch('ERR_DEVICE', op, 'options.keyPaddingMask.device', `${q.device} (matching q)`, mask.device);
    }
  }

  let scale: number;
  if (opts.scale === undefined) {
    // With dh = 0 the output is empty and the scale never used; avoid an infinite default.
    scale = dh > 0 ? 1 / Math.sqrt(dh) : 1;
  } else {
    scale = checkFinite(op, 'options.scale', opts.scale);
  }
  let dropout = 0;
  if (opts.dropout !== undefined) {
    dropout = checkFinite(op, 'options.dropout', opts.dropout);
    if (dropout < 0 || dropout >= 1) {
      throw mismatch('ERR_ARGUMENT', op, 'options.dropout', 'a probability in [0, 1)', describe(opts.dropout));
    }
  }
  const seed = opts.seed === undefined ? (dropout > 0 ? nextSeed() : 0) : checkInteger(op, 'options.seed', opts.seed, 0);
  return { q, k, v, mask, B, h, lq, lk, dh, scale, dropout, seed, dtype: q.dtype, device: q.device };
}

/**
 * True when the kernel has nothing to compute: an empty output, or no keys at all (then every
 * row is fully masked: output 0, lse -Infinity, zero gradients). The addon wants positive sizes,
 * so these cases are handled here.
 */
function isDegenerate(c: Checked): boolean {
  return c.B === 0 || c.h === 0 || c.lq === 0 || c.dh === 0 || c.lk === 0;
}

function attention(kind: Kind, qIn: Tensor, kIn: Tensor, vIn: Tensor, options?: AttentionOptions): Tensor {
  const c = validate(kind, qIn, kIn, vIn, options);
  const { op } = NAMES[kind];
  const { q, k, v, mask, B, h, lq, lk, dh, scale, dropout, seed, dtype, device } = c;
  const degenerate = isDegenerate(c);
  const addon = degenerate ? null : loadNative();

  // Tied key/value is recognised by object identity: the kernel then reads one buffer and
  // writes one summed gradient, and the graph records k once so it is not counted twice.
  const tied = k === v;
  const qData = nativeData(q, op, 'q');
  const kData = nativeData(k, op, 'k');
  let vData = tied ? kData : nativeData(v, op, 'v');
  if (!tied && vData === kData) {
    // Distinct tensors sharing one buffer (e.g. v = k.detach()): their gradients differ, so
    // hide the aliasing from the kernel, which would otherwise take the tied path.
    vData = cloneBuffer(op, vData, dtype);
  }
  const maskData = mask === null ? null : (nativeData(mask, op, 'options.keyPaddingMask') as unknown as Uint8Array);

  const out = outputBuffer(op, dtype, B * h * lq * dh, device);
  const lse = outputBuffer(op, dtype, B * h * lq, device);
  const fwd: AttentionForwardArgs = { q: qData, k: kData, v: vData, mask: maskData, out, lse, B, h, lq, lk, dh, scale };
  if (dropout > 0) {
    fwd.dropout = dropout;
    fwd.seed = seed;
  }
  if (addon === null) {
    fillBuffer(op, out, 0);
    fillBuffer(op, lse, Number.NEGATIVE_INFINITY);
  } else if (kind === 'pack') {
    runKernel(op, () => addon.packForward(fwd));
  } else {
    runKernel(op, () => addon.unpackForward(fwd));
  }
  const result = makeTensor(out, [B, h, lq, dh], dtype, device);

  const inputs = tied ? [q, k] : [q, k, v];
  if (!shouldRecord(inputs)) return result;

  // Retain every storage the backward reads, so disposing an input or the output after the
  // forward does not pull the data from under the graph.
  const retained: Storage[] = [];
  for (const t of [q, k, tied ? null : v, mask, result]) {
    if (t !== null) retained.push(assertLive(t, op).retain());
  }
  let saved: AttentionForwardArgs | null = fwd;

  const backward = (gradOut: Tensor): (Tensor | null)[] => {
    const where = `${op} (backward)`;
    if (saved === null) {
      throw new LunaError('ERR_DISPOSED', `${where}: the saved tensors were already released`);
    }
    const dout = nativeData(gradOut, where, 'gradient');
    const dq = outputBuffer(where, dtype, q.size, device);
    const dk = outputBuffer(where, dtype, k.size, device);
    const dv = tied ? dk : (outputBuffer(where, dtype, v.size, device));
    const args: AttentionBackwardArgs = { ...saved, dout, dq, dk, dv };
    if (addon === null) {
      fillBuffer(op, dq, 0);
      fillBuffer(op, dk, 0);
      fillBuffer(op, dv, 0);
    } else if (kind === 'pack') {
      runKernel(where, () => addon.packBackward(args));
    } else {
      runKernel(where, () => addon.unpackBackward(args));
    }
    const grads = [makeTensor(dq, q.shape, dtype, device), makeTensor(dk, k.shape, dtype, device)];
    if (!tied) grads.push(makeTensor(dv, v.shape, dtype, device));
    return grads;
  };
  const release = (): void => {
    saved = null;
    for (const s of retained) s.release();
    retained.length = 0;
  };
  attachNode(result, op, inputs, backward, release);
  return result;
}

/**
 * Luna's pack attention: the l rows of the projected sequence P attend to the m context
 * tokens. q [B,h,l,dh], k and v [B,h,m,dh] -> [B,h,l,dh]; `keyPaddingMask` is bool [B,m].
 * Pass the same tensor as k and v for Luna's tied key/value projection.
 */
export function packAttention(q: Tensor, k: Tensor, v: Tensor, options?: AttentionOptions): Tensor {
  return attention('pack', q, k, v, options);
}

/**
 * Luna's unpack attention: the n rows of X attend to the l packed rows. q [B,h,n,dh], k and v
 * [B,h,l,dh] -> [B,h,n,dh]; `keyPaddingMask` is bool [B,l] (the pack padding mask).
 * Pass the same tensor as k and v for Luna's tied key/value projection.
 */
export function unpackAttention(q: Tensor, k: Tensor, v: Tensor, options?: AttentionOptions): Tensor {
  return attention('unpack', q, k, v, options);
}
