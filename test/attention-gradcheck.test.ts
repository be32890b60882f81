// Float64 central-difference gradchecks (eps 1e-6, atol 1e-5, rtol 1e-3) of packAttention and
// unpackAttention over odd and degenerate shapes, masks, tied key/value and a non-default scale;
// the pack -> unpack chain; and the fully masked row convention (output 0, gradient 0).
import { describe, expect, it } from 'vitest';
import { gradcheck, ops, tensor, type Tensor } from '../lib/index';
import { maskTensor, randTensor, randomMask, rngFor, values, where } from './helpers';

const TOL = { eps: 1e-6, atol: 1e-5, rtol: 1e-3 };

type OpName = 'pack' | 'unpack';
const opOf = (name: OpName) => (name === 'pack' ? ops.packAttention : ops.unpackAttention);

interface Case {
  op: OpName;
  B: number;
  h: number;
  lq: number;
  lk: number;
  dh: number;
  masked?: boolean;
  tied?: boolean;
  scale?: number;
  qScale?: number;
}

function label(c: Case): string {
  return (
    `${c.op} B=${c.B} h=${c.h} lq=${c.lq} lk=${c.lk} dh=${c.dh}` +
    `${c.masked ? ' masked' : ''}${c.tied ? ' tied' : ''}` +
    `${c.scale !== undefined ? ` scale=${c.scale}` : ''}${c.qScale !== undefined ? ` q*${c.qScale}` : ''}`
  );
}

// Shapes from luna-math.md section 9: l = 1, n = 1, odd n (7, 33), dh not a power of two (5, 12),
// dh 32 and 64 at small sizes, B and h > 1. For pack, lq is l and lk is n; for unpack the reverse.
function cases(): Case[] {
  const list: Case[] = [];
  for (const op of ['pack', 'unpack'] as const) {
    const shape = (l: number, n: number) => (op === 'pack' ? { lq: l, lk: n } : { lq: n, lk: l });
    list.push(
      { op, B: 1, h: 1, ...shape(1, 7), dh: 5 }, // l = 1
      { op, B: 2, h: 2, ...shape(3, 1), dh: 4 }, // n = 1
      { op, B: 1, h: 1, ...shape(1, 1), dh: 3 }, // l = n = 1
      { op, B: 1, h: 2, ...shape(3, 7), dh: 5, masked: true },
      { op, B: 1, h: 2, ...shape(3, 33), dh: 4, masked: true, tied: true },
      { op, B: 2, h: 3, ...shape(4, 7), dh: 12, tied: true },
      { op, B: 2, h: 3, ...shape(2, 5), dh: 12, masked: true, scale: 0.7 },
      { op, B: 1, h: 1, ...shape(2, 3), dh: 32, masked: true },
      { op, B: 1, h: 1, ...shape(2, 3), dh: 64, tied: true },
      { op, B: 3, h: 2, ...shape(5, 6), dh: 3, masked: true, tied: true, scale: 1.9 },
      { op, B: 1, h: 2, ...shape(16, 33), dh: 5, masked: true }, // Luna-16 over an odd length
      { op, B: 2, h: 1, ...shape(17, 9), dh: 7, tied: true, masked: true },
      // Sharp softmax: logits of several units, where a wrong LSE or D would show most.
      { op, B: 1, h: 2, ...shape(3, 9), dh: 6, masked: true, qScale: 3 },
    );
  }
  return list;
}

function runCase(c: Case) {
  const name = label(c);
  const rng = rngFor(name);
  const q = randTensor(rng, [c.B, c.h, c.lq, c.dh], { requiresGrad: true, scale: c.qScale ?? 1 });
  const k = randTensor(rng, [c.B, c.h, c.lk, c.dh], { requiresGrad: true });
  const v = c.tied ? k : randTensor(rng, [c.B, c.h, c.lk, c.dh], { requiresGrad: true });
  const options: { keyPaddingMask?: Tensor; scale?: number } = {};
  if (c.masked) options.keyPaddingMask = maskTensor(randomMask(rng, c.B, c.lk, 0.4), c.B, c.lk);
  if (c.scale !== undefined) options.scale = c.scale;
  const op = opOf(c.op);
  const opts = { ...TOL, seed: rng.u32() };
  let ok: boolean;
  try {
    ok = c.tied
      ? gradcheck((a: Tensor, kv: Tensor) => op(a, kv, kv, options), [q, k], opts)
      : gradcheck((a: Tensor, b: Tensor, d: Tensor) => op(a, b, d, options), [q, k, v], opts);
  } catch (e) {
    throw new Error(`${(e as Error).message} ${where(name)}`);
  }
  expect(ok, where(name)).toBe(true);
}

describe('gradcheck of the attention ops (float64)', () => {
  for (const c of cases()) it(label(c), () => runCase(c));
});

describe('gradcheck of the pack -> unpack chain (unpack key = value = pack output)', () => {
  for (const masked of [false, true]) {
    it(`B=2 h=2 l=3 n=7 dh=5${masked ? ' masked' : ''}`, () => {
      const name = `chain masked=${masked}`;
      const rng = rngFor(name);
      const B = 2, h = 2, l = 3, n = 7, dh = 5;
      const pq = randTensor(rng, [B, h, l, dh], { requiresGrad: true });
      const c = randTensor(rng, [B, h, n, dh], { requiresGrad: true });
      const x = randTensor(rng, [B, h, n, dh], { requiresGrad: true });
      const cm = masked ? { keyPaddingMask: maskTensor(randomMask(rng, B, n, 0.4), B, n) } : {};
      const pm = masked ? { keyPaddingMask: maskTensor(randomMask(rng, B, l, 0.4), B, l) } : {};
      const fn = (pq_: Tensor, c_: Tensor, x_: Tensor) => {
        const p = ops.packAttention(pq_, c_, c_, cm);
        // Two outputs: the unpack result and the pack output itself (Luna's Y_P).
        return [ops.unpackAttention(x_, p, p, pm), p];
      };
      expect(gradcheck(fn, [pq, c, x], { ...TOL, seed: rng.u32() }), where(name)).toBe(true);
    });
  }
});

describe('gradcheck is not vacuous', () => {
  it('rejects a gradient that a hook doubles', () => {
    const name = 'gradcheck detects';
    const rng = rngFor(name);
    const q = randTensor(rng, [1, 2, 3, 4], { requiresGrad: true });
    const kv = randTensor(rng, [1, 2, 5, 4], { requiresGrad: true });
    const wrong = (a: Tensor, b: Tensor) => {
      const y = ops.packAttention(a, b, b);
      if (y.requiresGrad) {
        y.registerHook((g: Tensor) => {
          const d = (g.dataSync() as Float64Array).map((t) => 2 * t);
          return randTensorLike(g, d);
        });
      }
      return y;
    };
    let code = '';
    try {
      gradcheck(wrong, [q, kv], { ...TOL, seed: rng.u32() });
    } catch (e) {
      code = (e as { code: string }).code;
    }
    expect(code, where(name)).toBe('ERR_ARGUMENT');
    expect(gradcheck(wrong, [q, kv], { ...TOL, seed: rng.u32(), raiseOnFailure: false }), where(name)).toBe(false);
  });
});

function randTensorLike(like: Tensor, data: Float64Array): Tensor {
  return tensor(data, { shape: like.shape, dtype: 'float64' });
}

describe('fully masked rows: output exactly 0, gradient exactly 0', () => {
  for (const op of ['pack', 'unpack'] as const) {
    for (const tied of [false, true]) {
      const B = 3, h = 2, dh = 5;
      const [lq, lk] = op === 'pack' ? [3, 7] : [7, 3];
      const name = `${op} masked batch${tied ? ' tied' : ''}`;
      it(name, () => {
        const rng = rngFor(name);
        const m = randomMask(rng, B, lk, 0.4);
        m.fill(1, lk, 2 * lk); // batch 1 has no valid key
        const mask = maskTensor(m, B, lk);
        const q = randTensor(rng, [B, h, lq, dh], { requiresGrad: true });
        const k = randTensor(rng, [B, h, lk, dh], { requiresGrad: true });
        const v = tied ? k : randTensor(rng, [B, h, lk, dh], { requiresGrad: true });
        const y = opOf(op)(q, k, v, { keyPaddingMask: mask });
        y.backward(randTensor(rng, y.shape));
        const yv = values(y);
        const dq = values(q.grad!);
        const rowLen = h * lq * dh;
        for (let b = 0; b < B; b++) {
          const rows = yv.slice(b * rowLen, (b + 1) * rowLen);
          const grads = dq.slice(b * rowLen, (b + 1) * rowLen);
          if (b === 1) {
            expect(rows.every((x) => x === 0), `output of the masked batch ${where(name)}`).toBe(true);
            expect(grads.every((x) => x === 0), `dq of the masked batch ${where(name)}`).toBe(true);
          } else {
            expect(rows.every((x) => Number.isFinite(x)), where(name)).toBe(true);
            // With a single valid key the softmax is constant (weight 1), so dq is exactly 0.
            let valid = 0;
            for (let j = 0; j < lk; j++) valid += m[b * lk + j] ? 0 : 1;
            if (valid > 1) expect(grads.some((x) => x !== 0), `dq of a valid batch is nonzero ${where(name)}`).toBe(true);
          }
        }
        for (const [which, t] of (tied ? [['k=v', k]] : [['k', k], ['v', v]]) as [string, Tensor][]) {
          const g = values(t.grad!);
          for (let b = 0; b < B; b++)
            for (let hh = 0; hh < h; hh++)
              for (let j = 0; j < lk; j++) {
                const base = ((b * h + hh) * lk + j) * dh;
                const row = g.slice(base, base + dh);
                if (m[b * lk + j]) {
                  expect(row.every((x) => x === 0), `d${which} of masked key b=${b} j=${j} ${where(name)}`).toBe(true);
                } else {
                  expect(row.every((x) => Number.isFinite(x)), where(name)).toBe(true);
                }
              }
        }
        // The gradcheck holds on this input too: the masked rows are locally constant.
        const opts = { ...TOL, seed: rng.u32() };
        const ok = tied
          ? gradcheck((a: Tensor, kv: Tensor) => opOf(op)(a, kv, kv, { keyPaddingMask: mask }), [q, k], opts)
          : gradcheck((a: Tensor, b: Tensor, d: Tensor) => opOf(op)(a, b, d, { keyPaddingMask: mask }), [q, k, v], opts);
        expect(ok, where(name)).toBe(true);
      });
    }
  }
});
