// The decoder side: nn.LunaCausalAttention, nn.LunaDecoderLayer, nn.LunaDecoder and
// nn.LunaSeq2Seq. Incremental decoding must give the teacher-forced pass's logits at every
// position; greedy and beam search are checked against exhaustive search on a tiny vocabulary.
// (Layer-level parity with PyTorch is in parity.test.ts.)
import { describe, expect, it } from 'vitest';
import { manualSeed, nn, ops, optim, tensor, type Tensor } from '../lib/index';
import { expectLunaError, maxAbs, maxAbsDiff, rngFor } from './helpers';

const PAD = 1;

function seq2seq(options: Partial<ConstructorParameters<typeof nn.LunaSeq2Seq>[0]> = {}): InstanceType<typeof nn.LunaSeq2Seq> {
  return new nn.LunaSeq2Seq({
    vocabSize: 9, maxPositions: 16, embedDim: 12, encoderLayers: 2, decoderLayers: 2, numHeads: 3,
    numPackHeads: 2, ffnDim: 20, projectionLength: 5, paddingIdx: PAD, dtype: 'float64', seed: 7, ...options,
  });
}

/** Random token ids in [2, vocab) of shape [B, n]; `pads[b]` trailing pads in row b. */
function tokens(label: string, B: number, n: number, vocab: number, pads: number[] = []): Tensor {
  const rng = rngFor(label);
  const ids = new Int32Array(B * n);
  for (let b = 0; b < B; b++) {
    for (let i = 0; i < n; i++) ids[b * n + i] = i >= n - (pads[b] ?? 0) ? PAD : 2 + Math.floor(rng.uniform() * (vocab - 2));
  }
  return tensor(ids, { shape: [B, n], dtype: 'int32' });
}

/** Columns [a, b) of an int32 token tensor [B, n] (ops.slice takes float tensors only). */
function sliceTokens(t: Tensor, a: number, b: number): Tensor {
  const [B, n] = t.shape;
  const src = t.dataSync() as Int32Array;
  const out = new Int32Array(B * (b - a));
  for (let r = 0; r < B; r++) out.set(src.subarray(r * n + a, r * n + b), r * (b - a));
  return tensor(out, { shape: [B, b - a], dtype: 'int32' });
}

/** Rows [a, b) of an int32 token tensor [B, n]. */
function rowsOf(t: Tensor, a: number, b: number): Tensor {
  const n = t.shape[1];
  return tensor((t.dataSync() as Int32Array).slice(a * n, b * n), { shape: [b - a, n], dtype: 'int32' });
}

function expectClose(got: Tensor, want: Tensor, ctx: string, rel = 1e-10): void {
  expect(got.shape, ctx).toEqual(want.shape);
  const err = maxAbsDiff(got.dataSync(), want.dataSync());
  expect(err, `${ctx}: max diff ${err}`).toBeLessThanOrEqual(rel * Math.max(1, maxAbs(want.dataSync())));
}

describe('incremental decoding equals the teacher-forced pass', () => {
  for (const normalizeBefore of [false, true]) {
    for (const tieKV of [true, false]) {
      it(`${normalizeBefore ? 'pre' : 'post'}-norm, ${tieKV ? 'tied' : 'untied'} kv, padded source`, () => {
        const model = seq2seq({ normalizeBefore, tieKV }).eval();
        const src = tokens(`src-${normalizeBefore}-${tieKV}`, 2, 7, 9, [0, 3]);
        const prev = tokens(`prev-${normalizeBefore}-${tieKV}`, 2, 6, 9);
        const full = model.forward(src, prev); // [2,6,9]
        const enc = model.encode(src);
        const state = model.decoder.startDecoding(enc);
        // A prefill of two tokens, then one at a time.
        const chunks = [[0, 2], [2, 3], [3, 4], [4, 5], [5, 6]];
        for (const [a, b] of chunks) {
          const step = model.decoder.step(sliceTokens(prev, a, b), state);
          expectClose(step, ops.slice(full, 1, a, b), `positions ${a}..${b - 1}`);
        }
        expect(state.steps).toBe(6);
        state.dispose();
      });
    }
  }

  it('LunaCausalAttention.step matches forward row by row (elu variant, masked P slot)', () => {
    const attn = new nn.LunaCausalAttention({ embedDim: 12, numHeads: 3, activation: 'elu', dtype: 'float64', seed: 3 });
    const rng = rngFor('causal-module-step');
    const x = tensor(Array.from({ length: 2 * 5 * 12 }, () => rng.normal()), { shape: [2, 5, 12], dtype: 'float64' });
    const p = tensor(Array.from({ length: 2 * 4 * 12 }, () => rng.normal()), { shape: [2, 4, 12], dtype: 'float64' });
    const mask = tensor([0, 0, 1, 0, 1, 0, 0, 0], { shape: [2, 4], dtype: 'bool' });
    const full = attn.forward(x, p, { packPaddingMask: mask });
    const state = attn.startDecoding(p, { packPaddingMask: mask });
    for (let t = 0; t < 5; t++) expectClose(attn.step(ops.slice(x, 1, t, t + 1), state), ops.slice(full, 1, t, t + 1), `t=${t}`);
    state.dispose();
  });
});

describe('generation', () => {
  /** Sum of log-probabilities of `target` after BOS under teacher forcing. */
  function score(model: InstanceType<typeof nn.LunaSeq2Seq>, src: Tensor, target: number[], bos: number): number {
    const prev = tensor([bos, ...target.slice(0, -1)], { shape: [1, target.length], dtype: 'int32' });
    const logits = model.forward(src, prev).dataSync();
    const V = model.decoder.vocabSize;
    let s = 0;
    target.forEach((tok, t) => {
      let max = -Infinity;
      for (let j = 0; j < V; j++) max = Math.max(max, logits[t * V + j]);
      let z = 0;
      for (let j = 0; j < V; j++) z += Math.exp(logits[t * V + j] - max);
      s += logits[t * V + tok] - max - Math.log(z);
    });
    return s;
  }

  it('beam search as wide as the tree finds the exhaustive best; beam 1 is greedy', () => {
    manualSeed(11);
    const V = 5;
    const model = seq2seq({ vocabSize: V, seed: 21 }).eval();
    const src = tokens('beam-src', 1, 6, V);
    const T = 3;
    // With no EOS every hypothesis has length T, so lengthPenalty 0 ranks by the sum itself.
    let best: number[] = [];
    let bestScore = -Infinity;
    for (let code = 0; code < V ** T; code++) {
      const seq = [Math.floor(code / (V * V)) % V, Math.floor(code / V) % V, code % V];
      const s = score(model, src, seq, 0);
      if (s > bestScore) [best, bestScore] = [seq, s];
    }
    const beam = nn.generate(model, src, { bos: 0, maxLength: T, beamSize: V * V, lengthPenalty: 0 });
    expect(beam[0]).toEqual(best);

    const greedy = nn.generate(model, src, { bos: 0, maxLength: T });
    const beam1 = nn.generate(model, src, { bos: 0, maxLength: T, beamSize: 1 });
    expect(beam1).toEqual(greedy);
    // Greedy picks the argmax at each step given its own prefix.
    const prefix: number[] = [];
    for (let t = 0; t < T; t++) {
      let arg = 0;
      let argScore = -Infinity;
      for (let j = 0; j < V; j++) {
        const s = score(model, src, [...prefix, j], 0);
        if (s > argScore) [arg, argScore] = [j, s];
      }
      prefix.push(arg);
    }
    expect(greedy[0]).toEqual(prefix);
  });

  it('stops at EOS (not returned) and decodes every row of a batch on its own', () => {
    const model = seq2seq({ seed: 5 }).eval();
    const src = tokens('eos-src', 3, 7, 9, [0, 2, 4]);
    const eos = 2;
    const out = nn.generate(model, src, { bos: 0, eos, maxLength: 8 });
    expect(out.length).toBe(3);
    for (let b = 0; b < 3; b++) {
      expect(out[b].includes(eos)).toBe(false);
      expect(out[b].length).toBeLessThanOrEqual(8);
      // Row b alone gives the same result as inside the batch.
      const alone = nn.generate(model, rowsOf(src, b, b + 1), { bos: 0, eos, maxLength: 8 });
      expect(alone[0]).toEqual(out[b]);
    }
    const beams = nn.generate(model, src, { bos: 0, eos, maxLength: 8, beamSize: 3 });
    expect(beams.length).toBe(3);
    for (const seq of beams) expect(seq.includes(eos)).toBe(false);
  });

  it('refuses bad options with LunaError', () => {
    const model = seq2seq();
    const src = tokens('bad-src', 1, 4, 9);
    expectLunaError(() => nn.generate(model, src, { bos: 0, maxLength: 0 }), 'ERR_ARGUMENT', /maxLength/);
    expectLunaError(() => nn.generate(model, src, { bos: 99, maxLength: 3 }), 'ERR_ARGUMENT', /bos/);
    expectLunaError(() => nn.generate(model, src, { bos: 0, maxLength: 99 }), 'ERR_ARGUMENT', /maxPositions/);
    expectLunaError(() => nn.generate(model, src, { bos: 0, maxLength: 3, beam: 2 } as never), 'ERR_ARGUMENT', /beam/);
    const state = model.decoder.startDecoding(model.encode(src));
    state.dispose();
    expectLunaError(() => model.decoder.step(tensor([0], { shape: [1, 1], dtype: 'int32' }), state), 'ERR_DISPOSED');
  });
});

describe('modules', () => {
  it('use the reference names; shared embeddings are one parameter', () => {
    const model = seq2seq({ tieKV: false });
    const names = model.namedParameters().map(([n]) => n);
    for (const want of [
      'encoder.embed_tokens.weight',
      'decoder.layers.0.self_attn.pq_proj.weight',
      'decoder.layers.0.self_attn.pc_proj.weight',
      'decoder.layers.0.self_attn.k_proj.weight',
      'decoder.layers.0.self_attn.v_proj.weight',
      'decoder.layers.0.self_attn_layer_norm.weight',
      'decoder.layers.1.encoder_attn.pk_proj.weight',
      'decoder.layers.1.encoder_attn_layer_norm.bias',
      'decoder.layers.1.encoder_atten_proj_layer_norm.weight',
      'decoder.layers.1.final_layer_norm.weight',
      'decoder.embed_positions.weight',
    ]) {
      expect(names, want).toContain(want);
    }
    expect(names.some((n) => n.startsWith('decoder.embed_tokens'))).toBe(false);
    const params = model.parameters();
    expect(new Set(params).size).toBe(params.length);
    const own = seq2seq({ shareEmbeddings: false, positions: 'sinusoidal' });
    const ownNames = own.namedParameters().map(([n]) => n);
    expect(ownNames).toContain('decoder.embed_tokens.weight');
    expect(ownNames.some((n) => n.includes('embed_positions'))).toBe(false);
  });

  it('trains: a few Adam steps lower the loss (the decoder learns to echo its input)', () => {
    manualSeed(3);
    const model = seq2seq({ dtype: 'float32', encoderLayers: 1, decoderLayers: 1 });
    const opt = new optim.Adam(model.parameters(), { lr: 3e-3 });
    const src = tokens('copy-src', 8, 6, 9);
    const ids = src.dataSync() as Int32Array;
    const prev = tensor(Array.from({ length: 8 * 6 }, (_, i) => (i % 6 === 0 ? 0 : ids[i - 1])), { shape: [8, 6], dtype: 'int32' });
    const losses: number[] = [];
    for (let step = 0; step < 30; step++) {
      const logits = ops.reshape(model.forward(src, prev), [48, 9]);
      // Target = the decoder's own input token: learnable through the residual path alone.
      const loss = ops.crossEntropy(logits, ops.reshape(prev, [48]));
      losses.push(loss.dataSync()[0]);
      loss.backward();
      opt.step();
      opt.zeroGrad();
    }
    expect(losses[29]).toBeLessThan(0.5 * losses[0]);
  });

  it('refuses mismatched inputs', () => {
    const layer = new nn.LunaDecoderLayer({ embedDim: 12, numHeads: 3, ffnDim: 8, seed: 1 });
    const x = tensor(new Float32Array(2 * 3 * 12), { shape: [2, 3, 12] });
    const p = tensor(new Float32Array(2 * 2 * 12), { shape: [2, 2, 12] });
    expectLunaError(() => layer.forward(x, p, {} as never), 'ERR_ARGUMENT', /encoderOut/);
    const model = seq2seq();
    expectLunaError(() => model.forward(tokens('a', 1, 3, 9), tensor([0.5], { shape: [1, 1] })), 'ERR_DTYPE', /tokens/);
    expectLunaError(() => new nn.LunaCausalAttention({ embedDim: 12, numHeads: 5 }), 'ERR_ARGUMENT', /numHeads/);
    expectLunaError(() => new nn.LunaCausalAttention({ embedDim: 12, numHeads: 3, activation: 'relu' as never }), 'ERR_ARGUMENT', /activation/);
  });
});

describe('encoder options used by seq2seq models', () => {
  for (const positions of ['learned', 'sinusoidal'] as const) {
    it(`positionOffset k equals k left pads (${positions} positions)`, () => {
      const enc = new nn.LunaEncoder({
        vocabSize: 9, maxPositions: 12, embedDim: 12, numLayers: 2, numHeads: 3, ffnDim: 16,
        projectionLength: 4, paddingIdx: PAD, positions, dynamicProjection: false, dtype: 'float64', seed: 4,
      }).eval();
      const src = tokens(`offset-${positions}`, 2, 5, 9);
      const k = 3;
      const ids = src.dataSync() as Int32Array;
      const padded = new Int32Array(2 * (k + 5)).fill(PAD);
      for (let b = 0; b < 2; b++) padded.set(ids.subarray(b * 5, (b + 1) * 5), b * (k + 5) + k);
      const a = enc.forward(src, { positionOffset: k });
      const b = enc.forward(tensor(padded, { shape: [2, k + 5], dtype: 'int32' }));
      expectClose(a.x, ops.slice(b.x, 1, k, k + 5), 'x rows');
      expectClose(a.p, b.p, 'P');
      expectLunaError(() => enc.forward(src, { positionOffset: 8 }), 'ERR_SHAPE', /maxPositions/);
      expectLunaError(() => enc.forward(src, { positionOffset: -1 }), 'ERR_ARGUMENT', /positionOffset/);
    });
  }

  it('embedScale multiplies the token embeddings (default sqrt(d) with sinusoidal positions)', () => {
    const make = (embedScale?: number) =>
      new nn.LunaEncoder({
        vocabSize: 9, maxPositions: 8, embedDim: 16, numLayers: 0, numHeads: 2, ffnDim: 8, projectionLength: 2,
        positions: 'sinusoidal', dtype: 'float64', seed: 9, ...(embedScale === undefined ? {} : { embedScale }),
      });
    expect(make().embedScale).toBe(4);
    expect(make(1).embedScale).toBe(1);
    const src = tokens('embed-scale', 1, 6, 9);
    const a = make(4).forward(src).x.dataSync();
    const b = make(1).forward(src).x.dataSync();
    expect(maxAbsDiff(a, b)).toBeGreaterThan(1e-3);
    expectLunaError(() => make(Number.NaN), 'ERR_ARGUMENT', /embedScale/);
  });
});
