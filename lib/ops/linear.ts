/**
 * Dense products: `matmul` (batched matrix product) and `linear` (PyTorch's `F.linear`, the
 * projection of every Luna layer). Both run the addon's blocked GEMM (native/INTERFACE-gemm.md),
 * whose result is bitwise the same for any thread count.
 *
 * @packageDocumentation
 */
import { formatShape, mismatch } from '../errors';
import { checkShape } from '../dtype';
import type { Tensor } from '../tensor';
import { FloatArray, loadNative } from '../native';
import type { GemmArgs } from '../native-ops';
import { dataOf, floatInput, outputBuffer, record, runKernel, wrap } from './common';

/** The element count of `shape` (validated: refused past 2^31 - 1 before anything is allocated). */
function sizeOf(op: string, what: string, shape: readonly number[]): number {
  return checkShape(op, what, shape as number[]).size;
}

/** Runs the GEMM into a fresh (poisonable) buffer of `size` elements and returns it. */
function gemmInto(op: string, like: Tensor, size: number, args: Omit<GemmArgs, 'c'>): FloatArray {
  const c = outputBuffer(op, like.dtype, size, like.device);
  runKernel(op, () => loadNative().gemm({ ...args, c }));
  return c;
}

/**
 * Matrix product over the last two dimensions.
 *
 * - `a` [..., M, K]; `b` [K, N] (one matrix shared by every batch item) or [..., K, N] with the
 *   same leading dimensions as `a`. Returns [..., M, N].
 * - Float32 or float64, both inputs of one dtype, on the CPU. No broadcasting beyond a shared
 *   2-D `b`.
 *
 * Backward: da = g b^T, db = a^T g (summed over the batch when `b` is shared).
 *
 * @throws LunaError ERR_SHAPE (ranks, inner sizes or batch dimensions that do not match),
 *   ERR_DTYPE (non-float or mixed dtypes), ERR_DEVICE, ERR_ARGUMENT (not a tensor; an output
 *   over 2^31 - 1 elements), ERR_DISPOSED.
 */
export function matmul(aIn: Tensor, bIn: Tensor): Tensor {
  const op = 'matmul';
  const a = floatInput(op, 'a', aIn);
  const b = floatInput(op, 'b', bIn, a, 'a');
  if (a.rank < 2) {
    throw mismatch('ERR_SHAPE', op, 'a.shape', '[..., M, K] (rank >= 2)', formatShape(a.shape));
  }
  const lead = a.shape.slice(0, -2);
  const [M, K] = a.shape.slice(-2);
  const shared = b.rank === 2;
  const expectedB = shared ? `[${K},N] (K matching a)` : `${formatShape([...lead, K, 'N'])} (batch dims and K matching a)`;
  if (!shared && (b.rank !== a.rank || b.shape.slice(0, -2).some((d, i) => d !== lead[i]))) {
    throw mismatch('ERR_SHAPE', op, 'b.shape', `[${K},N] or ${formatShape([...lead, K, 'N'])} (K and batch dims matching a)`, formatShape(b.shape));
  }
  if (b.shape[b.rank - 2] !== K) {
    throw mismatch('ERR_SHAPE', op, 'b.shape', expectedB, formatShape(b.shape));
  }
  const N = b.shape[b.rank - 1];
  const batch = lead.reduce((x, y) => x * y, 1);
  const outShape = [...lead, M, N];
  const aData = dataOf(a, op, 'a');
  const bData = dataOf(b, op, 'b');

  // A shared b folds the batch into the rows of one product; a batched b is one product per item.
  const out = shared
    ? gemmInto(op, a, sizeOf(op, 'output shape', outShape), { a: aData, b: bData, M: batch * M, N, K })
    : gemmInto(op, a, sizeOf(op, 'output shape', outShape), { a: aData, b: bData, M, N, K, batch });

  return record(wrap(out, outShape, a), op, [a, b], [a, b], (g, needs, [aSaved, bSaved]) => {
    const where = `${op} (backward)`;
    const gData = dataOf(g, where, 'gradient');
    const as = aSaved as FloatArray;
    const bs = bSaved as FloatArray;
    let da: Tensor | null = null;
    let db: Tensor | null = null;
    if (needs[0]) {
      // da [.., M, K] = g [.., M, N] b^T
      const args = shared
        ? { a: gData, b: bs, M: batch * M, N: K, K: N, transB: true }
        : { a: gData, b: bs, M, N: K, K: N, transB: true, batch };
      da = wrap(gemmInto(where, a, a.size, args), a.shape, a);
    }
    if (needs[1]) {
      // db = a^T g: [K, N] summed over every row of every item when shared, else per item.
      const args = shared
        ? { a: as, b: gData, M: K, N, K: batch * M, transA: true }
        : { a: as, b: gData, M: K, N, K: M, transA: true, batch };
      db = wrap(gemmInto(where, a, b.size, args), b.shape, b);
    }
    return [da, db];
  });
}

/**
 * A linear layer, PyTorch's `F.linear`: y = x W^T + bias.
 *
 * - `x` [..., in] (rank >= 1); `weight` [out, in] (PyTorch / fairseq layout); `bias` [out], or
 *   null / undefined for none. Returns [..., out].
 * - Float32 or float64, one dtype throughout, on the CPU. The bias is added inside the GEMM.
 *
 * Backward: dx = g W, dW = g^T x and db = column sums of g, both summed over every leading
 * dimension of x.
 *
 * @throws LunaError ERR_SHAPE, ERR_DTYPE, ERR_DEVICE, ERR_ARGUMENT, ERR_DISPOSED.
 */
export function linear(xIn: Tensor, weightIn: Tensor, biasIn?: Tensor | null): Tensor {
  const op = 'linear';
  const x = floatInput(op, 'x', xIn);
  const weight = floatInput(op, 'weight', weightIn, x, 'x');
  const bias = biasIn === undefined || biasIn === null ? null : floatInput(op, 'bias', biasIn, x, 'x');
  if (x.rank < 1) {
    throw mismatch('ERR_SHAPE', op, 'x.shape', '[..., in] (rank >= 1)', formatShape(x.shape));
  }
  const inF = x.shape[x.rank - 1];
  if (weight.rank !== 2 || weight.shape[1] !== inF) {
    throw mismatch('ERR_SHAPE', op, 'weight.shape', `[out,${inF}] (in matching x's last dim)`, formatShape(weight.shape));
  }
  const outF = weight.shape[0];
  if (bias !== null && (bias.rank !== 1 || bias.shape[0] !== outF)) {
    throw mismatch('ERR_SHAPE', op, 'bias.shape', `[${outF}] (out matching weight)`, formatShape(bias.shape));
  }
  const lead = x.shape.slice(0, -1);
  const rows = lead.reduce((p, d) => p * d, 1);
  const outShape = [...lead, outF];
  const xData = dataOf(x, op, 'x');
  const wData = dataOf(weight, op, 'weight');
  const y = gemmInto(op, x, sizeOf(op, 'output shape', outShape), {
    a: xData,
    b: wData,
    M: rows,
    N: outF,
    K: inF,
    transB: true,
    bias: bias === null ? null : dataOf(bias, op, 'bias'),
  });

  const inputs = bias === null ? [x, weight] : [x, weight, bias];
  return record(wrap(y, outShape, x), op, inputs, [x, weight], (g, needs, [xSaved, wSaved]) => {
    const where = `${op} (backward)`;
    const gData = dataOf(g, where, 'gradient');
    const grads: (Tensor | null)[] = [null, null, null];
    if (needs[0]) {
      // dx [rows, in] = g [rows, out] W [out, in]
      const dx = gemmInto(where, x, x.size, { a: gData, b: wSaved as FloatArray, M: rows, N: inF, K: outF });
      grads[0] = wrap(dx, x.shape, x);
    }
    if (needs[1]) {
      // dW [out, in] = g^T [out, rows] x [rows, in]: the long reduction over every row.
      const dw = gemmInto(where, x, weight.size, { a: gData, b: xSaved as FloatArray, M: outF, N: inF, K: rows, transA: true });
      grads[1] = wrap(dw, weight.shape, weight);
    }
    if (bias !== null && needs[2]) {
      const db = outputBuffer(where, x.dtype, outF, x.device);
      runKernel(where, () => loadNative().columnSum({ x: gData, out: db, rows, cols: outF }));
      grads[2] = wrap(db, bias.shape, bias);
    }
    return grads.slice(0, inputs.length);
  });
}

/** The ops of this family, spread into the public `ops` object by lib/ops/index.ts. */
export const linearOps = {
  /** Matrix product over the last two dims: [..., M, K] x [K, N] or [..., K, N] -> [..., M, N]. */
  matmul,
  /** PyTorch's `F.linear`: x [..., in], weight [out, in], optional bias [out] -> [..., out]. */
  linear,
};
