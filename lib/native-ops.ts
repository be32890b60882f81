/**
 * Types of the addon functions behind the dense ops (linear algebra, elementwise, nn
 * building blocks). Each family owns its interface; lib/native.ts merges them into NativeAddon.
 *
 * @packageDocumentation
 */

/**
 * Arguments of `gemm` / `gemmReference` (native/INTERFACE-gemm.md): for each of `batch` items,
 * c = alpha * op(a) op(b) + beta * c + bias, all row-major and dense. op(a) is M x K (a stored
 * K x M when `transA`), op(b) is K x N (b stored N x K when `transB`). All arrays share one type.
 */
export interface GemmArgs {
  /** batch x (M x K, or K x M with transA) */
  a: Float32Array | Float64Array;
  /** batch x (K x N, or N x K with transB) */
  b: Float32Array | Float64Array;
  /** batch x M x N; read only when beta != 0; must not share memory with a, b or bias */
  c: Float32Array | Float64Array;
  M: number;
  N: number;
  K: number;
  /** default false */
  transA?: boolean;
  /** default false */
  transB?: boolean;
  /** default 1 */
  alpha?: number;
  /** default 0 (then c's old content, even NaN, is ignored) */
  beta?: number;
  /** default 1; every item has its own a, b and c */
  batch?: number;
  /** [N], added to every row of c; null/undefined for none */
  bias?: Float32Array | Float64Array | null;
}

/** Arguments of `columnSum` / `columnSumReference`: out[j] (+)= sum_i x[i, j] over a rows x cols matrix. */
export interface ColumnSumArgs {
  x: Float32Array | Float64Array;
  /** [cols]; overwritten, or added to with `accumulate` (columnSum only) */
  out: Float32Array | Float64Array;
  rows: number;
  cols: number;
  accumulate?: boolean;
}

/** Arguments of `biasAdd`: y[rows x cols] += bias on every row, in place. */
export interface BiasAddArgs {
  y: Float32Array | Float64Array;
  /** [cols] */
  bias: Float32Array | Float64Array;
  rows: number;
  cols: number;
}

/** GEMM family (native/bindings/gemm_binding.cc). Sizes may be 0. */
export interface GemmNative {
  /** The blocked, threaded GEMM; bitwise the same for any thread count. */
  gemm(args: GemmArgs): void;
  /** Plain loops (one sequential sum per element): the truth for tests. */
  gemmReference(args: GemmArgs): void;
  biasAdd(args: BiasAddArgs): void;
  /** Rows summed in fixed blocks of 128, blocks added in order: the same for any thread count. */
  columnSum(args: ColumnSumArgs): void;
  /** One sequential sum per column; no `accumulate`. */
  columnSumReference(args: ColumnSumArgs): void;
}

/** Arguments of `elementwiseBinary`: out = a (op) b, the inputs read through broadcast strides. */
export interface ElementwiseBinaryArgs {
  op: 'add' | 'sub' | 'mul';
  /** read at sum_d idx[d] * aStrides[d] */
  a: Float32Array | Float64Array;
  /** same type as `a`; read at sum_d idx[d] * bStrides[d] */
  b: Float32Array | Float64Array;
  /** the output shape (rank <= 8), every dim >= 1 */
  shape: number[];
  /** one element stride of `a` per output dim; 0 where `a` is broadcast */
  aStrides: number[];
  bStrides: number[];
  /** [shape], overwritten */
  out: Float32Array | Float64Array;
}

/** Arguments of `stridedCopy`: out = x read through `strides` (permute, transpose, broadcast). */
export interface StridedCopyArgs {
  x: Float32Array | Float64Array;
  /** the output shape (rank <= 8), every dim >= 1 */
  shape: number[];
  /** one element stride of `x` per output dim (permuted strides; 0 to broadcast) */
  strides: number[];
  /** [shape], overwritten */
  out: Float32Array | Float64Array;
}

/** Arguments of `reduceSum`: out = x summed over the dims where outShape is 1 and shape is not. */
export interface ReduceSumArgs {
  /** [shape] */
  x: Float32Array | Float64Array;
  /** rank <= 8, every dim >= 1 */
  shape: number[];
  /** same rank; outShape[d] is shape[d] or 1 */
  outShape: number[];
  /** [outShape], overwritten */
  out: Float32Array | Float64Array;
}

/** Arguments of `scaleShift`: out[i] = scale * x[i] + offset. */
export interface ScaleShiftArgs {
  x: Float32Array | Float64Array;
  /** same length and type as `x`, overwritten */
  out: Float32Array | Float64Array;
  /** finite */
  scale: number;
  /** finite */
  offset: number;
}

/** Arguments of `copyBlocks`: dst[dstOffset + r*dstStride + c] = src[srcOffset + r*srcStride + c]. */
export interface CopyBlocksArgs {
  src: Float32Array | Float64Array;
  dst: Float32Array | Float64Array;
  /** >= 1 */
  rows: number;
  /** >= 1 */
  cols: number;
  srcStride: number;
  srcOffset: number;
  /** at least `cols` when rows > 1 */
  dstStride: number;
  dstOffset: number;
}

/** Elementwise, reduction and layout family (native/bindings/elementwise_binding.cc). */
export interface ElementwiseNative {
  elementwiseBinary(args: ElementwiseBinaryArgs): void;
  scaleShift(args: ScaleShiftArgs): void;
  stridedCopy(args: StridedCopyArgs): void;
  reduceSum(args: ReduceSumArgs): void;
  copyBlocks(args: CopyBlocksArgs): void;
  /** Plain-loop references for tests; same arguments as the fast kernels. */
  referenceElementwiseBinary(args: ElementwiseBinaryArgs): void;
  referenceStridedCopy(args: StridedCopyArgs): void;
  referenceReduceSum(args: ReduceSumArgs): void;
}

/**
 * nn building blocks (native/bindings/nn_binding.cc; native/INTERFACE-nn.md). Float arrays are
 * all Float32Array or all Float64Array within a call; ids and targets are Int32Array; every
 * size is a positive integer; outputs are overwritten. `reference: true` runs the plain-loop
 * reference (float64: the truth; float32: the plain float32 baseline) instead of the kernel.
 */
export interface NnNative {
  /** x, out [rows,d]; weight, bias [d] or null; mean, rstd [rows] written for the backward. */
  layerNormForward(args: {
    x: Float32Array | Float64Array;
    weight: Float32Array | Float64Array | null;
    bias: Float32Array | Float64Array | null;
    out: Float32Array | Float64Array;
    mean: Float32Array | Float64Array;
    rstd: Float32Array | Float64Array;
    rows: number;
    d: number;
    eps: number;
    reference?: boolean;
  }): void;
  /** dout, dx [rows,d]; dweight, dbias [d]; each output may be null when not wanted. */
  layerNormBackward(args: {
    x: Float32Array | Float64Array;
    weight: Float32Array | Float64Array | null;
    mean: Float32Array | Float64Array;
    rstd: Float32Array | Float64Array;
    dout: Float32Array | Float64Array;
    dx: Float32Array | Float64Array | null;
    dweight: Float32Array | Float64Array | null;
    dbias: Float32Array | Float64Array | null;
    rows: number;
    d: number;
    reference?: boolean;
  }): void;
  /** Exact (erf) GELU; x, out [n]. */
  geluForward(args: { x: Float32Array | Float64Array; out: Float32Array | Float64Array; n: number; reference?: boolean }): void;
  /** dx = dout * gelu'(x); all [n]. */
  geluBackward(args: {
    x: Float32Array | Float64Array;
    dout: Float32Array | Float64Array;
    dx: Float32Array | Float64Array;
    n: number;
    reference?: boolean;
  }): void;
  /** max(x, 0); x, out [n]. */
  reluForward(args: { x: Float32Array | Float64Array; out: Float32Array | Float64Array; n: number; reference?: boolean }): void;
  /** dx = dout where x > 0, else 0; all [n]. */
  reluBackward(args: {
    x: Float32Array | Float64Array;
    dout: Float32Array | Float64Array;
    dx: Float32Array | Float64Array;
    n: number;
    reference?: boolean;
  }): void;
  /** out = keep ? x / (1 - p) : 0, the mask a hash of (seed, index); p in [0,1], seed in [0, 2^53). */
  dropoutForward(args: {
    x: Float32Array | Float64Array;
    out: Float32Array | Float64Array;
    n: number;
    p: number;
    seed: number;
    reference?: boolean;
  }): void;
  /** The same mask applied to dout (same p and seed as the forward). */
  dropoutBackward(args: {
    dout: Float32Array | Float64Array;
    dx: Float32Array | Float64Array;
    n: number;
    p: number;
    seed: number;
    reference?: boolean;
  }): void;
  /** ids [n] in [0,V); weight [V,d]; out [n,d]. */
  embeddingForward(args: {
    ids: Int32Array;
    weight: Float32Array | Float64Array;
    out: Float32Array | Float64Array;
    n: number;
    V: number;
    d: number;
    reference?: boolean;
  }): void;
  /** dweight [V,d] = scatter-add of dout [n,d] by ids; row paddingIdx (or none when null) gets 0. */
  embeddingBackward(args: {
    ids: Int32Array;
    dout: Float32Array | Float64Array;
    dweight: Float32Array | Float64Array;
    n: number;
    V: number;
    d: number;
    paddingIdx: number | null;
    reference?: boolean;
  }): void;
  /** logits [N,C]; targets [N] in [0,C) or ignoreIndex; loss, lse [N] (loss 0 for ignored rows). */
  crossEntropyForward(args: {
    logits: Float32Array | Float64Array;
    targets: Int32Array;
    loss: Float32Array | Float64Array;
    lse: Float32Array | Float64Array;
    N: number;
    C: number;
    labelSmoothing: number;
    ignoreIndex: number;
    reference?: boolean;
  }): void;
  /** dlogits [N,C] = dloss[i] * (softmax - smoothed one-hot); 0 for ignored rows. */
  crossEntropyBackward(args: {
    logits: Float32Array | Float64Array;
    targets: Int32Array;
    lse: Float32Array | Float64Array;
    dloss: Float32Array | Float64Array;
    dlogits: Float32Array | Float64Array;
    N: number;
    C: number;
    labelSmoothing: number;
    ignoreIndex: number;
    reference?: boolean;
  }): void;
}

// ---- causal Luna attention (issue 5) ----
/**
 * Arguments shared by the causal Luna kernels (native/INTERFACE-causal.md). All float arrays
 * are Float32Array or all Float64Array; every size is a positive integer below 2^31.
 */
export interface CausalCommonArgs {
  /** [B,h,n,dh] unpack queries (unscaled) */
  q: Float32Array | Float64Array;
  /** [B,h,n,dh] keys */
  k: Float32Array | Float64Array;
  /** [B,h,n,dh] values; the same array as `k` for tied key/value */
  v: Float32Array | Float64Array;
  /** [B,h,n,dh] pack keys */
  kc: Float32Array | Float64Array;
  /** [B,h,l,dh] pack queries: unscaled (forward, backward), already scaled (causalStep) */
  pq: Float32Array | Float64Array;
  /** [B,l] P-slot padding mask, 1 = masked; null/undefined for none */
  mask?: Uint8Array | null;
  B: number;
  h: number;
  n: number;
  l: number;
  dh: number;
  /** multiplies the unpack logits, and (forward, backward) the pack logits too */
  scale: number;
  /** φ: 'softplus' (β = ln 2, default) or 'elu' (elu + 1) */
  activation?: 'softplus' | 'elu';
  /** rows per chunk (positive); default: the kernel's measured choice */
  chunk?: number;
}

/** Arguments of `causalForward` / `causalReferenceForward`. */
export interface CausalForwardArgs extends CausalCommonArgs {
  /** [B,h,n,dh], overwritten */
  out: Float32Array | Float64Array;
  /** [B,h,n], overwritten with the log-sum-exp of the unpack logits (-Infinity: every slot masked); optional */
  lse?: Float32Array | Float64Array | null;
  /** dropout probability on Φ and on Bm, [0, 1); omitted = none */
  dropout?: number;
  /** seed of both dropout masks (non-negative safe integer); required with dropout */
  seed?: number;
}

/** Arguments of `causalBackward` / `causalReferenceBackward`: the forward's inputs plus dout. */
export interface CausalBackwardArgs extends CausalCommonArgs {
  dropout?: number;
  seed?: number;
  /** [B,h,n,dh] */
  dout: Float32Array | Float64Array;
  /** [B,h,n,dh], overwritten */
  dq: Float32Array | Float64Array;
  /** [B,h,n,dh], overwritten; for tied k/v the same array as `dv`, receiving dk + dv */
  dk: Float32Array | Float64Array;
  /** [B,h,n,dh], overwritten */
  dv: Float32Array | Float64Array;
  /** [B,h,n,dh], overwritten */
  dkc: Float32Array | Float64Array;
  /** [B,h,l,dh], overwritten */
  dpq: Float32Array | Float64Array;
}

/** Arguments of `causalStep`: n new positions after `steps` earlier ones. */
export interface CausalStepArgs extends CausalCommonArgs {
  /** [B,h,n,dh], overwritten */
  out: Float32Array | Float64Array;
  /** [B,h,n], optional */
  lse?: Float32Array | Float64Array | null;
  /** [B,h,dh,l] S^K, read and updated in place */
  stateK: Float32Array | Float64Array;
  /** [B,h,l,dh] S^V, read and updated in place */
  stateV: Float32Array | Float64Array;
  /** positions already folded into the states (t of the first new row is steps + 1) */
  steps: number;
}

/** The causal Luna kernels (native/bindings/causal_binding.cc). */
export interface CausalNative {
  /** The fused chunked forward. */
  causalForward(args: CausalForwardArgs): void;
  /** The fused chunked backward (recomputes states and probabilities; needs no out/lse). */
  causalBackward(args: CausalBackwardArgs): void;
  /** Plain-loop prefix form: float64 the truth, float32 the plain baseline for tolerances. */
  causalReferenceForward(args: CausalForwardArgs): void;
  causalReferenceBackward(args: CausalBackwardArgs): void;
  /** Incremental decoding / chunked prefill from and into the given states. */
  causalStep(args: CausalStepArgs): void;
}

// ---- softmax attention (issue 7) ----
/**
 * Arguments of `softmaxForward` / `softmaxReferenceForward` (native/INTERFACE-softmax.md).
 * Float arrays are all Float32Array or all Float64Array; every size is a positive integer.
 */
export interface SoftmaxForwardArgs {
  /** [B,h,lq,dh] queries */
  q: Float32Array | Float64Array;
  /** [B,h,lk,dh] keys */
  k: Float32Array | Float64Array;
  /** [B,h,lk,dh] values; the same array as `k` for tied key/value */
  v: Float32Array | Float64Array;
  /** [B,lk], 1 = padding, or null for no mask */
  mask: Uint8Array | null;
  /** [B,h,lq,dh], overwritten */
  out: Float32Array | Float64Array;
  /** [B,h,lq], overwritten; -Infinity for a row that sees no key */
  lse: Float32Array | Float64Array;
  B: number;
  h: number;
  /** n, the number of queries */
  lq: number;
  /** m, the number of keys */
  lk: number;
  dh: number;
  /** multiplies the logits; finite */
  scale: number;
  /** query i sees keys j <= i + (lk - lq) (aligned at the end); default false */
  causal?: boolean;
  /** dropout probability on the attention probabilities, [0, 1); omitted = none */
  dropout?: number;
  /** seed of the dropout mask (non-negative safe integer); required with dropout */
  seed?: number;
}

/** Arguments of `softmaxBackward` / `softmaxReferenceBackward`: the forward's plus the gradients. */
export interface SoftmaxBackwardArgs extends SoftmaxForwardArgs {
  /** [B,h,lq,dh] gradient of the output */
  dout: Float32Array | Float64Array;
  /** [B,h,lq,dh], overwritten */
  dq: Float32Array | Float64Array;
  /** [B,h,lk,dh], overwritten; for tied k/v the same array as `dv`, receiving dk + dv */
  dk: Float32Array | Float64Array;
  /** [B,h,lk,dh], overwritten */
  dv: Float32Array | Float64Array;
}

/** The flash-style softmax-attention kernels (native/bindings/softmax_binding.cc). */
export interface SoftmaxNative {
  /** Fused forward: writes out and lse (never the lq x lk matrix). */
  softmaxForward(args: SoftmaxForwardArgs): void;
  /** Fused backward from the forward's out and lse; bitwise the same for any thread count. */
  softmaxBackward(args: SoftmaxBackwardArgs): void;
  /** Plain-loop reference (float64: the truth; float32: the plain float32 baseline). */
  softmaxReferenceForward(args: SoftmaxForwardArgs): void;
  softmaxReferenceBackward(args: SoftmaxBackwardArgs): void;
}
