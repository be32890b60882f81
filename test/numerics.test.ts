// NaN and infinities: every op lets them through where PyTorch does (a NaN input poisons the
// outputs that depend on it, and only those), nothing crashes or hangs, and the backward
// passes carry NaN gradients along. Expected patterns are written as strings: one character
// per element, N for NaN, + / - for +-Infinity, 0 for zero, f for another finite value.
import { describe, expect, it } from 'vitest';
import { nn, ops, optim, randn, tensor, zeros, type Tensor } from '../lib/index';
import { SEED, where } from './helpers';
import { describeChild, runChild } from './subprocess';

type FloatDtype = 'float32' | 'float64';
const DTYPES: FloatDtype[] = ['float32', 'float64'];

function pattern(x: ArrayLike<number>): string {
  let s = '';
  for (let i = 0; i < x.length; i++) {
    const v = x[i];
    s += Number.isNaN(v) ? 'N' : v === Infinity ? '+' : v === -Infinity ? '-' : v === 0 ? '0' : 'f';
  }
  return s;
}

const pat = (t: Tensor): string => pattern(t.dataSync() as ArrayLike<number>);

/** A tensor of seeded normal values with `special` written at the given flat positions. */
function withSpecial(shape: number[], dtype: FloatDtype, seed: number, special: [number, number][], requiresGrad = false): Tensor {
  const data = randn(shape, { dtype, seed }).dataSync() as Float32Array | Float64Array;
  for (const [i, v] of special) data[i] = v;
  return tensor(data, { shape, dtype, requiresGrad });
}

/** Rows (of `cols` elements) of a pattern, for readable expectations. */
function rows(p: string, cols: number): string[] {
  const out: string[] = [];
  for (let i = 0; i < p.length; i += cols) out.push(p.slice(i, i + cols));
  return out;
}

const seed = SEED % 100_000;

describe.each(DTYPES)('%s', (dtype) => {
  const t = (data: number[], shape?: number[], requiresGrad = false) => tensor(data, { dtype, shape, requiresGrad });

  it('elementwise ops and reductions', () => {
    const x = t([NaN, Infinity, -Infinity, 0, 1]);
    expect(pat(ops.add(x, t([1, 1, 1, 1, 1])))).toBe('N+-ff');
    expect(pat(ops.sub(x, t([0, Infinity, -Infinity, 0, 1])))).toBe('NNN00');
    expect(pat(ops.mul(x, zeros([5], { dtype })))).toBe('NNN00'); // inf * 0 = NaN
    expect(pat(ops.scale(x, 0))).toBe('NNN00');
    expect(pat(ops.add(t([NaN, 1, 2, 3], [2, 2]), t([1, 1])))).toBe('Nfff'); // broadcast: only the NaN's slot
    expect(pat(ops.sum(x))).toBe('N');
    expect(pat(ops.sum(t([Infinity, 1])))).toBe('+');
    expect(pat(ops.sum(t([Infinity, -Infinity])))).toBe('N');
    expect(pat(ops.mean(t([NaN, 1, 2, 3], [2, 2]), { axis: 1 }))).toBe('Nf');
    expect(pat(ops.relu(x))).toBe('N+00f');
    // x * Phi(x): NaN stays NaN, +inf gives +inf, -inf gives -inf * 0 = NaN (as torch's erf form).
    expect(pat(ops.gelu(x))).toBe('N+N0f');
    // Inverted dropout multiplies by 0 or 1/(1-p): NaN stays NaN either way, -inf dropped is NaN.
    const dropped = pat(ops.dropout(t([NaN, NaN, NaN, NaN, NaN, NaN, NaN, NaN]), 0.5, { seed: 1 }));
    expect(dropped).toBe('NNNNNNNN');
  });

  it('GEMM (matmul, linear): a NaN reaches exactly the outputs that read it', () => {
    // a [3,2] with a NaN at (1,0); b [2,4] with an Inf at (0,3) and zeros elsewhere in row 0.
    const a = t([1, 2, NaN, 3, 4, 5], [3, 2]);
    const b = t([0, 0, 0, Infinity, 1, 2, 3, 4], [2, 4]);
    expect(rows(pat(ops.matmul(a, b)), 4)).toEqual(['fff+', 'NNNN', 'fff+']);
    const z = t([0, 1, 0, 1, 0, 1], [3, 2]); // 0 * Inf = NaN in column 3
    expect(rows(pat(ops.matmul(z, b)), 4)).toEqual(['fffN', 'fffN', 'fffN']);
    // linear: weight [out=2, in=2], a NaN bias poisons its column only.
    const w = t([1, 0, 0, 1], [2, 2]);
    expect(rows(pat(ops.linear(t([1, 2, 3, 4], [2, 2]), w, t([NaN, 0]))), 2)).toEqual(['Nf', 'Nf']);
    // Larger, blocked and threaded: one NaN in A poisons one row of C, nothing else.
    const big = withSpecial([70, 300], dtype, seed, [[37 * 300 + 123, NaN]]);
    const c = pat(ops.matmul(big, randn([300, 50], { dtype, seed: seed + 1 })));
    const bad = rows(c, 50).map((r, i) => (r.includes('N') ? i : -1)).filter((i) => i >= 0);
    expect(bad, where('gemm')).toEqual([37]);
    expect(rows(c, 50)[37]).toBe('N'.repeat(50));
  });

  it('layerNorm: a non-finite value poisons its own row only, forward and backward', () => {
    const x = t([1, NaN, 3, 1, 2, 3, Infinity, 1, 2, 4, 5, 6], [4, 3], true);
    const w = t([1, 1, 1], [3], true);
    const y = ops.layerNorm(x, w, null);
    expect(rows(pat(y), 3)).toEqual(['NNN', 'f0f', 'NNN', 'f0f']);
    ops.sum(ops.mul(y, t([1, 2, 3], [3]))).backward();
    expect(rows(pat(x.grad!), 3).map((r, i) => (i % 2 === 0 ? r : r.replace(/[f0]/g, 'f')))).toEqual(['NNN', 'fff', 'NNN', 'fff']);
    expect(pat(w.grad!)).toBe('NNN');
  });

  it('crossEntropy: as torch.nn.functional.cross_entropy', () => {
    // rows: NaN logit; +inf target logit (inf - inf); -inf non-target; -inf target; finite.
    const logits = t([0, NaN, Infinity, 0, 0, -Infinity, -Infinity, 0, 1, 2], [5, 2], true);
    const targets = tensor([0, 0, 0, 0, 1], { dtype: 'int32' });
    expect(pat(ops.crossEntropy(logits, targets, { reduction: 'none' }))).toBe('NN0+f');
    const loss = ops.crossEntropy(logits, targets);
    expect(pat(loss)).toBe('N');
    loss.backward();
    const g = rows(pat(logits.grad!), 2);
    expect(g[0]).toBe('NN');
    expect(g[1]).toBe('NN');
    expect(g[4]).toMatch(/^[f0]{2}$/);
  });

  it('embedding: a NaN row reaches its lookups and its gradient', () => {
    const weight = t([1, 2, NaN, 4, 5, 6], [3, 2], true);
    const ids = tensor([2, 1, 1, 0], { dtype: 'int32' });
    const y = ops.embedding(ids, weight);
    expect(rows(pat(y), 2)).toEqual(['ff', 'Nf', 'Nf', 'ff']);
    y.backward(t([1, 1, NaN, 1, 1, 1, 1, 1], [4, 2]));
    expect(rows(pat(weight.grad!), 2)).toEqual(['ff', 'Nf', 'ff']);
  });

  describe.each(['packAttention', 'unpackAttention'] as const)('%s', (op) => {
    const B = 1, h = 2, lq = 5, dh = 4;
    const f = ops[op];
    // A pack over more than one chunk of 1024 keys exercises the chunk merge as well.
    const lengths = op === 'packAttention' ? [3, 40, 1100] : [3, 40];

    it.each(lengths)('NaN and Inf in q, k, v (keys: %i)', (lk) => {
      const s = (n: number) => seed + n * 7 + lk;
      const q = randn([B, h, lq, dh], { dtype, seed: s(1) });
      const k = randn([B, h, lk, dh], { dtype, seed: s(2) });
      const v = randn([B, h, lk, dh], { dtype, seed: s(3) });
      const ctx = where(`${op} lk=${lk}`);
      const headRows = (y: Tensor) => rows(pat(y), dh).map((r) => (r.includes('N') ? 'N' : 'f')).join('');
      // NaN in q (head 0, row 1): that row only, as torch.softmax of a NaN row.
      const qn = withSpecial([B, h, lq, dh], dtype, s(1), [[1 * dh + 2, NaN]]);
      expect(headRows(f(qn, k, v)), ctx).toBe('fNfff' + 'fffff');
      // +Inf in q: its logits are +-inf, and inf - inf is NaN in the softmax: the row is NaN.
      const qi = withSpecial([B, h, lq, dh], dtype, s(1), [[3 * dh, Infinity]]);
      expect(headRows(f(qi, k, v)), ctx).toBe('fffNf' + 'fffff');
      // NaN in key 1 of head 1: every query of head 1 sees a NaN logit.
      const kn = withSpecial([B, h, lk, dh], dtype, s(2), [[(lk + 1) * dh, NaN]]);
      expect(headRows(f(q, kn, v)), ctx).toBe('fffff' + 'NNNNN');
      // NaN in one value (head 0, key 0, channel 3): that channel of every head-0 output.
      const vn = withSpecial([B, h, lk, dh], dtype, s(3), [[3, NaN]]);
      const out = rows(pat(f(q, k, vn)), dh);
      expect(out.slice(0, lq).every((r) => /^[f0]{3}N$/.test(r)), ctx).toBe(true);
      expect(out.slice(lq).every((r) => /^[f0]{4}$/.test(r)), ctx).toBe(true);
      // +Inf in key 0 of head 0: a query whose logit with it is +inf (q0 > 0) or NaN (q0 = 0,
      // 0 * inf) has a NaN softmax; one whose logit is -inf (q0 < 0) just ignores that key.
      const q0 = withSpecial([B, h, lq, dh], dtype, s(1), [1, -1, 0, 2, -2].map((x, i) => [i * dh, x] as [number, number]));
      const ki = withSpecial([B, h, lk, dh], dtype, s(2), [[0, Infinity], [1, 0], [2, 0], [3, 0]]);
      expect(headRows(f(q0, ki, v)), ctx).toBe('NfNNf' + 'fffff');
    });

    it('a fully masked row keeps its documented 0, even with a NaN query; backward carries NaN', () => {
      const lk = 6;
      const mask = tensor([[1, 1, 1, 1, 1, 1]], { dtype: 'bool' });
      const qn = withSpecial([B, h, lq, dh], dtype, seed, [[0, NaN]]);
      expect(pat(f(qn, randn([B, h, lk, dh], { dtype, seed: 2 }), randn([B, h, lk, dh], { dtype, seed: 3 }), { keyPaddingMask: mask }))).toBe('0'.repeat(B * h * lq * dh));
      // Backward: a NaN query row gives a NaN dq row, and NaN dk / dv (sums over the rows).
      const q = withSpecial([B, h, lq, dh], dtype, seed, [[2 * dh, NaN]], true);
      const k = randn([B, h, lk, dh], { dtype, seed: 5, requiresGrad: true });
      const y = f(q, k, k);
      y.backward(randn(y.shape, { dtype, seed: 6 }));
      const dq = rows(pat(q.grad!), dh).map((r) => (r.includes('N') ? 'N' : 'f')).join('');
      expect(dq).toBe('ffNff' + 'fffff');
      expect(pattern((k.grad!.dataSync() as Float64Array).subarray(0, lk * dh))).toMatch(/N/);
      expect(pattern((k.grad!.dataSync() as Float64Array).subarray(lk * dh))).not.toMatch(/N/);
    });
  });

  it('a whole layer, its backward, clipping and AdamW with a NaN input: NaN everywhere it flows, no crash, no hang', () => {
    const layer = new nn.LunaEncoderLayer({ embedDim: 8, numHeads: 2, ffnDim: 16, dtype, seed });
    const x = withSpecial([2, 6, 8], dtype, seed + 1, [[3, NaN]]);
    const p = randn([2, 3, 8], { dtype, seed: seed + 2 });
    const start = performance.now();
    const out = layer.forward(x, p);
    // Batch 0 holds the NaN; batch 1 must be untouched.
    const xs = pat(out.x);
    expect(xs.slice(0, 48)).toBe('N'.repeat(48));
    expect(xs.slice(48)).not.toMatch(/N/);
    ops.mean(out.x).backward();
    const params = layer.parameters();
    expect(params.some((q) => pat(q.grad!).includes('N'))).toBe(true);
    expect(Number.isNaN(optim.clipGradNorm(params, 1.0))).toBe(true);
    expect(() => optim.clipGradNorm(params, 1.0, { errorIfNonfinite: true })).toThrow(/errorIfNonfinite/);
    new optim.AdamW(params, { lr: 1e-3 }).step();
    expect(params.some((q) => pat(q).includes('N'))).toBe(true);
    expect(performance.now() - start).toBeLessThan(10_000);
    layer.dispose();
  });
});

// The row max and exp have AVX-512, AVX2 and generic versions: each must let NaN through.
describe.each(['avx2', 'generic'])('LUNA_ISA=%s', (isa) => {
  it('attention rows with NaN or infinite logits are NaN, masked rows 0', () => {
    const r = runChild(
      String.raw`
const { ops, randn, tensor } = lib;
const out = [];
for (const dtype of ['float32', 'float64']) for (const op of ['packAttention', 'unpackAttention']) for (const lk of [3, 40]) {
  const q = randn([1, 1, 3, 8], { dtype, seed: 1 }).dataSync();
  q[8] = NaN; q[16] = Infinity;
  const y = ops[op](tensor(q, { shape: [1, 1, 3, 8], dtype }), randn([1, 1, lk, 8], { dtype, seed: 2 }), randn([1, 1, lk, 8], { dtype, seed: 3 }));
  const d = y.dataSync();
  out.push([0, 1, 2].map((i) => (Array.from(d.slice(i * 8, i * 8 + 8)).some(Number.isNaN) ? 'N' : 'f')).join(''));
}
process.stdout.write(JSON.stringify(out));
`,
      null,
      { env: { ...process.env, LUNA_ISA: isa } },
    );
    expect(r.status, describeChild(r)).toBe(0);
    expect(r.json).toEqual(new Array(8).fill('fNN'));
  });
});
