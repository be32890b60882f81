// Tensors: creation, dtypes, generators, data access, devices, detach, disposal and the
// validation rules of design.md ("sizes are non-negative integers; nested arrays must be
// rectangular; data length must match the shape; a tensor over 2^31 elements is refused before
// allocating").
import { describe, expect, it } from 'vitest';
import { LunaError, Tensor, ones, ops, randn, tensor, zeros } from '../lib/index';
import { expectLunaError, expectLunaErrorAsync, rngFor, where } from './helpers';

const arr = (t: Tensor) => Array.from(t.dataSync() as ArrayLike<number>);

describe('tensor() creation', () => {
  it('from a nested array infers the shape, defaults to float32 on the cpu', () => {
    const t = tensor([
      [1, 2, 3],
      [4, 5, 6],
    ]);
    expect(t.shape).toEqual([2, 3]);
    expect(t.dtype).toBe('float32');
    expect(t.device).toBe('cpu');
    expect(t.requiresGrad).toBe(false);
    expect(t.grad == null).toBe(true);
    const d = t.dataSync();
    expect(d).toBeInstanceOf(Float32Array);
    expect(Array.from(d as Float32Array)).toEqual([1, 2, 3, 4, 5, 6]);
  });

  it('from a deeply nested array (rank 4)', () => {
    const t = tensor([[[[1, 2]], [[3, 4]], [[5, 6]]]]);
    expect(t.shape).toEqual([1, 3, 1, 2]);
    expect(arr(t)).toEqual([1, 2, 3, 4, 5, 6]);
  });

  it('from a flat array with an explicit shape', () => {
    const t = tensor([1, 2, 3, 4, 5, 6], { shape: [3, 2] });
    expect(t.shape).toEqual([3, 2]);
    expect(arr(t)).toEqual([1, 2, 3, 4, 5, 6]);
  });

  it('from a Float64Array with dtype float64 keeps every bit', () => {
    const rng = rngFor('f64 bits');
    const src = new Float64Array(10).map(() => rng.normal() * 1e-3 + 1 / 3);
    const t = tensor(src, { shape: [2, 5], dtype: 'float64' });
    expect(t.dtype).toBe('float64');
    const d = t.dataSync() as Float64Array;
    expect(d).toBeInstanceOf(Float64Array);
    expect(Array.from(d), where('f64 bits')).toEqual(Array.from(src));
  });

  it('from a Float32Array with dtype float32', () => {
    const src = new Float32Array([0.1, -2.5, 3e-8, 7]);
    const t = tensor(src, { shape: [4], dtype: 'float32' });
    expect(t.dtype).toBe('float32');
    expect(Array.from(t.dataSync() as Float32Array)).toEqual(Array.from(src));
  });

  it('does not alias the source array: later writes to it do not change the tensor', () => {
    const src = new Float32Array([1, 2, 3, 4]);
    const t = tensor(src, { shape: [2, 2] });
    src[0] = 99;
    expect(arr(t)).toEqual([1, 2, 3, 4]);
  });

  it('float64 nested arrays keep double precision', () => {
    const x = 1 + 2 ** -40; // not representable in float32
    const t = tensor([[x, -x]], { dtype: 'float64' });
    expect(t.dtype).toBe('float64');
    expect(arr(t)).toEqual([x, -x]);
  });

  it('float32 rounds values to single precision', () => {
    const t = tensor([0.1, 1 + 2 ** -40]);
    expect(arr(t)).toEqual([Math.fround(0.1), 1]);
  });

  it('bool tensors store 0/1 in a Uint8Array, from booleans or numbers', () => {
    const a = tensor(
      [
        [true, false, true],
        [false, false, true],
      ],
      { dtype: 'bool' },
    );
    expect(a.dtype).toBe('bool');
    expect(a.shape).toEqual([2, 3]);
    const d = a.dataSync();
    expect(d).toBeInstanceOf(Uint8Array);
    expect(Array.from(d as Uint8Array)).toEqual([1, 0, 1, 0, 0, 1]);
    const b = tensor(new Uint8Array([0, 1, 1, 0]), { shape: [2, 2], dtype: 'bool' });
    expect(Array.from(b.dataSync() as Uint8Array)).toEqual([0, 1, 1, 0]);
  });

  it('zero-size dimensions are allowed', () => {
    const t = zeros([0, 3]);
    expect(t.shape).toEqual([0, 3]);
    expect((t.dataSync() as Float32Array).length).toBe(0);
    const u = tensor([], { shape: [2, 0] });
    expect(u.shape).toEqual([2, 0]);
  });

  it('requiresGrad is recorded', () => {
    const t = tensor([1, 2], { dtype: 'float64', requiresGrad: true });
    expect(t.requiresGrad).toBe(true);
    expect(t.grad == null).toBe(true);
  });
});

describe('zeros / ones', () => {
  it('zeros and ones fill the shape with the dtype', () => {
    for (const dtype of ['float32', 'float64'] as const) {
      const z = zeros([2, 3, 4], { dtype });
      const o = ones([2, 3, 4], { dtype });
      expect(z.shape).toEqual([2, 3, 4]);
      expect(o.shape).toEqual([2, 3, 4]);
      expect(z.dtype).toBe(dtype);
      expect(o.dtype).toBe(dtype);
      expect(arr(z)).toEqual(new Array(24).fill(0));
      expect(arr(o)).toEqual(new Array(24).fill(1));
    }
    expect(zeros([3]).dtype).toBe('float32');
  });

  it('bool zeros/ones are 0/1 bytes', () => {
    expect(Array.from(zeros([3], { dtype: 'bool' }).dataSync() as Uint8Array)).toEqual([0, 0, 0]);
    expect(Array.from(ones([3], { dtype: 'bool' }).dataSync() as Uint8Array)).toEqual([1, 1, 1]);
  });
});

describe('randn', () => {
  it('the same seed reproduces the same numbers; different seeds differ', () => {
    const rng = rngFor('randn seeds');
    const s1 = rng.u32();
    const s2 = (s1 + 1 + rng.int(0, 1000)) >>> 0;
    const a = randn([64, 33], { seed: s1 });
    const b = randn([64, 33], { seed: s1 });
    const c = randn([64, 33], { seed: s2 });
    const ctx = where(`randn seeds ${s1} ${s2}`);
    expect(a.shape).toEqual([64, 33]);
    expect(a.dtype).toBe('float32');
    expect(arr(a), ctx).toEqual(arr(b));
    const ac = arr(a);
    const cc = arr(c);
    let equal = 0;
    for (let i = 0; i < ac.length; i++) if (ac[i] === cc[i]) equal++;
    // Two independent normal streams essentially never agree element-wise.
    expect(equal, ctx).toBeLessThan(5);
  });

  it('two unseeded calls differ', () => {
    const a = arr(randn([1000]));
    const b = arr(randn([1000]));
    expect(a).not.toEqual(b);
  });

  for (const dtype of ['float32', 'float64'] as const) {
    it(`has mean ~0 and std ~1 at n = 1e5 (${dtype})`, () => {
      const seed = rngFor(`randn stats ${dtype}`).u32();
      const t = randn([100, 1000], { seed, dtype });
      expect(t.dtype).toBe(dtype);
      const d = t.dataSync() as Float32Array | Float64Array;
      const n = d.length;
      expect(n).toBe(100000);
      let s = 0;
      let s2 = 0;
      let s4 = 0;
      let nonFinite = 0;
      for (let i = 0; i < n; i++) {
        const x = d[i];
        if (!Number.isFinite(x)) nonFinite++;
        s += x;
        s2 += x * x;
        s4 += x * x * x * x;
      }
      const mean = s / n;
      const variance = s2 / n - mean * mean;
      const kurt = s4 / n / (variance * variance);
      const ctx = where(`randn stats ${dtype} seed=${seed}`);
      expect(nonFinite, ctx).toBe(0);
      // Standard errors at n = 1e5: mean 0.0032, variance 0.0045, kurtosis ~0.015; bounds are
      // about 6 standard errors, so a correct generator fails about once in 10^8 runs.
      expect(Math.abs(mean), ctx).toBeLessThan(0.02);
      expect(Math.abs(Math.sqrt(variance) - 1), ctx).toBeLessThan(0.015);
      // A uniform or otherwise non-Gaussian stream with the right moments has the wrong kurtosis.
      expect(Math.abs(kurt - 3), ctx).toBeLessThan(0.15);
    });
  }
});

describe('data access', () => {
  it('dataSync returns a copy: writing to it does not change the tensor', () => {
    const t = tensor([1, 2, 3]);
    const d = t.dataSync() as Float32Array;
    d[0] = 42;
    expect(arr(t)).toEqual([1, 2, 3]);
    const d2 = t.dataSync();
    expect(d2).not.toBe(d);
  });

  it('data() resolves to the same values as dataSync()', async () => {
    const t = randn([5, 7], { seed: rngFor('data async').u32(), dtype: 'float64' });
    const p = t.data();
    expect(p).toBeInstanceOf(Promise);
    const d = await p;
    expect(d).toBeInstanceOf(Float64Array);
    expect(Array.from(d as Float64Array)).toEqual(arr(t));
  });
});

describe('devices', () => {
  it("to('cpu') gives a cpu tensor with the same values", () => {
    const t = tensor([[1.5, -2]]);
    const u = t.to('cpu');
    expect(u.device).toBe('cpu');
    expect(u.shape).toEqual([1, 2]);
    expect(u.dtype).toBe('float32');
    expect(arr(u)).toEqual([1.5, -2]);
  });

  it("to('cuda') throws ERR_DEVICE_UNAVAILABLE on a machine without a GPU", () => {
    const t = tensor([1, 2]);
    expectLunaError(() => t.to('cuda'), 'ERR_DEVICE_UNAVAILABLE', /cuda/i);
  });

  it("tensor(..., { device: 'cuda' }) throws ERR_DEVICE_UNAVAILABLE here", () => {
    expectLunaError(() => tensor([1, 2], { device: 'cuda' }), 'ERR_DEVICE_UNAVAILABLE', /cuda/i);
  });

  it('an unknown device name is ERR_DEVICE naming options.device', () => {
    expectLunaError(() => tensor([1], { device: 'tpu' as never }), 'ERR_DEVICE', /device/);
  });
});

describe('detach', () => {
  it('has the same values, no grad, and cuts the graph', () => {
    const rng = rngFor('detach');
    const q = tensor(Float64Array.from({ length: 8 }, () => rng.normal()), {
      shape: [1, 1, 2, 4],
      dtype: 'float64',
      requiresGrad: true,
    });
    const kv = tensor(Float64Array.from({ length: 12 }, () => rng.normal()), {
      shape: [1, 1, 3, 4],
      dtype: 'float64',
      requiresGrad: true,
    });
    const y = ops.packAttention(q, kv, kv);
    expect(y.requiresGrad).toBe(true);
    const yd = y.detach();
    expect(yd.requiresGrad).toBe(false);
    expect(yd.grad == null).toBe(true);
    expect(yd.shape).toEqual(y.shape);
    expect(yd.dtype).toBe('float64');
    expect(arr(yd)).toEqual(arr(y));
    // Ops on the detached tensor do not reach the original leaves.
    const z = ops.packAttention(yd, kv.detach(), kv.detach());
    expect(z.requiresGrad).toBe(false);
    const qd = q.detach();
    expect(qd.requiresGrad).toBe(false);
    expect(arr(qd)).toEqual(arr(q));
  });
});

describe('dispose', () => {
  it('dispose() makes later use throw ERR_DISPOSED', async () => {
    const t = tensor([1, 2, 3]);
    t.dispose();
    expectLunaError(() => t.dataSync(), 'ERR_DISPOSED');
    await expectLunaErrorAsync(async () => t.data(), 'ERR_DISPOSED');
    expectLunaError(() => t.to('cpu'), 'ERR_DISPOSED');
    expectLunaError(() => t.detach(), 'ERR_DISPOSED');
  });

  it('[Symbol.dispose]() disposes too', () => {
    const t = tensor([1, 2, 3]);
    expect(typeof (t as unknown as Record<symbol, unknown>)[Symbol.dispose]).toBe('function');
    (t as unknown as { [Symbol.dispose](): void })[Symbol.dispose]();
    expectLunaError(() => t.dataSync(), 'ERR_DISPOSED');
  });

  it('an op on a disposed input throws ERR_DISPOSED', () => {
    const q = zeros([1, 1, 2, 4]);
    const k = ones([1, 1, 3, 4]);
    k.dispose();
    expectLunaError(() => ops.packAttention(q, k, q), 'ERR_DISPOSED');
  });

  it('disposing a tensor does not dispose another made from it', () => {
    const t = tensor([1, 2, 3]);
    const u = t.detach();
    const w = t.to('cpu');
    t.dispose();
    // detach() shares storage; the shared buffer must stay alive for the views that remain,
    // or be copied. Either way the values are still readable.
    if (w !== t) expect(arr(w)).toEqual([1, 2, 3]);
    expect(arr(u)).toEqual([1, 2, 3]);
  });
});

describe('validation', () => {
  it('ragged nested arrays -> ERR_SHAPE', () => {
    expectLunaError(() => tensor([[1, 2], [3]]), 'ERR_SHAPE');
    expectLunaError(() => tensor([[[1], [2]], [[3], [4, 5]]]), 'ERR_SHAPE');
    expectLunaError(() => tensor([[1, 2], 3] as never), 'ERR_SHAPE');
  });

  it('data length not matching the shape -> ERR_SHAPE, naming both', () => {
    const e = expectLunaError(() => tensor([1, 2, 3, 4, 5], { shape: [2, 3] }), 'ERR_SHAPE');
    expect(e.message).toMatch(/5/);
    expect(e.message).toMatch(/6|2, ?3|2x3|\[2, ?3\]/);
    expectLunaError(() => tensor(new Float64Array(7), { shape: [2, 3], dtype: 'float64' }), 'ERR_SHAPE');
    expectLunaError(() => tensor([[1, 2, 3]], { shape: [3, 2] }), 'ERR_SHAPE');
  });

  it('negative or non-integer sizes -> ERR_ARGUMENT', () => {
    expectLunaError(() => zeros([-1, 2]), 'ERR_ARGUMENT');
    expectLunaError(() => zeros([2.5]), 'ERR_ARGUMENT');
    expectLunaError(() => ones([NaN]), 'ERR_ARGUMENT');
    expectLunaError(() => ones([Infinity]), 'ERR_ARGUMENT');
    expectLunaError(() => randn([3, -4]), 'ERR_ARGUMENT');
    expectLunaError(() => tensor([1, 2], { shape: [2.0000001] }), 'ERR_ARGUMENT');
    expectLunaError(() => zeros(['3'] as never), 'ERR_ARGUMENT');
  });

  it('an unknown dtype -> ERR_DTYPE naming options.dtype', () => {
    expectLunaError(() => zeros([2], { dtype: 'int8' as never }), 'ERR_DTYPE', /dtype/);
  });

  it('more than 2^31 elements is refused before allocating', () => {
    const before = process.memoryUsage();
    const t0 = performance.now();
    for (const shape of [[2 ** 16, 2 ** 16], [2 ** 31 + 1], [65536, 32769], [2 ** 20, 2 ** 20, 2 ** 20]]) {
      let err: LunaError | undefined;
      try {
        zeros(shape);
      } catch (e) {
        err = e as LunaError;
      }
      expect(err, `zeros(${JSON.stringify(shape)}) should throw`).toBeInstanceOf(LunaError);
      expect(err!.code).toBe('ERR_ARGUMENT');
      expect(err!.message).toMatch(/2\^31|2147483648|too (large|many)|elements/i);
    }
    expect(() => randn([2 ** 16, 2 ** 16])).toThrow(LunaError);
    expect(() => ones([2 ** 16, 2 ** 16], { dtype: 'bool' })).toThrow(LunaError);
    const ms = performance.now() - t0;
    const after = process.memoryUsage();
    // Allocating even 2^31 bytes would take far longer and show in the external/array-buffer
    // counts; refusing first costs nothing.
    expect(ms).toBeLessThan(200);
    expect(after.arrayBuffers - before.arrayBuffers).toBeLessThan(64 * 2 ** 20);
  });

  it('LunaError is an Error with name, code and message', () => {
    const e = expectLunaError(() => tensor([[1, 2], [3]]), 'ERR_SHAPE');
    expect(e).toBeInstanceOf(LunaError);
    expect(e).toBeInstanceOf(Error);
    expect(e.message.length).toBeGreaterThan(10);
  });
});
