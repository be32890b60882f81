// nn modules: float64 gradchecks of LunaAttention and LunaEncoderLayer (tied/untied, post/pre-norm,
// hp != h, masks, dropout with a fixed seed), the fairseq state-dict names and strict loading,
// hooks, train/eval, and the encoder's dynamic projection.
import { describe, expect, it } from 'vitest';
import { gradcheck, manualSeed, nn, ops, optim, tensor, type Tensor } from '../lib/index';
import { expectLunaError, maskTensor, randTensor, randomMask, rngFor, values, where } from './helpers';

const TOL = { eps: 1e-6, atol: 1e-5, rtol: 1e-3 };

describe('LunaAttention', () => {
  for (const tieKV of [true, false]) {
    for (const masked of [false, true]) {
      it(`gradcheck (float64) w.r.t. x and p: tieKV=${tieKV} masked=${masked} hp!=h`, () => {
        const label = `LunaAttention tie=${tieKV} masked=${masked}`;
        const rng = rngFor(label);
        const attn = new nn.LunaAttention({ embedDim: 12, numHeads: 3, numPackHeads: 2, tieKV, dtype: 'float64', seed: rng.int(0, 1e6) });
        const [B, n, l] = [2, 7, 3];
        const x = randTensor(rng, [B, n, 12], { requiresGrad: true });
        const p = randTensor(rng, [B, l, 12], { requiresGrad: true });
        const ctxMask = masked ? maskTensor(randomMask(rng, B, n, 0.3), B, n) : null;
        const packMask = masked ? maskTensor(randomMask(rng, B, l, 0.3), B, l) : null;
        const fn = (xi: Tensor, pi: Tensor) => {
          const { output, packed } = attn.forward(xi, pi, { contextPaddingMask: ctxMask, packPaddingMask: packMask });
          return [output, packed];
        };
        expect(gradcheck(fn, [x, p], TOL), where(label)).toBe(true);
      });
    }
  }

  it('state dict has the reference names, tied and untied', () => {
    const tied = new nn.LunaAttention({ embedDim: 8, numHeads: 2, seed: 1 });
    expect(Object.keys(tied.stateDict()).sort()).toEqual(
      ['c_proj', 'out_proj', 'pc_proj', 'pq_proj', 'q_proj'].flatMap((m) => [`${m}.bias`, `${m}.weight`]).sort(),
    );
    const untied = new nn.LunaAttention({ embedDim: 8, numHeads: 2, tieKV: false, bias: false, seed: 1 });
    expect(Object.keys(untied.stateDict()).sort()).toEqual(
      ['k_proj', 'out_proj', 'pk_proj', 'pq_proj', 'pv_proj', 'q_proj', 'v_proj'].map((m) => `${m}.weight`).sort(),
    );
    // Reference init: out_proj bias 0; xavier bound with gain 1/sqrt(2) on q_proj.
    expect(values(tied.out_proj.bias as Tensor).every((v) => v === 0)).toBe(true);
    const bound = Math.SQRT1_2 * Math.sqrt(6 / 16);
    const qw = values(tied.q_proj.weight);
    expect(Math.max(...qw.map(Math.abs))).toBeLessThanOrEqual(bound);
    expect(Math.max(...qw.map(Math.abs))).toBeGreaterThan(bound * 0.5);
  });

  it('rejects bad shapes and options', () => {
    const attn = new nn.LunaAttention({ embedDim: 8, numHeads: 2, seed: 1 });
    expectLunaError(() => attn.forward(tensor([1, 2, 3]), tensor([1])), 'ERR_SHAPE');
    expectLunaError(() => new nn.LunaAttention({ embedDim: 8, numHeads: 3 }), 'ERR_ARGUMENT', /numHeads/);
    expectLunaError(() => new nn.LunaAttention({ embedDim: 8, numHeads: 2, bogus: 1 } as never), 'ERR_ARGUMENT', /bogus/);
  });
});

describe('LunaEncoderLayer', () => {
  const configs = [
    { normalizeBefore: false, tieKV: true, activation: 'gelu' as const },
    { normalizeBefore: true, tieKV: true, activation: 'relu' as const },
    { normalizeBefore: false, tieKV: false, activation: 'relu' as const },
    { normalizeBefore: true, tieKV: false, activation: 'gelu' as const },
  ];
  for (const cfg of configs) {
    it(`gradcheck (float64): ${JSON.stringify(cfg)}`, () => {
      const label = `layer ${JSON.stringify(cfg)}`;
      const rng = rngFor(label);
      const layer = new nn.LunaEncoderLayer({ embedDim: 12, numHeads: 3, numPackHeads: 2, ffnDim: 10, ...cfg, dtype: 'float64', seed: rng.int(0, 1e6) });
      const [B, n, l] = [2, 5, 3];
      const x = randTensor(rng, [B, n, 12], { requiresGrad: true });
      const p = randTensor(rng, [B, l, 12], { requiresGrad: true });
      const paddingMask = maskTensor(randomMask(rng, B, n, 0.3), B, n);
      const packPaddingMask = maskTensor(randomMask(rng, B, l, 0.3), B, l);
      const fn = (xi: Tensor, pi: Tensor) => {
        const out = layer.forward(xi, pi, { paddingMask, packPaddingMask });
        return [out.x, out.p];
      };
      expect(gradcheck(fn, [x, p], TOL), where(label)).toBe(true);
    });
  }

  it('gradcheck (float64) with all three dropouts on and a fixed seed', () => {
    const label = 'layer dropout';
    const rng = rngFor(label);
    const layer = new nn.LunaEncoderLayer({
      embedDim: 8, numHeads: 2, ffnDim: 6, dropout: 0.2, attentionDropout: 0.2, activationDropout: 0.2, dtype: 'float64', seed: 5,
    });
    const x = randTensor(rng, [1, 6, 8], { requiresGrad: true });
    const p = randTensor(rng, [1, 2, 8], { requiresGrad: true });
    // Each evaluation reseeds, so every call sees the same masks.
    const fn = (xi: Tensor, pi: Tensor) => {
      manualSeed(1234);
      const out = layer.forward(xi, pi);
      return [out.x, out.p];
    };
    expect(gradcheck(fn, [x, p], TOL), where(label)).toBe(true);
    // Dropout really acts in training mode and not in eval mode.
    manualSeed(1);
    const a = values(layer.forward(x, p).x);
    manualSeed(2);
    const b = values(layer.forward(x, p).x);
    expect(a).not.toEqual(b);
    layer.eval();
    expect(values(layer.forward(x, p).x)).toEqual(values(layer.forward(x, p).x));
  });

  it('state dict names, strict loading and hooks', () => {
    const layer = new nn.LunaEncoderLayer({ embedDim: 8, numHeads: 2, ffnDim: 16, seed: 2 });
    const names = Object.keys(layer.stateDict());
    for (const n of [
      'self_attn.pq_proj.weight', 'self_attn.c_proj.bias', 'self_attn_layer_norm.weight',
      'self_atten_proj_layer_norm.bias', 'fc1.weight', 'fc2.bias', 'final_layer_norm.weight',
    ]) expect(names).toContain(n);
    expect(names.length).toBe(5 * 2 + 3 * 2 + 2 * 2);
    const other = new nn.LunaEncoderLayer({ embedDim: 8, numHeads: 2, ffnDim: 16, seed: 3 });
    other.loadStateDict(layer.stateDict());
    const x = randTensor(rngFor('hooks'), [1, 4, 8], { dtype: 'float32' });
    const p = randTensor(rngFor('hooks p'), [1, 2, 8], { dtype: 'float32' });
    expect(values(other.forward(x, p).x)).toEqual(values(layer.forward(x, p).x));
    const { 'fc1.weight': _drop, ...missing } = layer.stateDict();
    void _drop;
    expectLunaError(() => other.loadStateDict(missing), 'ERR_ARGUMENT', /missing fc1.weight/);
    expectLunaError(() => other.loadStateDict({ ...layer.stateDict(), extra: x }), 'ERR_ARGUMENT', /unexpected extra/);
    expectLunaError(() => other.loadStateDict({ ...layer.stateDict(), 'fc1.weight': x }), 'ERR_SHAPE', /fc1.weight/);
    const calls: string[] = [];
    const off1 = layer.registerForwardPreHook(() => {
      calls.push('pre');
    });
    const off2 = layer.registerForwardHook((_m, _in, out) => {
      calls.push('post');
      return out;
    });
    layer.forward(x, p);
    off1();
    off2();
    layer.forward(x, p);
    expect(calls).toEqual(['pre', 'post']);
  });
});

describe('LunaEncoder and LunaClassifier', () => {
  it('dynamic projection: l_eff = min(l, longest), P-slot mask from lengths', () => {
    const enc = new nn.LunaEncoder({
      vocabSize: 10, maxPositions: 16, embedDim: 8, numLayers: 2, numHeads: 2, ffnDim: 8, projectionLength: 6, seed: 4,
    });
    // Example 0 has 4 tokens, example 1 has 2 (pad id 1 on the right).
    const tokens = tensor([[2, 3, 4, 5, 1], [6, 7, 1, 1, 1]], { dtype: 'int32' });
    const out = enc.forward(tokens);
    expect(out.x.shape).toEqual([2, 5, 8]);
    expect(out.p.shape).toEqual([2, 4, 8]);
    expect(out.lengths).toEqual([4, 2]);
    expect(Array.from(out.packPaddingMask!.dataSync())).toEqual([0, 0, 0, 0, 0, 0, 1, 1]);
    expect(Array.from(out.paddingMask!.dataSync())).toEqual([0, 0, 0, 0, 1, 0, 0, 1, 1, 1]);
  });

  it('the classifier trains: loss decreases on a tiny separable task', () => {
    const model = new nn.LunaClassifier({
      vocabSize: 6, maxPositions: 8, embedDim: 8, numLayers: 1, numHeads: 2, ffnDim: 8, projectionLength: 2, numClasses: 2, seed: 9,
    });
    const tokens = tensor([[2, 2, 3, 2], [4, 5, 4, 4], [2, 3, 2, 2], [5, 4, 5, 4]], { dtype: 'int32' });
    const labels = tensor([0, 1, 0, 1], { dtype: 'int32' });
    const opt = new optim.SGD(model.parameters(), { lr: 0.1 });
    const losses: number[] = [];
    for (let step = 0; step < 30; step++) {
      const loss = ops.crossEntropy(model.forward(tokens), labels);
      losses.push(loss.dataSync()[0]);
      loss.backward();
      opt.step();
      opt.zeroGrad();
    }
    expect(losses[losses.length - 1]).toBeLessThan(losses[0] * 0.5);
  });
});
