// Autograd: the tape, .grad accumulation, hooks, noGrad, graph release, and gradients through a
// pack -> unpack chain (Luna's non-causal attention core, with the unpack's key = value = the
// pack output) checked against the float64 reference kernels chained by hand.
import { describe, expect, it } from 'vitest';
import { noGrad, ops, tensor, type Tensor } from '../lib/index';
import { expectLunaError, maskTensor, maxAbs, maxAbsDiff, randTensor, randomMask, rngFor, values, where, type Rng } from './helpers';
import { backward as rawBackward, forward as rawForward, type Problem } from './native-helpers';

interface Triple {
  q: Tensor;
  k: Tensor;
  v: Tensor;
}

function triple(rng: Rng, B: number, h: number, lq: number, lk: number, dh: number, grad = [true, true, true]): Triple {
  return {
    q: randTensor(rng, [B, h, lq, dh], { requiresGrad: grad[0] }),
    k: randTensor(rng, [B, h, lk, dh], { requiresGrad: grad[1] }),
    v: randTensor(rng, [B, h, lk, dh], { requiresGrad: grad[2] }),
  };
}

/** The same leaves' values as new leaves (fresh graph, no grad yet). */
function cloneLeaf(t: Tensor, requiresGrad = true): Tensor {
  return tensor(t.dataSync() as Float64Array, { shape: t.shape, dtype: t.dtype as 'float64', requiresGrad });
}

function scaled(g: Tensor, s: number): Tensor {
  const d = (g.dataSync() as Float64Array).map((x) => x * s);
  return tensor(d, { shape: g.shape, dtype: g.dtype as 'float64' });
}

describe('backward()', () => {
  it('needs an explicit gradient for a non-scalar output', () => {
    const { q, k, v } = triple(rngFor('nonscalar'), 1, 1, 2, 3, 4);
    const y = ops.packAttention(q, k, v);
    // A missing argument: ERR_ARGUMENT (design.md names no code; this pins lib's choice).
    expectLunaError(() => y.backward(), 'ERR_ARGUMENT', /grad/);
    expect(q.grad == null && k.grad == null).toBe(true);
  });

  it('defaults the gradient to 1 for a one-element output', () => {
    const rng = rngFor('scalar default');
    const { q, k, v } = triple(rng, 1, 1, 1, 3, 1);
    const y = ops.packAttention(q, k, v);
    expect(y.shape).toEqual([1, 1, 1, 1]);
    y.backward();
    const q2 = cloneLeaf(q);
    const k2 = cloneLeaf(k);
    const v2 = cloneLeaf(v);
    ops.packAttention(q2, k2, v2).backward(tensor([[[[1]]]], { dtype: 'float64' }));
    for (const [a, b] of [
      [q, q2],
      [k, k2],
      [v, v2],
    ]) {
      expect(a.grad, where('scalar default')).toBeTruthy();
      expect(values(a.grad!)).toEqual(values(b.grad!));
    }
    // dv of a one-query softmax is the probability vector: sums to 1.
    const dvSum = values(v.grad!).reduce((s, x) => s + x, 0);
    expect(Math.abs(dvSum - 1), where('scalar default')).toBeLessThan(1e-12);
  });

  it('refuses a gradient of the wrong shape or dtype', () => {
    const { q, k, v } = triple(rngFor('bad grad'), 1, 2, 3, 4, 5);
    const y = ops.packAttention(q, k, v);
    expectLunaError(() => y.backward(tensor(new Float64Array(30), { shape: [1, 2, 5, 3], dtype: 'float64' })), 'ERR_SHAPE', /grad/i);
    expectLunaError(() => y.backward(tensor(new Float32Array(30), { shape: [1, 2, 3, 5], dtype: 'float32' })), 'ERR_DTYPE', /grad/i);
  });

  it('.grad accumulates over two backward calls', () => {
    const rng = rngFor('accumulate');
    const { q, k, v } = triple(rng, 2, 2, 3, 5, 4);
    const g = randTensor(rng, [2, 2, 3, 4]);
    ops.packAttention(q, k, v).backward(g);
    const once = { q: values(q.grad!), k: values(k.grad!), v: values(v.grad!) };
    ops.packAttention(q, k, v).backward(g);
    for (const [name, t] of [
      ['q', q],
      ['k', k],
      ['v', v],
    ] as const) {
      const twice = values(t.grad!);
      // The same deterministic gradient added to itself: exactly 2x.
      expect(twice, where(`accumulate ${name}`)).toEqual(once[name].map((x) => 2 * x));
      expect(maxAbs(once[name]), where(`accumulate ${name}`)).toBeGreaterThan(0);
    }
  });

  it('a second backward through the same graph throws ERR_DISPOSED', () => {
    const rng = rngFor('second backward');
    const { q, k, v } = triple(rng, 1, 1, 2, 3, 4);
    const y = ops.unpackAttention(q, k, v);
    const g = randTensor(rng, [1, 1, 2, 4]);
    y.backward(g);
    const before = values(q.grad!);
    expectLunaError(() => y.backward(g), 'ERR_DISPOSED');
    // The failed call did not touch the gradients.
    expect(values(q.grad!)).toEqual(before);
  });

  it('leaves that do not require grad get none; the others do', () => {
    const rng = rngFor('partial grad');
    const { q, k, v } = triple(rng, 1, 2, 4, 6, 3, [false, true, false]);
    const y = ops.unpackAttention(q, k, v);
    expect(y.requiresGrad).toBe(true);
    y.backward(randTensor(rng, y.shape));
    expect(q.grad == null).toBe(true);
    expect(v.grad == null).toBe(true);
    expect(k.grad).toBeTruthy();
    expect(k.grad!.shape).toEqual([1, 2, 6, 3]);
    expect(maxAbs(values(k.grad!))).toBeGreaterThan(0);
  });

  it('an op whose inputs need no grad records nothing', () => {
    const { q, k, v } = triple(rngFor('no grad inputs'), 1, 1, 2, 3, 4, [false, false, false]);
    const y = ops.packAttention(q, k, v);
    expect(y.requiresGrad).toBe(false);
  });
});

describe('empty sizes', () => {
  for (const op of ['pack', 'unpack'] as const) {
    it(`${op}: no keys (lk = 0) means every row is fully masked: output 0, gradients 0`, () => {
      const name = `${op} lk=0`;
      const rng = rngFor(name);
      const fn = op === 'pack' ? ops.packAttention : ops.unpackAttention;
      const q = randTensor(rng, [2, 2, 3, 4], { requiresGrad: true });
      const k = randTensor(rng, [2, 2, 0, 4], { requiresGrad: true });
      const v = randTensor(rng, [2, 2, 0, 4], { requiresGrad: true });
      const y = fn(q, k, v, { keyPaddingMask: maskTensor(new Uint8Array(0), 2, 0) });
      expect(y.shape).toEqual([2, 2, 3, 4]);
      expect(values(y).every((x) => x === 0), where(name)).toBe(true);
      y.backward(randTensor(rng, y.shape));
      expect(q.grad!.shape).toEqual([2, 2, 3, 4]);
      expect(values(q.grad!).every((x) => x === 0), where(name)).toBe(true);
      expect(k.grad!.shape).toEqual([2, 2, 0, 4]);
    });

    it(`${op}: no queries (lq = 0) gives an empty output and zero key/value gradients`, () => {
      const name = `${op} lq=0`;
      const rng = rngFor(name);
      const fn = op === 'pack' ? ops.packAttention : ops.unpackAttention;
      const q = randTensor(rng, [1, 2, 0, 4], { requiresGrad: true });
      const k = randTensor(rng, [1, 2, 5, 4], { requiresGrad: true });
      const y = fn(q, k, k);
      expect(y.shape).toEqual([1, 2, 0, 4]);
      y.backward(randTensor(rng, y.shape));
      expect(k.grad!.shape).toEqual([1, 2, 5, 4]);
      expect(values(k.grad!).every((x) => x === 0), where(name)).toBe(true);
    });
  }
});

describe('key/value aliasing', () => {
  it('distinct k and v sharing storage (v = k.detach()) get the untied gradients', () => {
    const name = 'aliased kv';
    const rng = rngFor(name);
    const q = randTensor(rng, [1, 2, 3, 4], { requiresGrad: true });
    const k = randTensor(rng, [1, 2, 5, 4], { requiresGrad: true });
    const g = randTensor(rng, [1, 2, 3, 4]);
    const v = k.detach();
    v.requiresGrad = true;
    ops.packAttention(q, k, v).backward(g);
    const k2 = cloneLeaf(k);
    const v2 = cloneLeaf(k);
    ops.packAttention(cloneLeaf(q), k2, v2).backward(g);
    expect(values(k.grad!), where(name)).toEqual(values(k2.grad!));
    expect(values(v.grad!), where(name)).toEqual(values(v2.grad!));
  });

  it('k === v (tied) gets dk + dv in one gradient', () => {
    const name = 'tied kv';
    const rng = rngFor(name);
    const q = randTensor(rng, [2, 1, 4, 3], { requiresGrad: true });
    const kv = randTensor(rng, [2, 1, 6, 3], { requiresGrad: true });
    const g = randTensor(rng, [2, 1, 4, 3]);
    ops.unpackAttention(q, kv, kv).backward(g);
    const k2 = cloneLeaf(kv);
    const v2 = cloneLeaf(kv);
    ops.unpackAttention(cloneLeaf(q), k2, v2).backward(g);
    const sum = values(k2.grad!).map((x, i) => x + values(v2.grad!)[i]);
    expect(maxAbsDiff(values(kv.grad!), sum), where(name)).toBeLessThan(1e-12 * Math.max(1, maxAbs(sum)));
  });
});

describe('registerHook', () => {
  it('sees the gradient of a leaf', () => {
    const rng = rngFor('hook sees');
    const { q, k, v } = triple(rng, 1, 2, 3, 4, 5);
    const seen: number[][] = [];
    q.registerHook((g: Tensor) => {
      expect(g.shape).toEqual([1, 2, 3, 5]);
      seen.push(values(g));
    });
    ops.packAttention(q, k, v).backward(randTensor(rng, [1, 2, 3, 5]));
    expect(seen.length).toBe(1);
    expect(seen[0]).toEqual(values(q.grad!));
  });

  it('can replace the gradient of a leaf, and unsubscribing stops it', () => {
    const rng = rngFor('hook replace');
    const { q, k, v } = triple(rng, 2, 1, 3, 4, 5);
    const g = randTensor(rng, [2, 1, 3, 5]);
    // Baseline gradient on a fresh copy.
    const q0 = cloneLeaf(q);
    ops.packAttention(q0, k.detach(), v.detach()).backward(g);
    const base = values(q0.grad!);

    let calls = 0;
    const off = q.registerHook((grad: Tensor) => {
      calls++;
      return scaled(grad, 2);
    });
    expect(typeof off).toBe('function');
    ops.packAttention(q, k, v).backward(g);
    expect(calls).toBe(1);
    expect(values(q.grad!), where('hook replace')).toEqual(base.map((x) => 2 * x));

    off();
    ops.packAttention(q, k, v).backward(g);
    expect(calls).toBe(1);
    // 2*base from the hooked pass plus base from the unhooked one.
    expect(values(q.grad!), where('hook replace after off')).toEqual(base.map((x) => 2 * x + x));
  });

  it('on an intermediate tensor, a replaced gradient flows on to the leaves before it', () => {
    const rng = rngFor('hook intermediate');
    const B = 1, h = 2, l = 3, n = 5, dh = 4;
    const leaves = (r: Rng) => ({
      pq: randTensor(r, [B, h, l, dh], { requiresGrad: true }),
      c: randTensor(r, [B, h, n, dh], { requiresGrad: true }),
      x: randTensor(r, [B, h, n, dh], { requiresGrad: true }),
    });
    const g = randTensor(rng, [B, h, n, dh]);
    const a = leaves(rngFor('hook intermediate leaves'));
    const b = leaves(rngFor('hook intermediate leaves'));
    const pa = ops.packAttention(a.pq, a.c, a.c);
    ops.unpackAttention(a.x, pa, pa).backward(g);

    const pb = ops.packAttention(b.pq, b.c, b.c);
    let seenShape: readonly number[] | null = null;
    pb.registerHook((grad: Tensor) => {
      seenShape = grad.shape;
      return scaled(grad, 2);
    });
    ops.unpackAttention(b.x, pb, pb).backward(g);
    expect(seenShape).toEqual([B, h, l, dh]);
    // The pack backward is linear in its output gradient, and scaling by 2 is exact.
    expect(values(b.pq.grad!), where('hook intermediate pq')).toEqual(values(a.pq.grad!).map((x) => 2 * x));
    expect(values(b.c.grad!), where('hook intermediate c')).toEqual(values(a.c.grad!).map((x) => 2 * x));
    // x's gradient does not pass through the hooked tensor.
    expect(values(b.x.grad!), where('hook intermediate x')).toEqual(values(a.x.grad!));
  });
});

describe('noGrad', () => {
  it('disables recording inside and restores it after', () => {
    const { q, k, v } = triple(rngFor('noGrad'), 1, 1, 2, 3, 4);
    const y = noGrad(() => ops.packAttention(q, k, v));
    expect(y.requiresGrad).toBe(false);
    expect(ops.packAttention(q, k, v).requiresGrad).toBe(true);
  });

  it('nests: the inner exit keeps the outer scope off', () => {
    const { q, k, v } = triple(rngFor('noGrad nested'), 1, 1, 2, 3, 4);
    const flags: boolean[] = [];
    noGrad(() => {
      noGrad(() => {
        flags.push(ops.packAttention(q, k, v).requiresGrad);
      });
      flags.push(ops.packAttention(q, k, v).requiresGrad);
    });
    flags.push(ops.packAttention(q, k, v).requiresGrad);
    expect(flags).toEqual([false, false, true]);
  });

  it('is exception-safe: a throw inside restores recording', () => {
    const { q, k, v } = triple(rngFor('noGrad throw'), 1, 1, 2, 3, 4);
    expect(() =>
      noGrad(() => {
        throw new Error('boom');
      }),
    ).toThrow('boom');
    expect(ops.packAttention(q, k, v).requiresGrad).toBe(true);
    expect(() =>
      noGrad(() => {
        noGrad(() => {
          throw new Error('inner');
        });
      }),
    ).toThrow('inner');
    expect(ops.packAttention(q, k, v).requiresGrad).toBe(true);
  });

  it('returns the callback value', () => {
    expect(noGrad(() => 42)).toBe(42);
  });
});

describe('pack -> unpack chain (tied key/value = pack output)', () => {
  for (const masked of [false, true]) {
    it(`gets gradients to all leaves, equal to the chained float64 reference${masked ? ' (masks)' : ''}`, () => {
      const label = `chain masked=${masked}`;
      const rng = rngFor(label);
      const B = 2, h = 3, l = 4, n = 7, dh = 5;
      const pq = randTensor(rng, [B, h, l, dh], { requiresGrad: true });
      const c = randTensor(rng, [B, h, n, dh], { requiresGrad: true });
      const x = randTensor(rng, [B, h, n, dh], { requiresGrad: true });
      const cm = masked ? randomMask(rng, B, n, 0.4) : null;
      const pm = masked ? randomMask(rng, B, l, 0.4) : null;
      const g = randTensor(rng, [B, h, n, dh]);

      const p = ops.packAttention(pq, c, c, cm ? { keyPaddingMask: maskTensor(cm, B, n) } : {});
      const y = ops.unpackAttention(x, p, p, pm ? { keyPaddingMask: maskTensor(pm, B, l) } : {});
      expect(y.shape).toEqual([B, h, n, dh]);
      y.backward(g);
      for (const t of [pq, c, x]) {
        expect(t.grad, where(label)).toBeTruthy();
        expect(t.grad!.shape).toEqual(t.shape);
        expect(maxAbs(values(t.grad!)), where(label)).toBeGreaterThan(0);
      }

      // The same chain through the raw float64 reference kernels.
      const f64 = (t: Tensor) => t.dataSync() as Float64Array;
      const C = f64(c);
      const packP: Problem = { q: f64(pq), k: C, v: C, mask: cm, B, h, lq: l, lk: n, dh, scale: 1 / Math.sqrt(dh) };
      const pf = rawForward('reference', packP);
      const P = pf.out as Float64Array;
      expect(maxAbsDiff(values(p), P), where(label)).toBeLessThan(1e-12);
      const unpackP: Problem = { q: f64(x), k: P, v: P, mask: pm, B, h, lq: n, lk: l, dh, scale: 1 / Math.sqrt(dh) };
      const uf = rawForward('reference', unpackP);
      const ub = rawBackward('reference', unpackP, uf.out, uf.lse, f64(g));
      const pb = rawBackward('reference', packP, pf.out, pf.lse, ub.dk);
      const tol = (ref: ArrayLike<number>) => 1e-10 * Math.max(1, maxAbs(ref));
      expect(maxAbsDiff(values(x.grad!), ub.dq), where(`${label} dx`)).toBeLessThan(tol(ub.dq));
      expect(maxAbsDiff(values(pq.grad!), pb.dq), where(`${label} dpq`)).toBeLessThan(tol(pb.dq));
      expect(maxAbsDiff(values(c.grad!), pb.dk), where(`${label} dc`)).toBeLessThan(tol(pb.dk));
      if (cm) {
        // Masked context rows get exactly zero gradient.
        const dc = values(c.grad!);
        for (let b = 0; b < B; b++)
          for (let j = 0; j < n; j++)
            if (cm[b * n + j])
              for (let hh = 0; hh < h; hh++)
                for (let e = 0; e < dh; e++) expect(dc[((b * h + hh) * n + j) * dh + e]).toBe(0);
      }
    });
  }
});

describe('gradient accumulation of large tensors (native add)', () => {
  it('sums the gradients of a tensor used several times', async () => {
    const { ops, randn } = await import('../lib/index');
    const x = randn([300, 100], { seed: 11, requiresGrad: true });
    const y = ops.add(ops.mul(x, x), ops.scale(x, 3));
    ops.sum(y).backward();
    const g = x.grad!.dataSync();
    const xv = x.dataSync();
    let worst = 0;
    for (let i = 0; i < g.length; i++) worst = Math.max(worst, Math.abs(g[i] - (2 * xv[i] + 3)));
    expect(worst).toBeLessThan(1e-5);
  });
});

describe('the engine frees the gradients it made, and only those', () => {
  it('a gradient passed through to several inputs is freed once all are done with it', async () => {
    const { ops, randn, memoryStats } = await import('../lib/index');
    const x = randn([50, 40], { seed: 3, requiresGrad: true });
    const before = memoryStats().liveTensors;
    const sq = ops.mul(x, x);
    const y = ops.add(sq, x); // add hands its incoming gradient to both operands
    const loss = ops.sum(y);
    loss.backward();
    for (const t of [sq, y, loss]) t.dispose();
    // Only x.grad is left of everything the step made.
    expect(memoryStats().liveTensors - before).toBe(1);
    const g = x.grad!.dataSync();
    const xv = x.dataSync();
    for (let i = 0; i < g.length; i += 97) expect(g[i]).toBeCloseTo(2 * xv[i] + 1, 5);
  });

  it('a gradient a hook has seen is never freed by the engine', async () => {
    const { ops, randn } = await import('../lib/index');
    const x = randn([30, 20], { seed: 4, requiresGrad: true });
    const y = ops.scale(x, 2);
    let seen: Tensor | null = null;
    y.registerHook((g) => {
      seen = g;
    });
    ops.sum(ops.add(y, y)).backward();
    expect(seen).not.toBeNull();
    const kept = seen as unknown as Tensor;
    expect(kept.isDisposed).toBe(false);
    expect(Array.from(kept.dataSync()).every((v) => v === 2)).toBe(true);
    expect(Array.from(x.grad!.dataSync()).every((v) => v === 4)).toBe(true);
  });
});
