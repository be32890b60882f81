// CUDA against the CPU, op by op and for a Luna encoder layer, forward and backward, through the
// public API. Runs on a machine with a GPU, and elsewhere against the CUDA emulator build
// (build/emu, made by `.ci/run`; cuda/emu/ says what the emulator is): the kernels' logic and all
// of lib/'s device plumbing are then checked on every CI run. Skipped, saying why, when neither
// is here.
//
// The yardstick is the project's accuracy policy (design.md) at the API level: the float64 CPU
// result is the truth; the CUDA float32 error must be within 3x the CPU float32 kernels' error
// (plus 4 float32 ulps of the largest value, for results exact in float32). Dropout masks come
// from the same counter RNG on both devices, so they must agree exactly.
import { existsSync } from 'node:fs';
import path from 'node:path';
import { describe, expect, it, vi } from 'vitest';
import type * as Lib from '../lib/index';

const root = path.resolve(__dirname, '..');
const emulatorBuild = path.join(root, 'build', 'emu', 'Release', 'luna_attention.node');

// Decide which addon to load before anything loads one: the default build when it has a usable
// GPU, else the emulator build. (Each test file runs in its own process, so LUNA_ADDON set here
// affects this file only.)
async function loadLib(): Promise<{ lib: typeof Lib; why: string }> {
  const probe = await import('../lib/index');
  if (probe.backendInfo().cuda.available) return { lib: probe, why: '' };
  if (!existsSync(emulatorBuild)) {
    return { lib: probe, why: 'no CUDA device and no emulator build (`npx cmake-js build --out build/emu --CDLUNA_CUDA_EMULATOR=ON`)' };
  }
  process.env.LUNA_ADDON = emulatorBuild;
  vi.resetModules();
  const lib = await import('../lib/index');
  const info = lib.backendInfo().cuda;
  return { lib, why: info.available ? '' : `CUDA unavailable: ${info.reason}` };
}
const { lib, why } = await loadLib();

type Tensor = Lib.Tensor;
type Build = (xs: Tensor[]) => Tensor;

// Seeds from a fresh draw each run (printed on failure through the case name).
const runSeed = Math.floor(Math.random() * 2 ** 31);

function maxAbs(a: ArrayLike<number>): number {
  let m = 0;
  for (let i = 0; i < a.length; i++) if (Number.isFinite(a[i])) m = Math.max(m, Math.abs(a[i]));
  return m;
}

function maxDiff(a: ArrayLike<number>, b: ArrayLike<number>): number {
  let m = 0;
  for (let i = 0; i < a.length; i++) {
    const d = Math.abs(a[i] - b[i]);
    if (Number.isNaN(d)) return Number.POSITIVE_INFINITY;
    m = Math.max(m, d);
  }
  return m;
}

/**
 * `scale` is the magnitude the result was computed at (default: its own largest value). A
 * gradient that is zero in exact arithmetic (the key bias of a softmax: adding one number to
 * every logit of a row changes nothing) is pure rounding noise of the computation around it, so
 * for the parameters of a layer the floor is float32 rounding at the scale of all its gradients.
 */
function expectPolicy(what: string, cuda: ArrayLike<number>, cpu: ArrayLike<number>, truth: ArrayLike<number>, scale = maxAbs(truth)): void {
  expect(cuda.length, what).toBe(truth.length);
  const ec = maxDiff(cuda, truth);
  const ep = maxDiff(cpu, truth);
  const bound = 3 * ep + 4 * 2 ** -23 * scale;
  expect(ec, `${what}: CUDA error ${ec} vs CPU float32 error ${ep} (seed ${runSeed})`).toBeLessThanOrEqual(bound);
}

/**
 * Runs `build` on float64 CPU inputs (the truth), float32 CPU and float32 CUDA inputs with the
 * same values, backpropagates the same random cotangent, and compares the output and every
 * input's gradient.
 */
function compare(name: string, shapes: number[][], build: Build, seed = runSeed): void {
  const { randn, tensor } = lib;
  const x64 = shapes.map((s, i) => randn(s, { seed: seed + i, dtype: 'float64' }));
  const make = (device: 'cpu' | 'cuda', dtype: 'float32' | 'float64') =>
    x64.map((t) => tensor(dtype === 'float64' ? t.dataSync() : Float32Array.from(t.dataSync()), { shape: t.shape as number[], dtype, device, requiresGrad: true }));
  const runs = (['float64', 'cpu', 'cuda'] as const).map((kind) => {
    const xs = kind === 'float64' ? make('cpu', 'float64') : make(kind, 'float32');
    const out = build(xs);
    const w64 = randn(out.shape as number[], { seed: seed + 99, dtype: 'float64' });
    const w = kind === 'float64' ? w64 : tensor(Float32Array.from(w64.dataSync()), { shape: out.shape as number[], device: kind });
    out.backward(w);
    return { out: Array.from(out.dataSync() as Float64Array), grads: xs.map((x) => (x.grad === null ? null : Array.from(x.grad.dataSync() as Float64Array))) };
  });
  const [truth, cpu, cuda] = runs;
  expectPolicy(`${name} output`, cuda.out, cpu.out, truth.out);
  truth.grads.forEach((g, i) => {
    if (g === null) return;
    expectPolicy(`${name} d(input ${i})`, cuda.grads[i] as number[], cpu.grads[i] as number[], g);
  });
}

describe.skipIf(why !== '')(`CUDA against the CPU (a GPU, or the emulator build)${why ? ` (skipped: ${why})` : ''}`, () => {

  it('tensors move to cuda and back unchanged; data() resolves off the event loop', async () => {
    const x = lib.randn([3, 5], { seed: runSeed });
    const d = x.to('cuda');
    expect(d.device).toBe('cuda');
    expect(Array.from(d.dataSync())).toEqual(Array.from(x.dataSync()));
    expect(Array.from(await d.data())).toEqual(Array.from(x.dataSync()));
    expect(Array.from(d.to('cpu').dataSync())).toEqual(Array.from(x.dataSync()));
    const mask = lib.tensor([[true, false, true]], { device: 'cuda' });
    expect(Array.from(mask.dataSync())).toEqual([1, 0, 1]);
    expect(() => lib.tensor([1], { dtype: 'float64', device: 'cuda' })).toThrow(/float64/);
    expect(() => lib.ops.add(x, d)).toThrow(/device/);
  });

  it('the caching allocator reuses blocks: a repeated step makes no new cudaMalloc', () => {
    const step = () => {
      const a = lib.randn([64, 32], { seed: 1, device: 'cuda' });
      const b = lib.ops.gelu(a);
      a.dispose();
      b.dispose();
    };
    step();
    const before = lib.memoryStats().cuda.deviceMallocs;
    for (let i = 0; i < 5; i++) step();
    expect(lib.memoryStats().cuda.deviceMallocs).toBe(before);
    lib.emptyCache();
    expect(lib.memoryStats().cuda.cachedBlocks).toBe(0);
  });

  it('matmul, linear, elementwise and shape ops', () => {
    const { ops } = lib;
    compare('matmul', [[3, 7, 5], [3, 5, 4]], ([a, b]) => ops.matmul(a, b));
    compare('linear', [[2, 9, 6], [5, 6], [5]], ([x, w, b]) => ops.linear(x, w, b));
    compare('add/mul broadcast', [[4, 1, 6], [3, 6]], ([a, b]) => ops.mul(ops.add(a, b), b));
    compare('sum over an axis', [[3, 4, 5]], ([a]) => ops.sum(a, { axis: 1 }));
    compare('permute + slice + concat', [[2, 3, 4], [2, 3, 4]], ([a, b]) =>
      ops.concat([ops.slice(ops.permute(a, [2, 0, 1]), 0, 1, 3), ops.permute(b, [2, 0, 1])], 0),
    );
    compare('split/merge heads', [[2, 5, 8]], ([a]) => ops.mergeHeads(ops.splitHeads(a, 2)));
  });

  it('layerNorm, gelu, relu, embedding and cross-entropy', () => {
    const { ops, tensor } = lib;
    compare('layerNorm', [[6, 10], [10], [10]], ([x, w, b]) => ops.layerNorm(x, w, b));
    compare('gelu', [[5, 7]], ([x]) => ops.gelu(x));
    compare('relu', [[5, 7]], ([x]) => ops.relu(x));
    const ids = [3, 0, 7, 3, 5, 1];
    compare('embedding', [[8, 4]], ([w]) => ops.embedding(tensor(ids, { dtype: 'int32', shape: [2, 3], device: w.device }), w));
    const targets = [2, 0, 4, 1];
    compare('crossEntropy', [[4, 6]], ([z]) => ops.crossEntropy(z, tensor(targets, { dtype: 'int32', device: z.device }), { reduction: 'none' }));
  });

  it('dropout masks are the same bits on both devices', () => {
    const x = lib.randn([7, 33], { seed: runSeed });
    const cpu = lib.ops.dropout(x, 0.3, { seed: 1234 }).dataSync();
    const cuda = lib.ops.dropout(x.to('cuda'), 0.3, { seed: 1234 }).dataSync();
    expect(Array.from(cuda)).toEqual(Array.from(cpu));
  });

  it('pack and unpack attention, masks, tied key/value', () => {
    const { ops, tensor } = lib;
    // q [B,h,l,dh] against k,v [B,h,m,dh] with a key mask, untied; then unpack, tied.
    const B = 2, h = 2, l = 3, m = 9, n = 7, dh = 5;
    const maskRows = [Array.from({ length: m }, (_, j) => j >= 7), Array.from({ length: m }, () => false)];
    compare('packAttention', [[B, h, l, dh], [B, h, m, dh], [B, h, m, dh]], ([q, k, v]) =>
      ops.packAttention(q, k, v, { keyPaddingMask: tensor(maskRows, { device: q.device }) }),
    );
    compare('unpackAttention (tied)', [[B, h, n, dh], [B, h, l, dh]], ([q, kv]) => ops.unpackAttention(q, kv, kv));
  });

  it('causal Luna attention and softmax attention', () => {
    const { ops } = lib;
    const B = 1, h = 2, n = 11, l = 3, dh = 4;
    compare('causalLunaAttention', [[B, h, n, dh], [B, h, n, dh], [B, h, n, dh], [B, h, n, dh], [B, h, l, dh]], ([q, k, v, kc, pq]) =>
      ops.causalLunaAttention(q, k, v, kc, pq),
    );
    compare('softmaxAttention (causal)', [[B, h, n, dh], [B, h, n, dh], [B, h, n, dh]], ([q, k, v]) =>
      ops.softmaxAttention(q, k, v, { causal: true }),
    );
  });

  it('incremental causal decoding: a cuda CausalLunaState steps, reorders and clones like the CPU one', () => {
    const { CausalLunaState, randn, tensor } = lib;
    const B = 2, h = 2, l = 3, dh = 4, n = 9;
    const pq = randn([B, h, l, dh], { seed: runSeed, dtype: 'float64' });
    const mask = [[false, false, true], [false, false, false]];
    const xs = [0, 1, 2, 3].map((i) => randn([B, h, n, dh], { seed: runSeed + 10 + i, dtype: 'float64' }));
    const runs = (['float64', 'cpu', 'cuda'] as const).map((kind) => {
      const dtype = kind === 'float64' ? 'float64' : 'float32';
      const device = kind === 'cuda' ? 'cuda' : 'cpu';
      const conv = (t: Tensor, from = 0, to = n) => {
        const sl = lib.ops.slice(t, 2, from, to);
        return tensor(dtype === 'float64' ? sl.dataSync() : Float32Array.from(sl.dataSync()), { shape: sl.shape as number[], dtype, device });
      };
      const state = new CausalLunaState(conv(pq, 0, l), { packPaddingMask: tensor(mask, { device }) });
      const outs: number[] = [];
      const take = (from: number, to: number, st = state) => {
        const [q, k, v, kc] = xs.map((x) => conv(x, from, to));
        outs.push(...Array.from(st.step(q, k, v, kc).dataSync()));
      };
      take(0, 5); // a prefill of 5 positions, then one token at a time
      for (let t = 5; t < 7; t++) take(t, t + 1);
      state.reorder([1, 1, 0]);
      const copy = state.clone();
      // Both batches now step from the reordered state; the clone must give the same.
      const before = outs.length;
      const [q, k, v, kc] = xs.map((x) => conv(x, 7, 8));
      const rows = (t: Tensor) => tensor(Array.from(t.dataSync()).concat(Array.from(lib.ops.slice(t, 0, 0, 1).dataSync())), { shape: [3, h, 1, dh], dtype, device });
      const a = state.step(rows(q), rows(k), rows(v), rows(kc)).dataSync();
      const b = copy.step(rows(q), rows(k), rows(v), rows(kc)).dataSync();
      outs.push(...Array.from(a));
      expect(Array.from(b)).toEqual(Array.from(a));
      state.dispose();
      copy.dispose();
      return outs.slice(0, before).concat(outs.slice(before));
    });
    const [truth, cpu, cuda] = runs;
    expectPolicy('decoding outputs', cuda, cpu, truth);
  });

  it('nn.generate (greedy and beam) with a cuda LunaSeq2Seq gives the CPU model\'s tokens', () => {
    const { nn, tensor } = lib;
    const make = (device: 'cpu' | 'cuda') =>
      new nn.LunaSeq2Seq({ vocabSize: 11, maxPositions: 16, embedDim: 8, encoderLayers: 1, decoderLayers: 1, numHeads: 2,
        ffnDim: 16, projectionLength: 3, seed: runSeed, device } as never);
    const src = [[5, 7, 3, 9, 4, 1], [6, 2, 8, 4, 1, 1]];
    const tokens = (['cpu', 'cuda'] as const).map((device) => {
      const model = make(device);
      model.eval();
      const s = tensor(src, { dtype: 'int32', device });
      return [nn.generate(model, s, { bos: 0, eos: 2, maxLength: 6 }), nn.generate(model, s, { bos: 0, eos: 2, maxLength: 6, beamSize: 3 })];
    });
    expect(tokens[1]).toEqual(tokens[0]);
  });

  it('a LunaEncoderLayer forward and backward agree with the CPU; an Adam step on the same gradients is bitwise the CPU one', () => {
    const { nn, optim, randn, tensor } = lib;
    const make = (device: 'cpu' | 'cuda', dtype: 'float32' | 'float64') =>
      new nn.LunaEncoderLayer({ embedDim: 8, numHeads: 2, ffnDim: 16, tieKV: false, seed: 7, device, dtype } as never);
    const layers = [make('cpu', 'float64'), make('cpu', 'float32'), make('cuda', 'float32')];
    const x64 = randn([2, 6, 8], { seed: runSeed, dtype: 'float64' });
    const p64 = randn([2, 3, 8], { seed: runSeed + 1, dtype: 'float64' });
    const results = layers.map((layer, i) => {
      const dtype = i === 0 ? 'float64' : 'float32';
      const device = i === 2 ? 'cuda' : 'cpu';
      const conv = (t: Tensor) => tensor(dtype === 'float64' ? t.dataSync() : Float32Array.from(t.dataSync()), { shape: t.shape as number[], dtype, device });
      const { x, p } = layer.forward(conv(x64), conv(p64));
      const loss = lib.ops.add(lib.ops.sum(lib.ops.mul(x, x)), lib.ops.sum(p));
      loss.backward();
      const grads = layer.parameters().map((t) => Array.from(t.grad!.dataSync() as Float64Array));
      return { x: Array.from(x.dataSync() as Float64Array), p: Array.from(p.dataSync() as Float64Array), grads };
    });
    const [truth, cpu, cuda] = results;
    expectPolicy('layer x', cuda.x, cpu.x, truth.x);
    expectPolicy('layer p', cuda.p, cpu.p, truth.p);
    const gradScale = Math.max(...truth.grads.map((g) => maxAbs(g)));
    truth.grads.forEach((g, i) => expectPolicy(`layer grad ${i}`, cuda.grads[i], cpu.grads[i], g, gradScale));

    // Adam's first step is g / (|g| + eps) per element: where |g| is near eps it amplifies any
    // rounding difference in g, so it is compared on identical gradients (the float64 ones,
    // rounded), where the two devices must give the same bits.
    const after = layers.slice(1).map((layer, i) => {
      const device = i === 1 ? 'cuda' : 'cpu';
      layer.parameters().forEach((t, j) => {
        t.grad = tensor(Float32Array.from(truth.grads[j]), { shape: t.shape as number[], device });
      });
      const opt = new optim.AdamW(layer.parameters(), { lr: 1e-2, weightDecay: 0.01 });
      opt.step();
      opt.step();
      return layer.parameters().map((t) => Array.from(t.dataSync()));
    });
    after[0].forEach((w, j) => expect(after[1][j], `parameter ${j} after two AdamW steps`).toEqual(w));
  });
});
