// Incremental decoding of causal Luna attention (CausalLunaState, native causalStep): the outputs
// of the steps equal the parallel pass (causalLunaAttention) over the whole sequence at every t,
// for one-token steps and mixed prefill sizes that cross chunk boundaries; reorder (beam search),
// clone, dispose. Float64 must agree to rounding (1e-12); float32 is held to the forward policy of
// design.md against the float64 reference. Then the validation of the state, of the op and of the
// raw addon (kernels and gradients are in causal-attention.test.ts).
import { afterEach, describe, expect, it } from 'vitest';
import { ops, tensor, type Tensor } from '../lib/index';
import { CausalLunaState, setCausalChunkForTesting, type CausalActivation } from '../lib/ops/causal';
import type { CausalBackwardArgs, CausalForwardArgs } from '../lib/native-ops';
import { expectLunaError, maskTensor, maxAbs, maxAbsDiff, randTensor, randnF64, randomMask, rngFor, where, type FloatArray } from './helpers';
import { addon } from './native-helpers';

const EPS32 = 2 ** -23;
type Dtype = 'float32' | 'float64';

/** One batch of sequences: q, k, v, kc [B,h,n,dh] and pq [B,h,l,dh] as flat arrays. */
interface Seq {
  q: Float64Array;
  k: Float64Array;
  v: Float64Array; // === k when tied
  kc: Float64Array;
  pq: Float64Array;
  mask: Uint8Array | null;
  B: number;
  h: number;
  n: number;
  l: number;
  dh: number;
}

function randomSeq(name: string, B: number, h: number, n: number, l: number, dh: number, tied: boolean, masked: boolean): Seq {
  const rng = rngFor(name);
  const N = B * h * n * dh;
  const k = randnF64(rng, N);
  return {
    q: randnF64(rng, N),
    k,
    v: tied ? k : randnF64(rng, N),
    kc: randnF64(rng, N),
    pq: randnF64(rng, B * h * l * dh),
    mask: masked ? randomMask(rng, B, l, 0.3) : null,
    B,
    h,
    n,
    l,
    dh,
  };
}

/** Rows [t0, t1) of a [B,h,n,dh] array. */
function rows(a: Float64Array, s: Seq, t0: number, t1: number): Float64Array {
  const out = new Float64Array(s.B * s.h * (t1 - t0) * s.dh);
  for (let bh = 0; bh < s.B * s.h; bh++) out.set(a.subarray((bh * s.n + t0) * s.dh, (bh * s.n + t1) * s.dh), bh * (t1 - t0) * s.dh);
  return out;
}

function asTensor(a: Float64Array, shape: number[], dtype: Dtype): Tensor {
  return tensor(dtype === 'float64' ? Float64Array.from(a) : Float32Array.from(a), { shape, dtype });
}

/** The parallel pass over the whole sequence, through the op. */
function parallel(s: Seq, dtype: Dtype, activation: CausalActivation): FloatArray {
  const shape = [s.B, s.h, s.n, s.dh];
  const k = asTensor(s.k, shape, dtype);
  const v = s.v === s.k ? k : asTensor(s.v, shape, dtype);
  const mask = s.mask ? maskTensor(s.mask, s.B, s.l) : null;
  const y = ops.causalLunaAttention(asTensor(s.q, shape, dtype), k, v, asTensor(s.kc, shape, dtype), asTensor(s.pq, [s.B, s.h, s.l, s.dh], dtype), {
    packPaddingMask: mask,
    activation,
  });
  return y.dataSync() as FloatArray;
}

/** The float64 reference kernel on the same sequence, and its plain float32 instantiation. */
function reference(s: Seq, dtype: Dtype, activation: CausalActivation): FloatArray {
  const F = dtype === 'float64' ? Float64Array : Float32Array;
  const k = F.from(s.k);
  const out = new F(s.q.length);
  addon.causalReferenceForward({
    q: F.from(s.q), k, v: s.v === s.k ? k : F.from(s.v), kc: F.from(s.kc), pq: F.from(s.pq), mask: s.mask, out,
    B: s.B, h: s.h, n: s.n, l: s.l, dh: s.dh, scale: 1 / Math.sqrt(s.dh), activation,
  });
  return out;
}

/** Runs the state over the sequence in steps of the given sizes; returns every output, in order. */
function decode(s: Seq, dtype: Dtype, activation: CausalActivation, sizes: number[], state?: CausalLunaState): { out: Float64Array; state: CausalLunaState } {
  const st = state ?? new CausalLunaState(asTensor(s.pq, [s.B, s.h, s.l, s.dh], dtype), { packPaddingMask: s.mask ? maskTensor(s.mask, s.B, s.l) : null, activation });
  const parts: Float64Array[] = [];
  let t = 0;
  for (const size of sizes) {
    const shape = [s.B, s.h, size, s.dh];
    const k = asTensor(rows(s.k, s, t, t + size), shape, dtype);
    const v = s.v === s.k ? k : asTensor(rows(s.v, s, t, t + size), shape, dtype);
    const before = st.steps;
    const o = st.step(asTensor(rows(s.q, s, t, t + size), shape, dtype), k, v, asTensor(rows(s.kc, s, t, t + size), shape, dtype));
    expect(o.shape).toEqual(shape);
    expect(o.requiresGrad).toBe(false);
    expect(st.steps).toBe(before + size);
    parts.push(Float64Array.from(o.dataSync() as FloatArray));
    t += size;
  }
  // Reassemble [B,h,n,dh] from the per-step pieces.
  const out = new Float64Array(s.B * s.h * t * s.dh);
  let t0 = 0;
  sizes.forEach((size, i) => {
    for (let bh = 0; bh < s.B * s.h; bh++) out.set(parts[i].subarray(bh * size * s.dh, (bh + 1) * size * s.dh), (bh * t + t0) * s.dh);
    t0 += size;
  });
  return { out, state: st };
}

/** The decoded outputs equal the parallel pass: float64 to 1e-12, float32 by the forward policy. */
function expectMatches(s: Seq, dtype: Dtype, activation: CausalActivation, decoded: Float64Array, ctx: string) {
  if (dtype === 'float64') {
    const par = parallel(s, 'float64', activation);
    let worst = 0;
    let at = -1;
    for (let i = 0; i < decoded.length; i++) {
      const d = Math.abs(decoded[i] - par[i]) / Math.max(1, Math.abs(par[i]));
      if (!(d <= worst)) {
        worst = d;
        at = i;
      }
    }
    const t = at < 0 ? -1 : Math.floor(at / s.dh) % s.n;
    expect(worst, `decoding differs from the parallel pass by ${worst} at position t=${t + 1} ${ctx}`).toBeLessThanOrEqual(1e-12);
    return;
  }
  const ref = reference(s, 'float64', activation);
  const errPlain = maxAbsDiff(reference(s, 'float32', activation), ref);
  const errDecode = maxAbsDiff(decoded, ref);
  const errParallel = maxAbsDiff(parallel(s, 'float32', activation), ref);
  const bound = 2 * errPlain + 4 * EPS32 * maxAbs(ref);
  expect(errDecode, `float32 decoding error ${errDecode} > bound ${bound} ${ctx}`).toBeLessThanOrEqual(bound);
  expect(errParallel, `float32 parallel error ${errParallel} > bound ${bound} ${ctx}`).toBeLessThanOrEqual(bound);
}

afterEach(() => setCausalChunkForTesting(undefined));

describe('decoding equals the parallel pass at every t', () => {
  for (const dtype of ['float64', 'float32'] as const) {
    for (const [tied, masked, act] of [
      [true, false, 'softplus'],
      [false, true, 'softplus'],
      [true, true, 'elu'],
    ] as const) {
      const name = `one token a step ${dtype}${tied ? ' tied' : ''}${masked ? ' masked' : ''} ${act}`;
      it(name, () => {
        // n = 150 crosses the parallel pass's chunk boundaries (64, 128).
        const s = randomSeq(name, 2, 3, 150, 5, 8, tied, masked);
        const { out } = decode(s, dtype, act, new Array(s.n).fill(1));
        expectMatches(s, dtype, act, out, where(name));
      });
    }

    for (const chunk of [undefined, 5]) {
      const name = `mixed prefill sizes ${dtype}${chunk ? ` chunk=${chunk}` : ''}`;
      it(name, () => {
        if (chunk) setCausalChunkForTesting(chunk);
        const sizes = [1, 5, 64, 2, 70, 1, 1, 7, 33, 16];
        const n = sizes.reduce((a, b) => a + b, 0);
        const s = randomSeq(name, 2, 2, n, 16, 12, false, true);
        const { out } = decode(s, dtype, 'softplus', sizes);
        expectMatches(s, dtype, 'softplus', out, where(name));
      });
    }
  }

  it('a fully masked batch element decodes to 0, the others are unaffected', () => {
    const name = 'decode fully masked';
    const s = randomSeq(name, 3, 2, 20, 4, 6, true, true);
    s.mask!.fill(1, 4, 8); // batch 1
    const { out } = decode(s, 'float64', 'softplus', [3, 1, 16]);
    const per = s.h * s.n * s.dh;
    expect(out.subarray(per, 2 * per).every((x) => x === 0), where(name)).toBe(true);
    expectMatches(s, 'float64', 'softplus', out, where(name));
  });
});

describe('reorder (beam search) and clone', () => {
  /** A sequence whose row i is old row idx[i] for the first t0 positions and fresh after. */
  function reordered(old: Seq, fresh: Seq, idx: number[], t0: number): Seq {
    const B = idx.length;
    const { h, l, dh } = old;
    const n = fresh.n;
    const pick = (o: Float64Array, f: Float64Array): Float64Array => {
      const a = new Float64Array(B * h * n * dh);
      for (let i = 0; i < B; i++)
        for (let hh = 0; hh < h; hh++) {
          const dst = (i * h + hh) * n * dh;
          a.set(o.subarray((idx[i] * h + hh) * old.n * dh, ((idx[i] * h + hh) * old.n + t0) * dh), dst);
          a.set(f.subarray(dst + t0 * dh, dst + n * dh), dst + t0 * dh);
        }
      return a;
    };
    const pq = new Float64Array(B * h * l * dh);
    const mask = old.mask ? new Uint8Array(B * l) : null;
    idx.forEach((j, i) => {
      pq.set(old.pq.subarray(j * h * l * dh, (j + 1) * h * l * dh), i * h * l * dh);
      if (mask) mask.set(old.mask!.subarray(j * l, (j + 1) * l), i * l);
    });
    const k = pick(old.k, fresh.k);
    return { q: pick(old.q, fresh.q), k, v: old.v === old.k ? k : pick(old.v, fresh.v), kc: pick(old.kc, fresh.kc), pq, mask, B, h, n, l, dh };
  }

  for (const [idx, form] of [
    [[2, 0, 0, 1], 'array'],
    [[1], 'Int32Array'],
    [[0, 2, 1, 2, 2], 'tensor'],
  ] as const) {
    const name = `reorder ${JSON.stringify(idx)} as ${form}`;
    it(name, () => {
      const t0 = 11, n = 30;
      const old = randomSeq(`${name} old`, 3, 2, n, 5, 6, false, true);
      const { state } = decode(old, 'float64', 'softplus', [4, 1, 6]);
      const indices =
        form === 'array' ? [...idx] : form === 'Int32Array' ? Int32Array.from(idx) : tensor(Int32Array.from(idx), { shape: [idx.length], dtype: 'int32' });
      expect(state.reorder(indices)).toBe(state);
      expect(state.batchSize).toBe(idx.length);
      expect(state.steps).toBe(t0);
      const fresh = randomSeq(`${name} new`, idx.length, 2, n, 5, 6, false, false);
      const full = reordered(old, fresh, [...idx], t0);
      const tail: Seq = { ...full, q: rows(full.q, full, t0, n), k: rows(full.k, full, t0, n), v: rows(full.v, full, t0, n), kc: rows(full.kc, full, t0, n), n: n - t0 };
      const { out } = decode(tail, 'float64', 'softplus', [1, 7, 1, 10], state);
      const par = parallel(full, 'float64', 'softplus');
      const want = rows(Float64Array.from(par), full, t0, n);
      expect(maxAbsDiff(out, want), where(name)).toBeLessThanOrEqual(1e-12 * Math.max(1, maxAbs(want)));
    });
  }

  it('clone: an independent copy', () => {
    const name = 'clone';
    const s = randomSeq(name, 2, 2, 24, 4, 5, true, true);
    const a = decode(s, 'float64', 'elu', [10]).state;
    const b = a.clone();
    expect(b.steps).toBe(10);
    // Continue the clone with other tokens, then the original with the true ones.
    const other = randomSeq(`${name} other`, 2, 2, 24, 4, 5, true, false);
    const mixed: Seq = { ...s, q: s.q.slice(), k: s.k.slice(), kc: s.kc.slice() };
    mixed.v = mixed.k;
    for (const key of ['q', 'k', 'kc'] as const) {
      for (let bh = 0; bh < 4; bh++) mixed[key].set(other[key].subarray((bh * 24 + 10) * 5, (bh + 1) * 24 * 5), (bh * 24 + 10) * 5);
    }
    const tail = (x: Seq): Seq => {
      const k = rows(x.k, x, 10, 24);
      return { ...x, q: rows(x.q, x, 10, 24), k, v: k, kc: rows(x.kc, x, 10, 24), n: 14 };
    };
    const ob = decode(tail(mixed), 'float64', 'elu', [3, 11], b).out;
    const oa = decode(tail(s), 'float64', 'elu', [14], a).out;
    const check = (seq: Seq, got: Float64Array, what: string) => {
      const want = rows(Float64Array.from(parallel(seq, 'float64', 'elu')), seq, 10, 24);
      expect(maxAbsDiff(got, want), `${what} ${where(name)}`).toBeLessThanOrEqual(1e-12 * Math.max(1, maxAbs(want)));
    };
    check(s, oa, 'original after the clone stepped');
    check(mixed, ob, 'clone');
  });
});

describe('lifetime and validation', () => {
  const rng = rngFor('state validation');
  const pq = tensor(Float32Array.from(randnF64(rng, 2 * 3 * 4 * 5)), { shape: [2, 3, 4, 5] });
  const x = (s: number, dtype: Dtype = 'float32', B = 2, h = 3, dh = 5) =>
    asTensor(randnF64(rng, B * h * s * dh), [B, h, s, dh], dtype);

  it('dispose, Symbol.dispose, ERR_DISPOSED', () => {
    const st = new CausalLunaState(pq);
    st.step(x(2), x(2), x(2), x(2));
    expect(st.isDisposed).toBe(false);
    st[Symbol.dispose]();
    expect(st.isDisposed).toBe(true);
    st.dispose();
    expectLunaError(() => st.step(x(1), x(1), x(1), x(1)), 'ERR_DISPOSED', /CausalLunaState\.step: the state has been disposed/);
    expectLunaError(() => st.steps, 'ERR_DISPOSED');
    expectLunaError(() => st.reorder([0]), 'ERR_DISPOSED');
    expectLunaError(() => st.clone(), 'ERR_DISPOSED');
  });

  it('an empty step changes nothing', () => {
    const st = new CausalLunaState(pq);
    expect(st.step(x(0), x(0), x(0), x(0)).shape).toEqual([2, 3, 0, 5]);
    expect(st.steps).toBe(0);
  });

  it('constructor and step arguments', () => {
    expectLunaError(() => new CausalLunaState(ops.reshape(x(1), [6, 5])), 'ERR_SHAPE', /pq\.shape expected \[B,h,l,dh\]/);
    expectLunaError(() => new CausalLunaState(pq, { dropout: 0.1 } as never), 'ERR_ARGUMENT', /unknown key "dropout"/);
    expectLunaError(() => new CausalLunaState(pq, { activation: 'tanh' as 'elu' }), 'ERR_ARGUMENT', /options\.activation/);
    expectLunaError(() => new CausalLunaState(pq, { packPaddingMask: maskTensor(new Uint8Array(6), 2, 3) }), 'ERR_SHAPE', /packPaddingMask\.shape expected \[2,4\]/);
    const st = new CausalLunaState(pq);
    expectLunaError(() => st.step(x(2, 'float32', 2, 3, 6), x(2), x(2), x(2)), 'ERR_SHAPE', /q\.shape expected \[2,3,s,5\]/);
    expectLunaError(() => st.step(x(2, 'float32', 1), x(2), x(2), x(2)), 'ERR_SHAPE', /q\.shape/);
    expectLunaError(() => st.step(x(2), x(3), x(2), x(2)), 'ERR_SHAPE', /k\.shape expected \[2,3,2,5\]/);
    expectLunaError(() => st.step(x(2), x(2), x(2), x(2, 'float64')), 'ERR_DTYPE', /kc\.dtype expected float32/);
    expectLunaError(() => st.step(x(2), x(2), 3 as unknown as Tensor, x(2)), 'ERR_ARGUMENT', /v expected a Tensor/);
    expect(st.steps).toBe(0);
  });

  it('reorder arguments', () => {
    const st = new CausalLunaState(pq);
    expectLunaError(() => st.reorder([0, 2]), 'ERR_ARGUMENT', /indices\[1\] expected an integer in \[0, 1\], got 2/);
    expectLunaError(() => st.reorder([0.5]), 'ERR_ARGUMENT', /indices\[0\]/);
    expectLunaError(() => st.reorder('0' as never), 'ERR_ARGUMENT', /indices expected an array/);
    expectLunaError(() => st.reorder(tensor([0, 1], { dtype: 'float32' })), 'ERR_DTYPE', /indices\.dtype expected int32/);
    expect(st.batchSize).toBe(2);
    st.reorder([]);
    expect(st.batchSize).toBe(0);
    expect(st.step(x(1, 'float32', 0), x(1, 'float32', 0), x(1, 'float32', 0), x(1, 'float32', 0)).shape).toEqual([0, 3, 1, 5]);
  });

  it('inputs that require grad give an output without gradient (inference only)', () => {
    const st = new CausalLunaState(pq);
    const q = tensor(Float32Array.from(randnF64(rng, 30)), { shape: [2, 3, 1, 5], requiresGrad: true });
    expect(st.step(q, q, q, q).requiresGrad).toBe(false);
  });
});

describe('validation of causalLunaAttention', () => {
  const rng = rngFor('validation');
  const x = randTensor(rng, [2, 3, 5, 4]);
  const pq = randTensor(rng, [2, 3, 6, 4]);
  const op = ops.causalLunaAttention;
  it('shapes', () => {
    expectLunaError(() => op(randTensor(rng, [2, 3, 5]), x, x, x, pq), 'ERR_SHAPE', /q\.shape expected \[B,h,n,dh\]/);
    expectLunaError(() => op(x, randTensor(rng, [2, 3, 6, 4]), x, x, pq), 'ERR_SHAPE', /k\.shape expected \[2,3,5,4\].*got \[2,3,6,4\]/);
    expectLunaError(() => op(x, x, randTensor(rng, [2, 3, 5, 5]), x, pq), 'ERR_SHAPE', /v\.shape/);
    expectLunaError(() => op(x, x, x, randTensor(rng, [1, 3, 5, 4]), pq), 'ERR_SHAPE', /kc\.shape/);
    expectLunaError(() => op(x, x, x, x, randTensor(rng, [2, 3, 6, 5])), 'ERR_SHAPE', /pq\.shape expected \[2,3,l,4\]/);
    const bad = maskTensor(new Uint8Array(10), 2, 5);
    expectLunaError(() => op(x, x, x, x, pq, { packPaddingMask: bad }), 'ERR_SHAPE', /packPaddingMask\.shape expected \[2,6\]/);
  });
  it('dtypes', () => {
    const x64 = randTensor(rng, [2, 3, 5, 4], { dtype: 'float64' });
    const x32 = randTensor(rng, [2, 3, 5, 4], { dtype: 'float32' });
    expectLunaError(() => op(x32, x64, x64, x64, pq), 'ERR_DTYPE', /k\.dtype expected float32/);
    expectLunaError(() => op(x, x, x, x, randTensor(rng, [2, 3, 6, 4], { dtype: 'float32' })), 'ERR_DTYPE', /pq\.dtype/);
    const ints = tensor(new Int32Array(120), { shape: [2, 3, 5, 4] });
    expectLunaError(() => op(ints, x, x, x, pq), 'ERR_DTYPE', /q\.dtype expected float32 or float64/);
    const floatMask = randTensor(rng, [2, 6]);
    expectLunaError(() => op(x, x, x, x, pq, { packPaddingMask: floatMask }), 'ERR_DTYPE', /packPaddingMask\.dtype expected bool/);
  });
  it('arguments and options', () => {
    expectLunaError(() => op(x, x, x, [1, 2] as unknown as Tensor, pq), 'ERR_ARGUMENT', /kc expected a Tensor/);
    expectLunaError(() => op(x, x, x, x, pq, { scale: NaN }), 'ERR_ARGUMENT', /options\.scale expected a finite number/);
    expectLunaError(() => op(x, x, x, x, pq, { activation: 'relu' as 'elu' }), 'ERR_ARGUMENT', /options\.activation expected "softplus" or "elu", got "relu"/);
    expectLunaError(() => op(x, x, x, x, pq, { dropout: 1 }), 'ERR_ARGUMENT', /options\.dropout expected a probability/);
    expectLunaError(() => op(x, x, x, x, pq, { dropout: 0.1, seed: -1 }), 'ERR_ARGUMENT', /options\.seed/);
    expectLunaError(() => op(x, x, x, x, pq, { keyPaddingMask: null } as never), 'ERR_ARGUMENT', /unknown key "keyPaddingMask"/);
    const gone = randTensor(rng, [2, 3, 5, 4]);
    gone.dispose();
    expectLunaError(() => op(x, x, gone, x, pq), 'ERR_DISPOSED', /v has been disposed/);
  });
});

describe('the raw addon refuses bad arguments without crashing', () => {
  const rng = rngFor('raw addon validation');
  const f32 = (n: number) => Float32Array.from(randnF64(rng, n));
  const p = { q: f32(40), k: f32(40), v: f32(40), kc: f32(40), pq: f32(24), mask: null, B: 1, h: 2, n: 5, l: 3, dh: 4, scale: 0.5 };
  const out = new Float32Array(p.q.length);
  const fwd = { ...p, out } as CausalForwardArgs;
  const expectThrow = (fn: () => void, type: typeof TypeError | typeof RangeError, msg: RegExp) => {
    let err: unknown = null;
    try {
      fn();
    } catch (e) {
      err = e;
    }
    expect(err, `expected a ${type.name} matching ${msg}`).toBeInstanceOf(type);
    expect((err as Error).message).toMatch(msg);
  };
  it('types, lengths, sizes and options', () => {
    expectThrow(() => addon.causalForward({ ...fwd, q: new Float64Array(p.q.length) }), TypeError, /k must be a Float64Array/);
    expectThrow(() => addon.causalForward({ ...fwd, kc: new Float32Array(3) }), RangeError, /kc must have 40 elements, got 3/);
    expectThrow(() => addon.causalForward({ ...fwd, n: 0 }), RangeError, /n must be a positive integer/);
    expectThrow(() => addon.causalForward({ ...fwd, activation: 'gelu' as 'elu' }), TypeError, /activation must be/);
    expectThrow(() => addon.causalForward({ ...fwd, chunk: 0 }), RangeError, /chunk must be a positive integer/);
    expectThrow(() => addon.causalForward({ ...fwd, dropout: 0.5 }), RangeError, /seed must be a non-negative safe integer/);
    expectThrow(() => addon.causalForward({ ...fwd, mask: new Uint8Array(2) }), RangeError, /mask must have 3 elements/);
    expectThrow(() => addon.causalForward({ ...fwd, out: p.q as Float32Array }), RangeError, /out must not share memory with q/);
    expectThrow(() => addon.causalForward({ ...fwd, out: (p.kc as Float32Array).subarray(0) }), RangeError, /out must not share memory with kc/);
    const grads = { dq: new Float32Array(40), dk: new Float32Array(40), dv: new Float32Array(40), dkc: new Float32Array(40), dpq: new Float32Array(24) };
    const bwd = { ...p, dout: new Float32Array(40), ...grads } as CausalBackwardArgs;
    expectThrow(() => addon.causalBackward({ ...bwd, dv: grads.dk }), TypeError, /dk and dv must be the same array exactly when k and v are/);
    expectThrow(() => addon.causalBackward({ ...bwd, dkc: grads.dq }), RangeError, /dq and dkc must not share memory/);
    expectThrow(() => addon.causalBackward({ ...bwd, dpq: new Float32Array(40) }), RangeError, /dpq must have 24 elements/);
    expectThrow(() => addon.causalStep({ ...p, out, stateK: new Float32Array(24), stateV: new Float32Array(24), steps: -1 }), RangeError, /steps must be a non-negative safe integer/);
    expectThrow(() => addon.causalStep({ ...p, out, stateK: new Float32Array(24), stateV: new Float32Array(20), steps: 0 }), RangeError, /stateV must have 24 elements/);
  });
});
