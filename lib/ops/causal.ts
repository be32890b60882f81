/**
 * Causal Luna attention (luna-math.md section 3): Luna's decoder self-attention, where position t
 * packs its own prefix into the l slots of P by a running mean weighted by Φ = φ(Z), and then
 * attends to those l packed rows. `causalLunaAttention` is the differentiable op over a whole
 * sequence; `CausalLunaState` runs the same math incrementally, a few tokens at a time, for
 * decoding (inference only).
 *
 * @packageDocumentation
 */
import { LunaError, checkFinite, checkInteger, checkOptions, describe, formatShape, mismatch } from '../errors';
import { nextSeed } from '../seed';
import { DType, Device, allocate, isFloatDType } from '../dtype';
import { giveBack } from '../pool';
import { Storage, Tensor, assertLive, checkTensor, floatData, makeTensor, nativeData, tensorData } from '../tensor';
import { attachNode, shouldRecord } from '../autograd';
import { FloatArray, loadNative } from '../native';
import type { CausalBackwardArgs, CausalForwardArgs } from '../native-ops';
import { cloneBuffer, fillBuffer, outputBuffer, runKernel, zeroBuffer } from './common';
import { deviceClone, download, isDeviceArray, upload } from '../device';

/** The feature map φ of the pack logits: softplus with β = ln 2, or elu + 1. */
export type CausalActivation = 'softplus' | 'elu';

/** Options of {@link causalLunaAttention}. */
export interface CausalLunaOptions {
  /**
   * bool [B, l], true (1) where a P slot is padding: it is masked out of the unpack softmax
   * (the pack still computes it). When every slot of a batch element is masked, its outputs are
   * 0 and its gradients 0.
   */
  packPaddingMask?: Tensor | null;
  /** Multiplies both the pack logits Z = kc pqᵀ and the unpack logits. Finite. Default 1/sqrt(dh). */
  scale?: number;
  /**
   * φ: `'softplus'` (default; log2(1 + 2^z), i.e. softplus with β = ln 2, which returns z where
   * βz > 20 as PyTorch does) or `'elu'` (elu(z) + 1).
   */
  activation?: CausalActivation;
  /**
   * Dropout probability in [0, 1) (default 0), applied inside the kernel to Φ (one mask shared
   * by the key and value aggregations) and to the unpack probabilities (a second mask); the
   * backward regenerates both from the seed.
   */
  dropout?: number;
  /** Seed of the dropout masks (a non-negative safe integer); default: drawn from the global stream (see manualSeed). */
  seed?: number;
}

/** Options of the {@link CausalLunaState} constructor. */
export interface CausalLunaStateOptions {
  /** bool [B, l], as in {@link CausalLunaOptions.packPaddingMask}. */
  packPaddingMask?: Tensor | null;
  /** As in {@link CausalLunaOptions.scale}. Default 1/sqrt(dh). */
  scale?: number;
  /** As in {@link CausalLunaOptions.activation}. Default `'softplus'`. */
  activation?: CausalActivation;
}

/**
 * @internal Tests only: the kernel's rows per chunk (undefined = its measured default). Small odd
 * chunks exercise the chunk boundaries at sizes a float64 gradcheck can afford.
 */
let chunkForTesting: number | undefined;

/** @internal Sets (or with undefined clears) the chunk length the causal kernels are called with. */
export function setCausalChunkForTesting(chunk: number | undefined): void {
  chunkForTesting = chunk === undefined ? undefined : checkInteger('setCausalChunkForTesting', 'chunk', chunk, 1, 2 ** 31 - 1);
}

const OP = 'causalLunaAttention';
const STATE = 'CausalLunaState';
const OPTION_KEYS = ['packPaddingMask', 'scale', 'activation', 'dropout', 'seed'] as const;
const STATE_OPTION_KEYS = ['packPaddingMask', 'scale', 'activation'] as const;

/** The P-slot mask option: a live bool [B, l] tensor on `device`, or null. */
function checkMask(where: string, value: unknown, B: number, l: number, device: Device): Tensor | null {
  if (value === undefined || value === null) return null;
  const mask = checkTensor(where, 'options.packPaddingMask', value);
  if (mask.dtype !== 'bool') {
    throw mismatch('ERR_DTYPE', where, 'options.packPaddingMask.dtype', 'bool (1 = padding)', mask.dtype);
  }
  if (mask.rank !== 2 || mask.shape[0] !== B || mask.shape[1] !== l) {
    throw mismatch('ERR_SHAPE', where, 'options.packPaddingMask.shape', `${formatShape([B, l])} (B,l)`, formatShape(mask.shape));
  }
  if (mask.device !== device) {
    throw mismatch('ERR_DEVICE', where, 'options.packPaddingMask.device', `${device} (matching pq)`, mask.device);
  }
  return mask;
}

function checkScale(where: string, value: unknown, dh: number): number {
  // With dh = 0 nothing is computed; avoid an infinite default.
  if (value === undefined) return dh > 0 ? 1 / Math.sqrt(dh) : 1;
  return checkFinite(where, 'options.scale', value);
}

function checkActivation(where: string, value: unknown): CausalActivation {
  if (value === undefined) return 'softplus';
  if (value !== 'softplus' && value !== 'elu') {
    throw mismatch('ERR_ARGUMENT', where, 'options.activation', '"softplus" or "elu"', describe(value));
  }
  return value;
}

/** Throws ERR_DTYPE / ERR_DEVICE unless `t` has `like`'s dtype and device (no implicit conversion). */
function checkKind(where: string, name: string, t: Tensor, like: { dtype: DType; device: Device }, likeName: string): void {
  if (t.dtype !== like.dtype) {
    throw mismatch('ERR_DTYPE', where, `${name}.dtype`, `${like.dtype} (matching ${likeName}; no implicit conversion)`, t.dtype);
  }
  if (t.device !== like.device) {
    throw mismatch('ERR_DEVICE', where, `${name}.device`, `${like.device} (matching ${likeName})`, t.device);
  }
}

/** Throws ERR_SHAPE unless `t` is rank 4 and matches `want` wherever `want` holds a number. */
function checkShape4(where: string, name: string, t: Tensor, want: readonly (number | string)[], what: string): void {
  const ok = t.rank === 4 && want.every((w, i) => typeof w === 'string' || t.shape[i] === w);
  if (!ok) throw mismatch('ERR_SHAPE', where, `${name}.shape`, `${formatShape(want)} (${what})`, formatShape(t.shape));
}

/** Everything validation establishes about one call. */
interface Checked {
  q: Tensor;
  k: Tensor;
  v: Tensor;
  kc: Tensor;
  pq: Tensor;
  mask: Tensor | null;
  B: number;
  h: number;
  n: number;
  l: number;
  dh: number;
  scale: number;
  activation: CausalActivation;
  dropout: number;
  seed: number;
  dtype: DType;
  device: Device;
}

function validate(qIn: unknown, kIn: unknown, vIn: unknown, kcIn: unknown, pqIn: unknown, options: unknown): Checked {
  const q = checkTensor(OP, 'q', qIn);
  const k = checkTensor(OP, 'k', kIn);
  const v = checkTensor(OP, 'v', vIn);
  const kc = checkTensor(OP, 'kc', kcIn);
  const pq = checkTensor(OP, 'pq', pqIn);
  const opts = checkOptions(OP, options, OPTION_KEYS);
  if (!isFloatDType(q.dtype)) throw mismatch('ERR_DTYPE', OP, 'q.dtype', 'float32 or float64', q.dtype);
  for (const [name, t] of [['k', k], ['v', v], ['kc', kc], ['pq', pq]] as const) checkKind(OP, name, t, q, 'q');
  if (q.rank !== 4) throw mismatch('ERR_SHAPE', OP, 'q.shape', '[B,h,n,dh] (rank 4)', formatShape(q.shape));
  const [B, h, n, dh] = q.shape;
  for (const [name, t] of [['k', k], ['v', v], ['kc', kc]] as const) checkShape4(OP, name, t, q.shape, 'B,h,n,dh matching q');
  checkShape4(OP, 'pq', pq, [B, h, 'l', dh], 'B,h,l,dh matching q');
  const l = pq.shape[2];
  const mask = checkMask(OP, opts.packPaddingMask, B, l, q.device);
  const scale = checkScale(OP, opts.scale, dh);
  const activation = checkActivation(OP, opts.activation);
  let dropout = 0;
  if (opts.dropout !== undefined) {
    dropout = checkFinite(OP, 'options.dropout', opts.dropout);
    if (dropout < 0 || dropout >= 1) {
      throw mismatch('ERR_ARGUMENT', OP, 'options.dropout', 'a probability in [0, 1)', describe(opts.dropout));
    }
  }
  const seed = opts.seed === undefined ? (dropout > 0 ? nextSeed() : 0) : checkInteger(OP, 'options.seed', opts.seed, 0);
  return { q, k, v, kc, pq, mask, B, h, n, l, dh, scale, activation, dropout, seed, dtype: q.dtype, device: q.device };
}

/**
 * Causal Luna attention (luna-math.md section 3, the core of fairseq's LunarCausalAttention):
 * per batch element and head, with 1-based positions t,
 * ```
 * Φ = φ(scale · kc pqᵀ)                                   [n, l]  (dropout on Φ)
 * T[t, r] = scale · (1/t) Σ_{j≤t} (q_t · k_j) Φ[j, r]        (−∞ where packPaddingMask[b, r])
 * O_t = (1/t) Σ_{j≤t} (softmax_r(T_t) · Φ_j) v_j           (dropout on the softmax)
 * ```
 * q, k, v, kc [B,h,n,dh] are the unscaled projections (query, key, value, pack key), pq
 * [B,h,l,dh] the unscaled pack query; returns o [B,h,n,dh]. Pass the same tensor as k and v for
 * the tied key/value projection (it then gets one gradient, dk + dv). Differentiable in all five
 * inputs. Runs the fused chunked kernel: O(n·l·dh) time per head, and no [n, l, dh] prefix
 * tensor is ever formed.
 *
 * @throws LunaError ERR_SHAPE, ERR_DTYPE, ERR_DEVICE or ERR_ARGUMENT for bad arguments or options.
 */
export function causalLunaAttention(q: Tensor, k: Tensor, v: Tensor, kc: Tensor, pq: Tensor, options?: CausalLunaOptions): Tensor {
  const c = validate(q, k, v, kc, pq, options);
  const { B, h, n, l, dh, scale, activation, dropout, seed, dtype, device, mask } = c;
  // Nothing to compute (empty output), or no P slot at all (every row fully masked: output 0,
  // gradients 0). The addon wants positive sizes, so these are handled here.
  const degenerate = B === 0 || h === 0 || n === 0 || dh === 0 || l === 0;
  const addon = degenerate ? null : loadNative();

  // Tied key/value is recognised by object identity (the kernel reads one buffer and writes one
  // summed gradient; the graph records k once).
  const tied = c.k === c.v;
  const kData = nativeData(c.k, OP, 'k');
  let vData = tied ? kData : nativeData(c.v, OP, 'v');
  // Distinct tensors sharing one buffer: hide the aliasing, which the kernel would take for tied.
  if (!tied && vData === kData) vData = cloneBuffer(OP, vData, dtype);
  const base = {
    q: nativeData(c.q, OP, 'q'),
    k: kData,
    v: vData,
    kc: nativeData(c.kc, OP, 'kc'),
    pq: nativeData(c.pq, OP, 'pq'),
    mask: mask === null ? null : (nativeData(mask, OP, 'options.packPaddingMask') as unknown as Uint8Array),
    B,
    h,
    n,
    l,
    dh,
    scale,
    activation,
    ...(dropout > 0 ? { dropout, seed } : {}),
    ...(chunkForTesting !== undefined ? { chunk: chunkForTesting } : {}),
  };
  const out = outputBuffer(OP, dtype, B * h * n * dh, device);
  if (addon === null) fillBuffer(OP, out, 0);
  else runKernel(OP, () => addon.causalForward({ ...base, out } as CausalForwardArgs));
  const result = makeTensor(out, [B, h, n, dh], dtype, device);

  const inputs = tied ? [c.q, c.k, c.kc, c.pq] : [c.q, c.k, c.v, c.kc, c.pq];
  if (!shouldRecord(inputs)) return result;

  // The backward recomputes everything from the inputs (it needs neither out nor lse); retain
  // their storages so disposing an input after the forward does not pull them away.
  const retained: Storage[] = [];
  for (const t of [c.q, c.k, tied ? null : c.v, c.kc, c.pq, mask]) {
    if (t !== null) retained.push(assertLive(t, OP).retain());
  }
  let saved: typeof base | null = base;
  const backward = (gradOut: Tensor): (Tensor | null)[] => {
    const where = `${OP} (backward)`;
    if (saved === null) throw new LunaError('ERR_DISPOSED', `${where}: the saved tensors were already released`);
    const size = B * h * n * dh;
    const dq = outputBuffer(where, dtype, size, device);
    const dk = outputBuffer(where, dtype, size, device);
    const dv = tied ? dk : outputBuffer(where, dtype, size, device);
    const dkc = outputBuffer(where, dtype, size, device);
    const dpq = outputBuffer(where, dtype, B * h * l * dh, device);
    if (addon === null) {
      for (const g of [dq, dk, dv, dkc, dpq]) fillBuffer(OP, g, 0);
    } else {
      const args = { ...saved, dout: nativeData(gradOut, where, 'gradient'), dq, dk, dv, dkc, dpq } as CausalBackwardArgs;
      runKernel(where, () => addon.causalBackward(args));
    }
    const shape = [B, h, n, dh];
    const grads = [makeTensor(dq, shape, dtype, device), makeTensor(dk, shape, dtype, device)];
    if (!tied) grads.push(makeTensor(dv, shape, dtype, device));
    grads.push(makeTensor(dkc, shape, dtype, device), makeTensor(dpq, [B, h, l, dh], dtype, device));
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

/** The batch reordering of {@link CausalLunaState.reorder}: integers in [0, B). */
function checkIndices(where: string, value: unknown, B: number): number[] {
  let list: ArrayLike<number>;
  if (value instanceof Tensor) {
    const t = checkTensor(where, 'indices', value);
    if (t.dtype !== 'int32') throw mismatch('ERR_DTYPE', where, 'indices.dtype', 'int32', t.dtype);
    if (t.rank !== 1) throw mismatch('ERR_SHAPE', where, 'indices.shape', '[newB] (rank 1)', formatShape(t.shape));
    list = tensorData(t, where, 'indices') as Int32Array;
  } else if (Array.isArray(value) || value instanceof Int32Array) {
    list = value as ArrayLike<number>;
  } else {
    throw mismatch('ERR_ARGUMENT', where, 'indices', 'an array, Int32Array or int32 tensor of batch indices', describe(value));
  }
  const out: number[] = [];
  for (let i = 0; i < list.length; i++) {
    if (B === 0) throw mismatch('ERR_ARGUMENT', where, `indices[${i}]`, 'nothing (the state has no batch rows)', describe(list[i]));
    out.push(checkInteger(where, `indices[${i}]`, list[i], 0, B - 1));
  }
  return out;
}

/**
 * The incremental-decoding state of causal Luna attention for one layer: the scaled pack query
 * (cached once), the P-slot mask, the prefix states S^K [B,h,dh,l] and S^V [B,h,l,dh] (in the
 * model's dtype) and the number of positions seen. Each {@link step} folds new tokens in at
 * O(s·l·dh) per head, whatever the prefix length, and returns exactly what
 * {@link causalLunaAttention} gives for those positions over the whole sequence (up to rounding).
 *
 * Inference only: `step` records no gradient. Dropout is not applied.
 *
 * @example
 * const state = new CausalLunaState(pq, { packPaddingMask });
 * const o1 = state.step(q1, k1, v1, kc1);   // [B,h,s,dh] for a prompt of s tokens
 * const o2 = state.step(q2, k2, v2, kc2);   // then one token at a time
 */
export class CausalLunaState {
  // On cuda, pqScaled, sk and sv are DeviceArrays (typed as float arrays for the kernel's
  // arguments) and `deviceMask` holds the mask's device copy; `mask` stays on the host for reorder.
  private pqScaled: FloatArray | null;
  private mask: Uint8Array | null;
  private deviceMask: Uint8Array | null = null;
  private sk: FloatArray | null;
  private sv: FloatArray | null;
  private t = 0;
  private B: number;
  private readonly h: number;
  private readonly l: number;
  private readonly dh: number;
  private readonly scale: number;
  private readonly activation: CausalActivation;
  private readonly dtype: 'float32' | 'float64';
  private readonly device: Device;

  /**
   * @param pq - the unscaled pack query [B,h,l,dh] (float32 or float64); it is copied, scaled.
   * @param options - packPaddingMask, scale, activation, as for {@link causalLunaAttention}.
   * @throws LunaError ERR_SHAPE, ERR_DTYPE, ERR_DEVICE or ERR_ARGUMENT for bad arguments.
   */
  constructor(pq: Tensor, options?: CausalLunaStateOptions) {
    const t = checkTensor(STATE, 'pq', pq);
    const opts = checkOptions(STATE, options, STATE_OPTION_KEYS);
    if (!isFloatDType(t.dtype)) throw mismatch('ERR_DTYPE', STATE, 'pq.dtype', 'float32 or float64', t.dtype);
    if (t.rank !== 4) throw mismatch('ERR_SHAPE', STATE, 'pq.shape', '[B,h,l,dh] (rank 4)', formatShape(t.shape));
    const [B, h, l, dh] = t.shape;
    const mask = checkMask(STATE, opts.packPaddingMask, B, l, t.device);
    this.scale = checkScale(STATE, opts.scale, dh);
    this.activation = checkActivation(STATE, opts.activation);
    this.B = B;
    this.h = h;
    this.l = l;
    this.dh = dh;
    this.dtype = t.dtype;
    this.device = t.device;
    // The scaled copy is made on the host (one multiply per element, as on the CPU path) and,
    // for a cuda state, copied to the device once.
    const src = t.dataSync() as FloatArray;
    const scaled = allocate(STATE, this.dtype, src.length) as FloatArray;
    for (let i = 0; i < src.length; i++) scaled[i] = this.scale * src[i];
    this.mask = mask === null ? null : (mask.dataSync() as Uint8Array);
    this.pqScaled = this.onDevice(scaled);
    this.deviceMask = this.device === 'cuda' && this.mask !== null ? (upload(STATE, this.mask, 'bool') as unknown as Uint8Array) : null;
    this.sk = zeroBuffer(STATE, this.dtype, B * h * dh * l, this.device);
    this.sv = zeroBuffer(STATE, this.dtype, B * h * l * dh, this.device);
  }

  /** `host` itself on the CPU; on cuda, a device copy (and the host buffer goes back to the pool). */
  private onDevice(host: FloatArray): FloatArray {
    if (this.device !== 'cuda') return host;
    const d = upload(STATE, host, this.dtype) as unknown as FloatArray;
    giveBack(host);
    return d;
  }

  /** A buffer of the state back on the host (a copy for a cuda state). */
  private onHost(buf: FloatArray): FloatArray {
    return isDeviceArray(buf) ? (download(STATE, buf, this.dtype) as FloatArray) : buf;
  }

  private static free(buf: FloatArray | Uint8Array | null): void {
    if (buf === null) return;
    if (isDeviceArray(buf)) buf.release();
    else giveBack(buf);
  }

  /** The number of positions folded in so far (the next token is position steps + 1). */
  get steps(): number {
    this.live('steps');
    return this.t;
  }

  /** The current batch size (it changes with {@link reorder}). */
  get batchSize(): number {
    this.live('batchSize');
    return this.B;
  }

  /** True once {@link dispose} has run. */
  get isDisposed(): boolean {
    return this.sk === null;
  }

  private live(what: string): void {
    if (this.sk === null) {
      throw new LunaError('ERR_DISPOSED', `${STATE}.${what}: the state has been disposed; it cannot be used any more`);
    }
  }

  /**
   * Folds s >= 1 new positions in and returns their outputs. q, k, v, kc are [B,h,s,dh] (the
   * unscaled projections of the new tokens; k and v may be the same tensor); s > 1 is a chunked
   * prefill of a prompt. Returns o [B,h,s,dh], a tensor without gradient. s = 0 returns an
   * empty tensor and changes nothing.
   *
   * @throws LunaError ERR_SHAPE, ERR_DTYPE, ERR_DEVICE, ERR_ARGUMENT; ERR_DISPOSED after dispose.
   */
  step(q: Tensor, k: Tensor, v: Tensor, kc: Tensor): Tensor {
    const where = `${STATE}.step`;
    this.live('step');
    const qt = checkTensor(where, 'q', q);
    const kt = checkTensor(where, 'k', k);
    const vt = checkTensor(where, 'v', v);
    const kct = checkTensor(where, 'kc', kc);
    for (const [name, t] of [['q', qt], ['k', kt], ['v', vt], ['kc', kct]] as const) checkKind(where, name, t, { dtype: this.dtype, device: this.device }, 'the state');
    const { B, h, l, dh } = this;
    checkShape4(where, 'q', qt, [B, h, 's', dh], "B,h,s,dh: the state's batch, heads and head width");
    for (const [name, t] of [['k', kt], ['v', vt], ['kc', kct]] as const) checkShape4(where, name, t, qt.shape, 'B,h,s,dh matching q');
    const s = qt.shape[2];
    const out = outputBuffer(where, this.dtype, B * h * s * dh, this.device);
    if (B === 0 || h === 0 || s === 0 || dh === 0 || l === 0) {
      fillBuffer(where, out, 0); // no slot at all: every row is fully masked
    } else {
      const addon = loadNative();
      const kData = nativeData(kt, where, 'k');
      const args = {
        q: nativeData(qt, where, 'q'),
        k: kData,
        v: kt === vt ? kData : nativeData(vt, where, 'v'),
        kc: nativeData(kct, where, 'kc'),
        pq: this.pqScaled!,
        mask: this.device === 'cuda' ? this.deviceMask : this.mask,
        out,
        stateK: this.sk!,
        stateV: this.sv!,
        steps: this.t,
        B,
        h,
        n: s,
        l,
        dh,
        scale: this.scale,
        activation: this.activation,
        ...(chunkForTesting !== undefined ? { chunk: chunkForTesting } : {}),
      };
      runKernel(where, () => addon.causalStep(args));
    }
    this.t += s;
    return makeTensor(out, [B, h, s, dh], this.dtype, this.device);
  }

  /**
   * Reorders the batch for beam search, in place: new row i takes old row indices[i] (states,
   * cached pack query and mask). The number of rows may change; indices may repeat.
   * Returns this state.
   *
   * @param indices - integers in [0, batchSize): an array, an Int32Array or an int32 tensor [newB].
   */
  reorder(indices: readonly number[] | Int32Array | Tensor): this {
    const where = `${STATE}.reorder`;
    this.live('reorder');
    const idx = checkIndices(where, indices, this.B);
    const gather = <A extends FloatArray | Uint8Array>(src: A, row: number, fresh: A): A => {
      for (let i = 0; i < idx.length; i++) fresh.set(src.subarray(idx[i] * row, (idx[i] + 1) * row), i * row);
      return fresh;
    };
    const { h, l, dh } = this;
    const nb = idx.length;
    // A cuda state is gathered on the host: beam reordering moves these small arrays once per step.
    const swap = (old: FloatArray, row: number): FloatArray => {
      const host = this.onHost(old);
      const next = gather(host, row, allocate(where, this.dtype, nb * row) as FloatArray);
      CausalLunaState.free(old);
      if (host !== old) giveBack(host);
      return this.onDevice(next);
    };
    this.pqScaled = swap(this.pqScaled!, h * l * dh);
    this.sk = swap(this.sk!, h * dh * l);
    this.sv = swap(this.sv!, h * l * dh);
    if (this.mask !== null) {
      this.mask = gather(this.mask, l, new Uint8Array(nb * l));
      if (this.deviceMask !== null) {
        CausalLunaState.free(this.deviceMask);
        this.deviceMask = upload(where, this.mask, 'bool') as unknown as Uint8Array;
      }
    }
    this.B = nb;
    return this;
  }

  /** An independent copy (same states, steps, pack query and mask). */
  clone(): CausalLunaState {
    this.live('clone');
    const copy = Object.create(CausalLunaState.prototype) as CausalLunaState;
    const dup = (a: FloatArray): FloatArray => {
      if (isDeviceArray(a)) return deviceClone(`${STATE}.clone`, a, this.dtype) as unknown as FloatArray;
      const b = allocate(`${STATE}.clone`, this.dtype, a.length);
      b.set(a);
      return b;
    };
    Object.assign(copy, this, {
      pqScaled: dup(this.pqScaled!),
      sk: dup(this.sk!),
      sv: dup(this.sv!),
      mask: this.mask === null ? null : this.mask.slice(),
      deviceMask: this.deviceMask === null ? null : deviceClone(`${STATE}.clone`, this.deviceMask as never, 'bool'),
    });
    return copy;
  }

  /** Releases the buffers; any later use throws ERR_DISPOSED. Calling it twice is harmless. */
  dispose(): void {
    for (const a of [this.pqScaled, this.sk, this.sv, this.deviceMask]) CausalLunaState.free(a);
    this.deviceMask = null;
    this.pqScaled = null;
    this.sk = null;
    this.sv = null;
    this.mask = null;
  }

  /** Same as {@link dispose}; lets `using state = new CausalLunaState(...)` dispose it at scope exit. */
  [Symbol.dispose](): void {
    this.dispose();
  }
}

/** The causal ops, spread into the `ops` namespace. */
export const causalOps = {
  /** Causal Luna attention: q,k,v,kc [B,h,n,dh], pq [B,h,l,dh] -> [B,h,n,dh]. See {@link causalLunaAttention}. */
  causalLunaAttention,
};
