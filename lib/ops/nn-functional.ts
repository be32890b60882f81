/**
 * The nn building blocks as differentiable ops: `layerNorm`, `gelu`, `relu`, `dropout`,
 * `embedding` and `crossEntropy`. Each runs one fused native kernel forward and one backward
 * (native/INTERFACE-nn.md); semantics follow PyTorch's functional ops except where a doc
 * comment says otherwise.
 *
 * @packageDocumentation
 */
import { LunaError, checkBoolean, checkFinite, checkInteger, checkOptions, describe, formatShape, mismatch } from '../errors';
import { allocate, checkShape } from '../dtype';
import { Tensor, checkTensor, makeTensor, tensorData } from '../tensor';
import { FloatArray, NativeAddon, loadNative } from '../native';
import { manualSeed, nextSeed } from '../seed';
import { dataOf, fillBuffer, floatInput, hostValues, outputBuffer, record, runKernel, wrap, zeroBuffer } from './common';

/** Options of {@link layerNorm}. */
export interface LayerNormOptions {
  /** Added to the variance before the square root. Finite, >= 0. Default 1e-5. */
  eps?: number;
}

/** Options of {@link dropout}. */
export interface DropoutOptions {
  /** When false the op is the identity (evaluation mode). Default true. */
  training?: boolean;
  /**
   * Integer in [0, 2^53): the mask is a pure function of (seed, element index), so a seed gives
   * the same mask on every run and for any thread count. Default: drawn from the global
   * stream, which `manualSeed` makes reproducible.
   */
  seed?: number;
}

/** Options of {@link embedding}. */
export interface EmbeddingOptions {
  /**
   * A row of the table that receives no gradient (its lookups still return it). Negative
   * values count from the end, as in PyTorch. Default: none.
   */
  paddingIdx?: number;
}

/** Options of {@link crossEntropy}. */
export interface CrossEntropyOptions {
  /** s in [0, 1]: the target distribution is (1 - s) one-hot + s uniform. Default 0. */
  labelSmoothing?: number;
  /** Rows whose target equals this contribute no loss and no gradient. Default -100. */
  ignoreIndex?: number;
  /** 'mean' (over non-ignored rows; 0 when all are ignored), 'sum' or 'none' ([N]). Default 'mean'. */
  reduction?: 'mean' | 'sum' | 'none';
}

const MAX_SEED = 2 ** 53 - 1;

/** The addon, refusing a stale binary built before the nn kernels existed. */
function nnAddon(op: string): NativeAddon {
  const addon = loadNative();
  if (typeof (addon as Partial<NativeAddon>).crossEntropyForward !== 'function') {
    throw new LunaError(
      'ERR_NATIVE_LOAD',
      `${op}: the loaded native addon lacks the nn kernels (it is stale, built from older sources); ` +
        'rebuild it with `npm rebuild luna-attention`',
    );
  }
  return addon;
}

/** `[i][j]...` of a flat index into `shape`, for messages. */
function indexPath(shape: readonly number[], flat: number): string {
  if (shape.length <= 1) return `[${flat}]`;
  const idx: number[] = [];
  let rest = flat;
  for (let d = shape.length - 1; d >= 0; d--) {
    idx.unshift(rest % shape[d]);
    rest = Math.floor(rest / shape[d]);
  }
  return idx.map((i) => `[${i}]`).join('');
}

/** A live int32 tensor on `like`'s device. */
function int32Input(op: string, arg: string, value: unknown, like: Tensor, likeName: string): Tensor {
  const t = checkTensor(op, arg, value);
  if (t.dtype !== 'int32') throw mismatch('ERR_DTYPE', op, `${arg}.dtype`, 'int32', t.dtype);
  if (t.device !== like.device) {
    throw mismatch('ERR_DEVICE', op, `${arg}.device`, `${like.device} (matching ${likeName})`, t.device);
  }
  return t;
}

// ---------------------------------------------------------------------------------------------
// layerNorm

function optionalParam(op: string, arg: string, value: unknown, x: Tensor, d: number): Tensor | null {
  if (value === null || value === undefined) return null;
  const t = floatInput(op, arg, value, x, 'x');
  if (t.rank !== 1 || t.shape[0] !== d) {
    throw mismatch('ERR_SHAPE', op, `${arg}.shape`, `[${d}] (the last dimension of x)`, formatShape(t.shape));
  }
  return t;
}

/**
 * Layer normalization over the last dimension: x [..., d] -> [..., d],
 * `(x - mean) / sqrt(var + eps) * weight + bias` with the biased variance. `weight` and `bias`
 * are [d] or null (no scale / no shift). Statistics are accumulated in float64 for both dtypes.
 */
export function layerNorm(x: Tensor, weight: Tensor | null, bias: Tensor | null, options?: LayerNormOptions): Tensor {
  const op = 'layerNorm';
  const xt = floatInput(op, 'x', x);
  if (xt.rank < 1) throw mismatch('ERR_SHAPE', op, 'x.shape', '[..., d] (rank >= 1)', formatShape(xt.shape));
  const d = xt.shape[xt.rank - 1];
  const rows = xt.shape.slice(0, -1).reduce((a, b) => a * b, 1);
  const w = optionalParam(op, 'weight', weight, xt, d);
  const b = optionalParam(op, 'bias', bias, xt, d);
  const opts = checkOptions(op, options, ['eps']);
  const eps = opts.eps === undefined ? 1e-5 : checkFinite(op, 'options.eps', opts.eps);
  if (eps < 0) throw mismatch('ERR_ARGUMENT', op, 'options.eps', 'a finite number >= 0', describe(eps));

  const { dtype } = xt;
  const out = outputBuffer(op, dtype, xt.size, xt.device);
  const mean = outputBuffer(op, dtype, rows, xt.device);
  const rstd = outputBuffer(op, dtype, rows, xt.device);
  const empty = xt.size === 0;
  if (!empty) {
    const addon = nnAddon(op);
    runKernel(op, () =>
      addon.layerNormForward({
        x: dataOf(xt, op, 'x'),
        weight: w === null ? null : dataOf(w, op, 'weight'),
        bias: b === null ? null : dataOf(b, op, 'bias'),
        out,
        mean,
        rstd,
        rows,
        d,
        eps,
      }),
    );
  }
  const meanT = makeTensor(mean, [rows], dtype, xt.device);
  const rstdT = makeTensor(rstd, [rows], dtype, xt.device);
  const inputs = [xt, ...(w === null ? [] : [w]), ...(b === null ? [] : [b])];
  const result = record(wrap(out, xt.shape, xt), op, inputs, [xt, w, meanT, rstdT], (g, needs, saved) => {
    const where = `${op} (backward)`;
    const [xData, wData, meanData, rstdData] = saved as (FloatArray | null)[];
    const wantDx = needs[0];
    const wantDw = w !== null && needs[1];
    const wantDb = b !== null && needs[w === null ? 1 : 2];
    // Zero-filled for empty inputs, where the parameter gradients are 0 and no kernel runs.
    const buffer = (size: number): FloatArray =>
      empty ? zeroBuffer(where, dtype, size, xt.device) : outputBuffer(where, dtype, size, xt.device);
    const dx = wantDx ? buffer(xt.size) : null;
    const dw = wantDw ? buffer(d) : null;
    const db = wantDb ? buffer(d) : null;
    if (!empty && (dx !== null || dw !== null || db !== null)) {
      const addon = nnAddon(where);
      runKernel(where, () =>
        addon.layerNormBackward({
          x: xData as FloatArray,
          weight: wData,
          mean: meanData as FloatArray,
          rstd: rstdData as FloatArray,
          dout: dataOf(g, where, 'gradient'),
          dx,
          dweight: dw,
          dbias: db,
          rows,
          d,
        }),
      );
    }
    const grads: (Tensor | null)[] = [dx === null ? null : wrap(dx, xt.shape, xt)];
    if (w !== null) grads.push(dw === null ? null : wrap(dw, w.shape, w));
    if (b !== null) grads.push(db === null ? null : wrap(db, b.shape, b));
    return grads;
  });
  // The graph (when one was recorded) holds its own references to the statistics.
  meanT.dispose();
  rstdT.dispose();
  return result;
}

// ---------------------------------------------------------------------------------------------
// gelu, relu

type Activation = 'gelu' | 'relu';

function activation(kind: Activation, x: Tensor): Tensor {
  const op = kind;
  const xt = floatInput(op, 'x', x);
  const out = outputBuffer(op, xt.dtype, xt.size, xt.device);
  const n = xt.size;
  if (n > 0) {
    const addon = nnAddon(op);
    const args = { x: dataOf(xt, op, 'x'), out, n };
    runKernel(op, () => (kind === 'gelu' ? addon.geluForward(args) : addon.reluForward(args)));
  }
  return record(wrap(out, xt.shape, xt), op, [xt], [xt], (g, _needs, [xData]) => {
    const where = `${op} (backward)`;
    const dx = outputBuffer(where, xt.dtype, n, xt.device);
    if (n > 0) {
      const addon = nnAddon(where);
      const args = { x: xData as FloatArray, dout: dataOf(g, where, 'gradient'), dx, n };
      runKernel(where, () => (kind === 'gelu' ? addon.geluBackward(args) : addon.reluBackward(args)));
    }
    return [wrap(dx, xt.shape, xt)];
  });
}

/** The exact GELU, `x * Phi(x)` with Phi the standard normal CDF (PyTorch's default, not the tanh form). */
export function gelu(x: Tensor): Tensor {
  return activation('gelu', x);
}

/** `max(x, 0)`; the gradient at exactly 0 is 0. */
export function relu(x: Tensor): Tensor {
  return activation('relu', x);
}

// ---------------------------------------------------------------------------------------------
// dropout

/**
 * Reseeds the library's global random stream (lib/seed.ts), from which a dropout call without
 * `seed` draws its mask's seed; re-exported here so the nn layer and demos can reach it.
 */
export { manualSeed };

/**
 * Inverted dropout: each element is kept with probability 1 - p and scaled by 1 / (1 - p), or
 * set to 0. p in [0, 1]; p = 1 gives zeros. With `training: false` or p = 0 it returns `x`
 * itself (no copy, no graph node). The mask comes from a counter-based hash of (seed, index):
 * it is never stored, the backward regenerates it, and it does not depend on the thread count.
 */
export function dropout(x: Tensor, p: number, options?: DropoutOptions): Tensor {
  const op = 'dropout';
  const xt = floatInput(op, 'x', x);
  const prob = checkFinite(op, 'p', p);
  if (prob < 0 || prob > 1) throw mismatch('ERR_ARGUMENT', op, 'p', 'a probability in [0, 1]', describe(p));
  const opts = checkOptions(op, options, ['training', 'seed']);
  const training = opts.training === undefined ? true : checkBoolean(op, 'options.training', opts.training);
  const seed = opts.seed === undefined ? null : checkInteger(op, 'options.seed', opts.seed, 0, MAX_SEED);
  if (!training || prob === 0) return xt;
  const usedSeed = seed ?? nextSeed();

  const n = xt.size;
  const out = outputBuffer(op, xt.dtype, n, xt.device);
  if (n > 0) {
    const addon = nnAddon(op);
    runKernel(op, () => addon.dropoutForward({ x: dataOf(xt, op, 'x'), out, n, p: prob, seed: usedSeed }));
  }
  return record(wrap(out, xt.shape, xt), op, [xt], [], (g) => {
    const where = `${op} (backward)`;
    const dx = outputBuffer(where, xt.dtype, n, xt.device);
    if (n > 0) {
      const addon = nnAddon(where);
      runKernel(where, () =>
        addon.dropoutBackward({ dout: dataOf(g, where, 'gradient'), dx, n, p: prob, seed: usedSeed }),
      );
    }
    return [wrap(dx, xt.shape, xt)];
  });
}

// ---------------------------------------------------------------------------------------------
// embedding

/**
 * Looks up rows of `weight` [V, d] by `ids` (an int32 tensor of any shape): -> [...ids.shape, d].
 * The gradient scatter-adds into weight (deterministically); row `paddingIdx` gets none.
 * An id outside [0, V) is ERR_ARGUMENT naming its position.
 */
export function embedding(ids: Tensor, weight: Tensor, options?: EmbeddingOptions): Tensor {
  const op = 'embedding';
  const wt = floatInput(op, 'weight', weight);
  const it = int32Input(op, 'ids', ids, wt, 'weight');
  if (wt.rank !== 2) throw mismatch('ERR_SHAPE', op, 'weight.shape', '[V, d] (rank 2)', formatShape(wt.shape));
  const [V, d] = wt.shape;
  const opts = checkOptions(op, options, ['paddingIdx']);
  let paddingIdx: number | null = null;
  if (opts.paddingIdx !== undefined) {
    if (V === 0) throw mismatch('ERR_ARGUMENT', op, 'options.paddingIdx', 'no padding index (weight has no rows)', describe(opts.paddingIdx));
    const raw = checkInteger(op, 'options.paddingIdx', opts.paddingIdx, -V, V - 1);
    paddingIdx = raw < 0 ? raw + V : raw;
  }
  // The ids index memory: every one is checked here, on the host (a copy of a cuda tensor's).
  const idHost = hostValues(it, op, 'ids') as Int32Array;
  const idData = dataOf(it, op, 'ids') as unknown as Int32Array;
  for (let i = 0; i < idHost.length; i++) {
    const id = idHost[i];
    if (id < 0 || id >= V) {
      throw mismatch('ERR_ARGUMENT', op, `ids${indexPath(it.shape, i)}`, `an id in [0, ${V}) (the rows of weight)`, String(id));
    }
  }

  const n = it.size;
  // [...ids.shape, d] may hold more elements than either input: refuse an impossible one by name.
  checkShape(op, 'the output shape [...ids.shape, d]', [...it.shape, d]);
  const out = outputBuffer(op, wt.dtype, n * d, wt.device);
  if (n > 0 && d > 0) {
    const addon = nnAddon(op);
    runKernel(op, () => addon.embeddingForward({ ids: idData, weight: dataOf(wt, op, 'weight'), out, n, V, d }));
  }
  return record(wrap(out, [...it.shape, d], wt), op, [wt], [it], (g, _needs, [ids]) => {
    const where = `${op} (backward)`;
    const skip = n === 0 || d === 0;
    const dw = skip ? zeroBuffer(where, wt.dtype, V * d, wt.device) : outputBuffer(where, wt.dtype, V * d, wt.device);
    if (!skip) {
      const addon = nnAddon(where);
      runKernel(where, () =>
        addon.embeddingBackward({ ids: ids as Int32Array, dout: dataOf(g, where, 'gradient'), dweight: dw, n, V, d, paddingIdx }),
      );
    }
    return [wrap(dw, wt.shape, wt)];
  });
}

// ---------------------------------------------------------------------------------------------
// crossEntropy

const REDUCTIONS = ['mean', 'sum', 'none'] as const;

/**
 * Cross-entropy of `logits` [N, C] (float) against class `targets` [N] (int32), PyTorch's
 * `cross_entropy` exactly: with label smoothing s each row's loss is
 * `(1 - s) * (-log p[target]) + s * mean_c(-log p[c])`; a row whose target equals `ignoreIndex`
 * contributes nothing; 'mean' divides by the number of non-ignored rows. Where every row is
 * ignored, 'mean' gives 0 and a zero gradient (PyTorch gives NaN). Returns a scalar for
 * 'mean'/'sum' and [N] for 'none'. A target outside [0, C) that is not ignoreIndex is
 * ERR_ARGUMENT naming its position.
 */
export function crossEntropy(logits: Tensor, targets: Tensor, options?: CrossEntropyOptions): Tensor {
  const op = 'crossEntropy';
  const lt = floatInput(op, 'logits', logits);
  const tt = int32Input(op, 'targets', targets, lt, 'logits');
  if (lt.rank !== 2) throw mismatch('ERR_SHAPE', op, 'logits.shape', '[N, C] (rank 2)', formatShape(lt.shape));
  const [N, C] = lt.shape;
  if (tt.rank !== 1 || tt.shape[0] !== N) {
    throw mismatch('ERR_SHAPE', op, 'targets.shape', `[${N}] (N, matching logits)`, formatShape(tt.shape));
  }
  const opts = checkOptions(op, options, ['labelSmoothing', 'ignoreIndex', 'reduction']);
  const smoothing = opts.labelSmoothing === undefined ? 0 : checkFinite(op, 'options.labelSmoothing', opts.labelSmoothing);
  if (smoothing < 0 || smoothing > 1) {
    throw mismatch('ERR_ARGUMENT', op, 'options.labelSmoothing', 'a number in [0, 1]', describe(smoothing));
  }
  const ignoreIndex =
    opts.ignoreIndex === undefined ? -100 : checkInteger(op, 'options.ignoreIndex', opts.ignoreIndex, Number.MIN_SAFE_INTEGER);
  const reduction = opts.reduction === undefined ? 'mean' : opts.reduction;
  if (!(REDUCTIONS as readonly unknown[]).includes(reduction)) {
    throw mismatch('ERR_ARGUMENT', op, 'options.reduction', `one of ${REDUCTIONS.join(', ')}`, describe(reduction));
  }
  // Targets index memory: checked here, on the host (a copy of a cuda tensor's).
  const tHost = hostValues(tt, op, 'targets') as Int32Array;
  const tData = dataOf(tt, op, 'targets') as unknown as Int32Array;
  let count = 0;
  for (let i = 0; i < N; i++) {
    const t = tHost[i];
    if (t === ignoreIndex) continue;
    if (t < 0 || t >= C) {
      throw mismatch('ERR_ARGUMENT', op, `targets[${i}]`, `a class in [0, ${C}) or ignoreIndex (${ignoreIndex})`, String(t));
    }
    count++;
  }

  const { dtype } = lt;
  const loss = outputBuffer(op, dtype, N, lt.device);
  const lse = outputBuffer(op, dtype, N, lt.device);
  const sizes = { N, C, labelSmoothing: smoothing, ignoreIndex };
  const work = N > 0 && C > 0;
  if (work) {
    const addon = nnAddon(op);
    runKernel(op, () => addon.crossEntropyForward({ ...sizes, logits: dataOf(lt, op, 'logits'), targets: tData, loss, lse }));
  } else {
    // No classes: every row must have been ignored (checked above), so every loss is 0.
    fillBuffer(op, loss, 0);
    fillBuffer(op, lse, Number.NEGATIVE_INFINITY);
  }
  let output: Tensor;
  const lossT = makeTensor(loss, [N], dtype, lt.device);
  if (reduction === 'none') {
    output = lossT;
  } else {
    // Summed in float64 in row order: deterministic, and exact enough for either dtype.
    // (On cuda the N losses are copied to the host for this: N floats, one wait for the GPU.)
    const losses = lt.device === 'cuda' ? (lossT.dataSync() as FloatArray) : loss;
    let total = 0;
    for (let i = 0; i < N; i++) total += losses[i];
    const value = allocate(op, dtype, 1) as FloatArray;
    value[0] = reduction === 'sum' ? total : count > 0 ? total / count : 0;
    output = wrap(value, [], lt);
    lossT.dispose();
  }
  const lseT = makeTensor(lse, [N], dtype, lt.device);
  const result = record(output, op, [lt], [lt, tt, lseT], (g, _needs, saved) => {
    const where = `${op} (backward)`;
    const [zData, tgt, lseData] = saved as [FloatArray, Int32Array, FloatArray];
    const dlogits = outputBuffer(where, dtype, N * C, lt.device);
    if (work) {
      let dloss: FloatArray;
      if (reduction === 'none') {
        dloss = dataOf(g, where, 'gradient');
      } else {
        const g0 = hostValues(g, where, 'gradient')[0];
        dloss = outputBuffer(where, dtype, N, lt.device);
        fillBuffer(where, dloss, reduction === 'sum' ? g0 : count > 0 ? g0 / count : 0);
      }
      const addon = nnAddon(where);
      runKernel(where, () =>
        addon.crossEntropyBackward({ ...sizes, logits: zData, targets: tgt, lse: lseData, dloss, dlogits }),
      );
    }
    return [wrap(dlogits, lt.shape, lt)];
  });
  lseT.dispose();
  return result;
}

/** The ops of this family, spread into the public `ops` object by lib/ops/index.ts. */
export const nnOps = {
  /** Layer normalization over the last dim, with optional weight and bias [d]. */
  layerNorm,
  /** The exact (erf) GELU. */
  gelu,
  /** max(x, 0). */
  relu,
  /** Inverted dropout with a mask regenerated from (seed, index) in the backward. */
  dropout,
  /** Rows of weight [V, d] looked up by int32 ids. */
  embedding,
  /** PyTorch's cross_entropy: logits [N, C], int32 targets [N]; label smoothing, ignoreIndex. */
  crossEntropy,
};
