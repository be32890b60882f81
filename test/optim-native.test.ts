// The optimizers' native updates (native/kernels/optim_kernels.cc, cuda/optim.cu) against the JS
// loops they replaced. The loops below are the former lib/optim code, kept here as the
// reference: the native update must give their bits exactly, step after step, for float32 and
// float64 (they computed in JS numbers, rounding to the array's type on store, as the kernels
// do). The norm of clipGradNorm is a float64 sum in a fixed order of its own, so it is held to
// the error bound of any summation order instead; the rescale is exact. On a machine with a
// usable CUDA device the same runs on cuda tensors must give the CPU's bits.
import { describe, expect, it } from 'vitest';
import { backendInfo, optim, setNumThreads, getNumThreads, tensor, type Optimizer, type Tensor } from '../lib/index';
import { loadNative } from '../lib/native';
import { optimNative } from '../lib/optim/native';
import { expectLunaError, rngFor, where, type Rng } from './helpers';

type FloatArray = Float32Array | Float64Array;
type Kind = 'float32' | 'float64';

function randn(rng: Rng, n: number, kind: Kind, scale = 1): FloatArray {
  const out = kind === 'float32' ? new Float32Array(n) : new Float64Array(n);
  for (let i = 0; i < n; i++) out[i] = rng.normal() * scale;
  return out;
}

// ---- the former JS updates (the reference) ------------------------------------------------------

interface AdamConfig {
  lr: number;
  betas: [number, number];
  eps: number;
  weightDecay: number;
  decoupled: boolean;
}

function adamReference(c: AdamConfig, t: number, p: FloatArray, g: FloatArray, m: FloatArray, v: FloatArray): void {
  const { lr, eps } = c;
  const [beta1, beta2] = c.betas;
  const shrink = c.decoupled ? 1 - lr * c.weightDecay : 1;
  const l2 = c.decoupled ? 0 : c.weightDecay;
  const stepSize = lr / (1 - beta1 ** t);
  const bc2Sqrt = Math.sqrt(1 - beta2 ** t);
  for (let j = 0; j < p.length; j++) {
    const gj = g[j] + l2 * p[j];
    if (shrink !== 1) p[j] *= shrink;
    m[j] = beta1 * m[j] + (1 - beta1) * gj;
    v[j] = beta2 * v[j] + (1 - beta2) * gj * gj;
    p[j] -= (stepSize * m[j]) / (Math.sqrt(v[j]) / bc2Sqrt + eps);
  }
}

interface SgdConfig {
  lr: number;
  momentum: number;
  dampening: number;
  weightDecay: number;
  nesterov: boolean;
}

function sgdReference(c: SgdConfig, first: boolean, p: FloatArray, g: FloatArray, buf: FloatArray): void {
  const { lr, momentum, dampening, weightDecay: wd, nesterov } = c;
  if (momentum === 0) {
    for (let j = 0; j < p.length; j++) p[j] -= lr * (g[j] + wd * p[j]);
    return;
  }
  for (let j = 0; j < p.length; j++) {
    const gj = g[j] + wd * p[j];
    buf[j] = first ? gj : momentum * buf[j] + (1 - dampening) * gj;
    p[j] -= lr * (nesterov ? gj + momentum * buf[j] : buf[j]);
  }
}

/** Index of the first element whose bits differ (NaN equal to NaN), or -1. */
function firstDifference(a: FloatArray, b: FloatArray): number {
  if (a.length !== b.length) return 0;
  for (let i = 0; i < a.length; i++) if (!Object.is(a[i], b[i])) return i;
  return -1;
}

function expectSameBits(got: FloatArray, want: FloatArray, label: string): void {
  const i = firstDifference(got, want);
  expect(i, `${where(label)} element ${i}: ${got[i]} vs ${want[i]}`).toBe(-1);
}

const ADAM_CONFIGS: Record<string, AdamConfig> = {
  adam: { lr: 1e-3, betas: [0.9, 0.999], eps: 1e-8, weightDecay: 0, decoupled: false },
  'adam l2': { lr: 3e-3, betas: [0.9, 0.999], eps: 1e-8, weightDecay: 0.1, decoupled: false },
  adamw: { lr: 1e-3, betas: [0.9, 0.98], eps: 1e-6, weightDecay: 0.01, decoupled: true },
  'adamw no decay': { lr: 0.05, betas: [0.8, 0.9], eps: 1e-2, weightDecay: 0, decoupled: true },
  'beta1 0': { lr: 0.01, betas: [0, 0.5], eps: 1e-8, weightDecay: 0, decoupled: false },
};

const SGD_CONFIGS: Record<string, SgdConfig> = {
  plain: { lr: 0.1, momentum: 0, dampening: 0, weightDecay: 0, nesterov: false },
  'plain l2': { lr: 0.05, momentum: 0, dampening: 0, weightDecay: 0.01, nesterov: false },
  momentum: { lr: 0.1, momentum: 0.9, dampening: 0, weightDecay: 0, nesterov: false },
  'nesterov l2': { lr: 0.02, momentum: 0.9, dampening: 0, weightDecay: 1e-3, nesterov: true },
  dampening: { lr: 0.3, momentum: 0.5, dampening: 0.25, weightDecay: 0.1, nesterov: false },
};

// Sizes: one element, odd, and more than one 32 Ki chunk of the CPU kernel (threads split it).
const SIZES = [1, 7, 70001];
const STEPS = 4;

describe('native optimizer updates give the former JS loops’ bits', () => {
  for (const kind of ['float32', 'float64'] as const) {
    for (const [name, c] of Object.entries(ADAM_CONFIGS)) {
      it(`${c.decoupled ? 'AdamW' : 'Adam'} (${name}), ${kind}`, () => {
        for (const n of SIZES) {
          const rng = rngFor(`adam ${name} ${kind} ${n}`);
          const p0 = randn(rng, n, kind);
          const param = tensor(p0.slice(), { dtype: kind, requiresGrad: true });
          const opts = { lr: c.lr, betas: c.betas, eps: c.eps, weightDecay: c.weightDecay };
          const opt = c.decoupled ? new optim.AdamW([param], opts) : new optim.Adam([param], opts);
          const p = p0.slice();
          const m = p.slice().fill(0);
          const v = p.slice().fill(0);
          for (let t = 1; t <= STEPS; t++) {
            const g = randn(rng, n, kind, 0.5);
            param.grad = tensor(g.slice(), { dtype: kind });
            opt.step();
            adamReference(c, t, p, g, m, v);
            expectSameBits(param.dataSync() as FloatArray, p, `adam ${name} ${kind} n=${n} step ${t}`);
          }
          const sd = opt.stateDict();
          expectSameBits(sd['state.0.exp_avg'].dataSync() as FloatArray, m, `adam ${name} ${kind} n=${n} exp_avg`);
          expectSameBits(sd['state.0.exp_avg_sq'].dataSync() as FloatArray, v, `adam ${name} ${kind} n=${n} exp_avg_sq`);
        }
      });
    }
    for (const [name, c] of Object.entries(SGD_CONFIGS)) {
      it(`SGD (${name}), ${kind}`, () => {
        for (const n of SIZES) {
          const rng = rngFor(`sgd ${name} ${kind} ${n}`);
          const p0 = randn(rng, n, kind);
          const param = tensor(p0.slice(), { dtype: kind, requiresGrad: true });
          const opt = new optim.SGD([param], c);
          const p = p0.slice();
          const buf = p.slice().fill(0);
          for (let t = 1; t <= STEPS; t++) {
            const g = randn(rng, n, kind);
            param.grad = tensor(g.slice(), { dtype: kind });
            opt.step();
            sgdReference(c, t === 1, p, g, buf);
            expectSameBits(param.dataSync() as FloatArray, p, `sgd ${name} ${kind} n=${n} step ${t}`);
          }
          if (c.momentum > 0) {
            expectSameBits(opt.stateDict()['state.0.momentum_buffer'].dataSync() as FloatArray, buf, `sgd ${name} buffer`);
          }
        }
      });
    }
  }

  it('non-finite values go through as the JS loop let them (NaN gradient, infinite weight)', () => {
    const p0 = Float32Array.of(1, Infinity, -2, 0.5);
    const g = Float32Array.of(NaN, 1, 0.25, -0.125);
    const c = ADAM_CONFIGS['adam l2'];
    const param = tensor(p0.slice(), { requiresGrad: true });
    param.grad = tensor(g.slice());
    new optim.Adam([param], { lr: c.lr, betas: c.betas, eps: c.eps, weightDecay: c.weightDecay }).step();
    const p = p0.slice();
    adamReference(c, 1, p, g, new Float32Array(4), new Float32Array(4));
    expectSameBits(param.dataSync() as FloatArray, p, 'adam non-finite');
  });

  it('SGD refuses Nesterov with dampening, as torch', () => {
    const p = tensor([1, 2], { requiresGrad: true });
    expectLunaError(() => new optim.SGD([p], { lr: 0.1, momentum: 0.9, dampening: 0.1, nesterov: true }), 'ERR_ARGUMENT', /dampening/);
    expectLunaError(() => new optim.SGD([p], { lr: 0.1, dampening: -1 }), 'ERR_ARGUMENT', /dampening/);
    expect(new optim.SGD([p], { lr: 0.1, momentum: 0.5, dampening: 0.5 }).dampening).toBe(0.5);
  });
});

// ---- clipGradNorm -------------------------------------------------------------------------------

/** The norm reduction in float64, term by term in order (the former JS loop). */
function normReference(gs: FloatArray[], p: number): { value: number; magnitude: number; terms: number } {
  let sum = 0;
  let terms = 0;
  for (const g of gs) {
    terms += g.length;
    for (let j = 0; j < g.length; j++) {
      const a = Math.abs(g[j]);
      if (p === Infinity) sum = Number.isNaN(sum) || a <= sum ? sum : a;
      else sum += p === 2 ? g[j] * g[j] : p === 1 ? a : a ** p;
    }
  }
  return { value: sum, magnitude: sum, terms };
}

describe('the native norm reduction', () => {
  const U = 2 ** -53;
  const addon = (): ReturnType<typeof optimNative> => optimNative();

  for (const kind of ['float32', 'float64'] as const) {
    for (const p of [2, 1, Infinity, 3, 0.5]) {
      it(`normType ${p}, ${kind}, several arrays (one empty, one over a chunk)`, () => {
        const rng = rngFor(`norm ${p} ${kind}`);
        const gs = [randn(rng, 1, kind), randn(rng, 0, kind), randn(rng, 100003, kind, 3), randn(rng, 17, kind)];
        const got = addon().normReduce({ xs: gs, normType: p });
        const ref = normReference(gs, p);
        if (p === Infinity) {
          expect(got).toBe(ref.value);
        } else {
          // Both are float64 sums of the same non-negative terms in two orders: each is within
          // (n - 1) u of the exact sum; the powers may differ by an ulp each (V8's ** vs pow).
          const bound = 2 * (ref.terms + 2) * U * ref.magnitude;
          expect(Math.abs(got - ref.value), where(`norm ${p} ${kind}`)).toBeLessThanOrEqual(bound);
        }
      });
    }
  }

  it('does not depend on the thread count', () => {
    const rng = rngFor('norm threads');
    const gs = [randn(rng, 300001, 'float32'), randn(rng, 5, 'float32'), randn(rng, 65536, 'float32')];
    const before = getNumThreads();
    try {
      const results = [1, 2, 3, 8].map((t) => {
        setNumThreads(t);
        return [2, 1, 3].map((normType) => addon().normReduce({ xs: gs, normType }));
      });
      for (const r of results) expect(r).toEqual(results[0]);
    } finally {
      setNumThreads(before);
    }
  });

  it('a NaN anywhere gives NaN for every order, the maximum included', () => {
    const g = Float64Array.of(1, NaN, 3);
    for (const p of [2, 1, Infinity, 3]) expect(Number.isNaN(addon().normReduce({ xs: [g], normType: p }))).toBe(true);
    expect(Number.isNaN(addon().normReduce({ xs: [Float64Array.of(NaN), Float64Array.of(2)], normType: Infinity }))).toBe(true);
  });

  it('sumOfSquares takes one array or a list', () => {
    const a = Float32Array.of(3, 4);
    expect(addon().sumOfSquares({ x: a })).toBe(25);
    expect(addon().sumOfSquares({ x: [a, Float32Array.of(12)] })).toBe(169);
    expect(addon().sumOfSquares({ x: [] })).toBe(0);
  });

  it('the raw entries refuse what would be unsafe', () => {
    const n = addon();
    const f32 = new Float32Array(4);
    const f64 = new Float64Array(4);
    expect(() => n.normReduce({ xs: [f32, f64], normType: 2 })).toThrow(/element type/);
    expect(() => n.normReduce({ xs: [f32], normType: 0 })).toThrow(/normType/);
    expect(() => n.normReduce({ xs: [new Int32Array(2) as never], normType: 2 })).toThrow(/Float32Array/);
    const base = { param: f32, grad: f32, expAvg: new Float32Array(4), expAvgSq: new Float32Array(4), lr: 1e-3 };
    const adam = { ...base, beta1: 0.9, beta2: 0.999, eps: 1e-8, weightDecay: 0, decoupled: false, biasCorrection1: 0.1, biasCorrection2: 0.001 };
    expect(() => n.adamStep({ ...adam, grad: new Float32Array(3) })).toThrow(/elements/);
    expect(() => n.adamStep({ ...adam, grad: f64 })).toThrow(/Float32Array/);
    expect(() => n.adamStep({ ...adam, biasCorrection1: 0 })).toThrow(/biasCorrection1/);
    expect(() => n.adamStep({ ...adam, lr: NaN })).toThrow(/lr/);
    const sgd = { param: f32, grad: f32, momentumBuffer: null, lr: 0.1, momentum: 0.9, dampening: 0, weightDecay: 0, nesterov: false, firstStep: true };
    expect(() => n.sgdStep(sgd)).toThrow(/momentumBuffer/);
    expect(() => n.sgdStep({ ...sgd, momentum: 0, momentumBuffer: f32 })).toThrow(/momentumBuffer/);
    expect(() => n.scaleInPlace({ x: f32, scale: 'x' as never })).toThrow(/scale/);
  });
});

describe('clipGradNorm through the native reduction', () => {
  it('mixed float32 and float64 gradients: the norm within the summation bound, the rescale exact', () => {
    const rng = rngFor('clip mixed');
    const a = tensor(randn(rng, 5000, 'float32'), { requiresGrad: true });
    const b = tensor(randn(rng, 33, 'float64'), { dtype: 'float64', requiresGrad: true });
    const ga = randn(rng, 5000, 'float32', 2);
    const gb = randn(rng, 33, 'float64', 2);
    a.grad = tensor(ga.slice());
    b.grad = tensor(gb.slice(), { dtype: 'float64' });
    const total = optim.clipGradNorm([a, b], 1.5);
    const ref = normReference([ga, gb], 2);
    // Two float64 sums of the same 5033 terms, each within (n - 1) u of the exact sum, plus the
    // roundings of the square root and of squaring it again.
    expect(Math.abs(total * total - ref.value)).toBeLessThanOrEqual(2 * (5033 + 2) * 2 ** -53 * ref.value);
    const coef = 1.5 / (total + 1e-6);
    expectSameBits((a.grad as Tensor).dataSync() as FloatArray, ga.map((x) => x * coef), 'clip rescale float32');
    expectSameBits((b.grad as Tensor).dataSync() as FloatArray, gb.map((x) => x * coef), 'clip rescale float64');
  });

  it('infinity norm: the largest magnitude across both dtypes, exactly', () => {
    const a = tensor([0.5, -3], { requiresGrad: true });
    const b = tensor([2, -1], { dtype: 'float64', requiresGrad: true });
    a.grad = tensor([0.5, -3]);
    b.grad = tensor([2, -7.25], { dtype: 'float64' });
    expect(optim.clipGradNorm([a, b], 100, { normType: Infinity })).toBe(7.25);
  });
});

// ---- CUDA: the same updates on the GPU give the CPU's bits ----------------------------------------

const cuda = (() => {
  try {
    return backendInfo().cuda;
  } catch {
    return { available: false, reason: 'the addon could not be loaded' };
  }
})();
const noCudaReason = cuda.available ? '' : `no usable CUDA device (${cuda.reason || 'unknown reason'})`;
if (!cuda.available) console.log(`optim-native: skipping the CUDA-vs-CPU parity tests: ${noCudaReason}`);

describe.skipIf(!cuda.available)('CUDA optimizer updates match the CPU bit for bit', () => {
  function pair(data: Float32Array): [Tensor, Tensor] {
    return [tensor(data.slice(), { requiresGrad: true }), tensor(data.slice(), { device: 'cuda', requiresGrad: true })];
  }

  for (const [name, c] of Object.entries(ADAM_CONFIGS)) {
    it(`Adam (${name})`, () => {
      for (const n of [1, 5, 4096, 70001]) {
        const rng = rngFor(`cuda adam ${name} ${n}`);
        const [pc, pg] = pair(randn(rng, n, 'float32') as Float32Array);
        const opts = { lr: c.lr, betas: c.betas, eps: c.eps, weightDecay: c.weightDecay };
        const make = (p: Tensor): Optimizer => (c.decoupled ? new optim.AdamW([p], opts) : new optim.Adam([p], opts));
        const oc = make(pc);
        const og = make(pg);
        for (let t = 1; t <= STEPS; t++) {
          const g = randn(rng, n, 'float32', 0.5);
          pc.grad = tensor(g.slice());
          pg.grad = tensor(g.slice(), { device: 'cuda' });
          oc.step();
          og.step();
          expectSameBits(pg.dataSync() as FloatArray, pc.dataSync() as FloatArray, `cuda adam ${name} n=${n} step ${t}`);
        }
        const sc = oc.stateDict();
        const sg = og.stateDict();
        expect(sg['state.0.exp_avg'].device).toBe('cuda');
        expectSameBits(sg['state.0.exp_avg_sq'].dataSync() as FloatArray, sc['state.0.exp_avg_sq'].dataSync() as FloatArray, 'v');
      }
    });
  }

  for (const [name, c] of Object.entries(SGD_CONFIGS)) {
    it(`SGD (${name})`, () => {
      for (const n of [1, 1000, 70001]) {
        const rng = rngFor(`cuda sgd ${name} ${n}`);
        const [pc, pg] = pair(randn(rng, n, 'float32') as Float32Array);
        const oc = new optim.SGD([pc], c);
        const og = new optim.SGD([pg], c);
        for (let t = 1; t <= STEPS; t++) {
          const g = randn(rng, n, 'float32');
          pc.grad = tensor(g.slice());
          pg.grad = tensor(g.slice(), { device: 'cuda' });
          oc.step();
          og.step();
          expectSameBits(pg.dataSync() as FloatArray, pc.dataSync() as FloatArray, `cuda sgd ${name} n=${n} step ${t}`);
        }
      }
    });
  }

  it('clipGradNorm on cuda gradients: the norm within the summation bound, then the same rescale', () => {
    for (const p of [2, 1, Infinity, 3]) {
      const rng = rngFor(`cuda clip ${p}`);
      const gs = [randn(rng, 70001, 'float32'), randn(rng, 3, 'float32'), randn(rng, 1 << 20, 'float32')] as Float32Array[];
      const onGpu = gs.map((g) => {
        const t = tensor(new Float32Array(g.length), { device: 'cuda', requiresGrad: true });
        t.grad = tensor(g.slice(), { device: 'cuda' });
        return t;
      });
      const total = optim.clipGradNorm(onGpu, 0.5, { normType: p });
      const ref = normReference(gs, p);
      const reduced = p === Infinity || p === 1 ? total : p === 2 ? total * total : total ** p;
      if (p === Infinity) expect(total).toBe(ref.value);
      // Each sum within (n - 1) u of the exact one; each power within 2 ulps (CUDA's pow, V8's
      // **); the root taken and the power taken back again add a few units more.
      else expect(Math.abs(reduced - ref.value)).toBeLessThanOrEqual(2 * (ref.terms + 8) * 2 ** -53 * ref.magnitude);
      const coef = 0.5 / (total + 1e-6);
      onGpu.forEach((t, k) =>
        expectSameBits((t.grad as Tensor).dataSync() as FloatArray, gs[k].map((x) => x * coef), `cuda clip ${p} grad ${k}`),
      );
    }
  });

  it('a cuda state dict loads into a cuda optimizer and refuses a CPU one', () => {
    const p = tensor([1, 2, 3], { device: 'cuda', requiresGrad: true });
    p.grad = tensor([0.5, -1, 2], { device: 'cuda' });
    const opt = new optim.Adam([p]);
    opt.step();
    const sd = opt.stateDict();
    const other = new optim.Adam([tensor([0, 0, 0], { device: 'cuda', requiresGrad: true })]);
    other.loadStateDict(sd);
    expect(Array.from(other.stateDict()['state.0.exp_avg'].dataSync())).toEqual(Array.from(sd['state.0.exp_avg'].dataSync()));
    const cpu = { ...sd, 'state.0.exp_avg': sd['state.0.exp_avg'].to('cpu') };
    expectLunaError(() => other.loadStateDict(cpu), 'ERR_DEVICE', /exp_avg/);
  });
});

describe('without CUDA', () => {
  it.skipIf(cuda.available)('the native optimizer entries are present in a CPU-only binary', () => {
    const addon = loadNative() as unknown as Record<string, unknown>;
    for (const name of ['adamStep', 'sgdStep', 'normReduce', 'sumOfSquares', 'scaleInPlace']) expect(typeof addon[name]).toBe('function');
  });
});
