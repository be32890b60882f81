// Fuzzing: bounded, seeded random bad arguments driven into the public API and into every
// function the raw addon exports, each in a child process (a native crash would otherwise
// take the test runner down). The public API must answer every bad call with a LunaError; the
// raw addon must answer with a JS Error and never crash. After the abuse, known ops must still
// give the right numbers. Reproduce a failure with LUNA_TEST_SEED=<seed>.
import { describe, expect, it } from 'vitest';
import { SEED, where } from './helpers';
import { describeChild, runChild } from './subprocess';

// Shared by both children: a seeded generator and the pool of hostile values.
const COMMON = String.raw`
let state = (ARGS.seed >>> 0) || 1;
function rnd() {
  state = (state + 0x6d2b79f5) >>> 0;
  let t = state;
  t = Math.imul(t ^ (t >>> 15), t | 1);
  t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
  return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
}
const int = (lo, hi) => lo + Math.floor(rnd() * (hi - lo + 1));
const chance = (p) => rnd() < p;
const pick = (a) => a[int(0, a.length - 1)];
const MARK = 'fuzz-hostile-getter';
const problems = new Map();
function problem(where, what) {
  const key = where + ': ' + String(what).slice(0, 240);
  problems.set(key, (problems.get(key) || 0) + 1);
}
// Values no well-formed call passes; each thunk makes a fresh one.
const BAD_SCALARS = [undefined, null, NaN, Infinity, -Infinity, -1, 0, -0, 1.5, 2 ** 31, 2 ** 31 - 1, 2 ** 40,
  2 ** 53, 1e6, '3', 'float32', 'cpu', '', true, false, 10n, Symbol('s')];
const BAD_THINGS = [
  () => ({}), () => [], () => [[1], [1, 2]], () => [1, 'a'], () => [-1], () => [2 ** 31, 2 ** 31], () => () => 1,
  () => new Float32Array(int(0, 6)), () => new Float64Array(int(0, 6)), () => new Int32Array(int(0, 6)),
  () => new Uint8Array(int(0, 6)), () => new Int16Array(3), () => new BigInt64Array(2), () => new ArrayBuffer(8),
  () => new DataView(new ArrayBuffer(4)), () => Object.create(null), () => new Map(), () => new Date(0),
  () => ({ get scale() { throw new Error(MARK); }, get seed() { throw new Error(MARK); } }),
  () => new Proxy({}, { get() { throw new Error(MARK); }, ownKeys() { throw new Error(MARK); } }),
];
function badValue() {
  return chance(0.5) ? pick(BAD_SCALARS) : pick(BAD_THINGS)();
}
`;

// ---- The public API ----

const PUBLIC_SCRIPT = String.raw`
const { ops, nn, optim, tensor, zeros, ones, randn, LunaError, noGrad, tidy, keep, memoryStats,
        serializeSafetensors, deserializeSafetensors, readSafetensorsHeader, setNumThreads, manualSeed } = lib;
const CODES = new Set(['ERR_SHAPE', 'ERR_DTYPE', 'ERR_DEVICE', 'ERR_DISPOSED', 'ERR_DEVICE_UNAVAILABLE', 'ERR_CUDA',
  'ERR_NATIVE_LOAD', 'ERR_ARGUMENT']);
const DT = ['float32', 'float64'];
let q = 0.12; // the chance that any one argument is replaced by a bad value
const m = (good) => (chance(q) ? badValue() : good);
const dims = (rank, max = 4) => Array.from({ length: rank }, () => int(0, max));
const shape = () => dims(int(0, 4));
function ft(s, dtype = pick(DT), rg = chance(0.5)) {
  return randn(s, { dtype, seed: int(0, 1e6), requiresGrad: rg });
}
function anyTensor() {
  const r = int(0, 9);
  if (r === 0) { const t = zeros([2, 3]); t.dispose(); return t; }
  if (r === 1) return zeros(shape(), { dtype: 'bool' });
  if (r === 2) return tensor(new Int32Array(int(0, 5)).map(() => int(-2, 6)), { dtype: 'int32' });
  if (r === 3) return ft([]);
  return ft(shape());
}
// A good value most of the time, otherwise another tensor or a bad value.
const mt = (good) => (chance(q) ? (chance(0.5) ? anyTensor() : badValue()) : good);
function options(fields) {
  if (chance(q / 2)) return badValue();
  const o = {};
  for (const [k, v] of Object.entries(fields)) if (chance(0.6)) o[k] = m(v());
  if (chance(q / 2)) o[pick(['bogus', 'Scale', 'keyPaddingmask'])] = 1;
  return o;
}
function finish(result) {
  // Drive the backward too, with a good or a bad gradient.
  const outs = result instanceof lib.Tensor ? [result] : result && typeof result === 'object' ? Object.values(result) : [];
  for (const t of outs) {
    if (!(t instanceof lib.Tensor) || !t.requiresGrad || t.isDisposed) continue;
    if (t.size === 1 && chance(0.5)) t.backward();
    else t.backward(mt(randn(t.shape, { dtype: t.dtype, seed: int(0, 1e6) })));
    break;
  }
}
function attention(op) {
  const B = int(0, 3), h = int(0, 3), l = int(0, 4), mm = int(0, 5), dh = int(0, 5), dt = pick(DT);
  const k = ft([B, h, mm, dh], dt);
  const v = chance(0.4) ? k : ft([B, h, mm, dh], dt);
  return ops[op](mt(ft([B, h, l, dh], dt)), mt(k), mt(v), options({
    keyPaddingMask: () => tensor(new Uint8Array(B * mm).map(() => int(0, 1)), { shape: [B, mm], dtype: 'bool' }),
    scale: () => rnd() * 2, dropout: () => rnd() * 0.5, seed: () => int(0, 1e9),
  }));
}
const OPS = {
  packAttention: () => attention('packAttention'),
  unpackAttention: () => attention('unpackAttention'),
  matmul: () => {
    const lead = dims(int(0, 2), 3), M = int(0, 4), K = int(0, 4), N = int(0, 4), dt = pick(DT);
    return ops.matmul(mt(ft([...lead, M, K], dt)), mt(chance(0.5) ? ft([K, N], dt) : ft([...lead, K, N], dt)));
  },
  linear: () => {
    const lead = dims(int(0, 3), 3), i = int(0, 5), o = int(0, 5), dt = pick(DT);
    return ops.linear(mt(ft([...lead, i], dt)), mt(ft([o, i], dt)), chance(0.5) ? mt(ft([o], dt)) : m(null));
  },
  add: () => binary('add'), sub: () => binary('sub'), mul: () => binary('mul'),
  scale: () => ops.scale(mt(ft(shape())), m(rnd() * 4 - 2), m(rnd())),
  sum: () => reduce('sum'), mean: () => reduce('mean'),
  broadcastTo: () => { const s = shape(); return ops.broadcastTo(mt(ft(s.map((d) => (chance(0.5) ? 1 : d)))), m([int(1, 3), ...s])); },
  reshape: () => { const s = shape(); return ops.reshape(mt(ft(s)), m(chance(0.5) ? [-1] : [s.reduce((a, b) => a * b, 1)])); },
  transpose: () => { const t = ft(dims(int(1, 4))); return ops.transpose(mt(t), m(int(-t.rank, t.rank - 1)), m(int(0, t.rank - 1))); },
  permute: () => { const t = ft(dims(int(1, 4))); const p = t.shape.map((_, i) => i).reverse(); return ops.permute(mt(t), m(p)); },
  splitHeads: () => { const h = int(1, 3); return ops.splitHeads(mt(ft([int(0, 2), int(0, 3), h * int(0, 3)])), m(h)); },
  mergeHeads: () => ops.mergeHeads(mt(ft(dims(4)))),
  concat: () => { const dt = pick(DT); return ops.concat(m([mt(ft([2, int(0, 3)], dt)), mt(ft([2, int(0, 3)], dt))]), m(1)); },
  slice: () => { const t = ft(dims(int(1, 3), 5)); return ops.slice(mt(t), m(0), m(int(-2, 2)), chance(0.5) ? m(int(0, 5)) : undefined); },
  layerNorm: () => {
    const s = [...dims(int(0, 2)), int(0, 5)], d = s[s.length - 1], dt = pick(DT);
    return ops.layerNorm(mt(ft(s, dt)), mt(chance(0.7) ? ft([d], dt) : null), mt(chance(0.7) ? ft([d], dt) : null),
      options({ eps: () => rnd() * 1e-3 }));
  },
  gelu: () => ops.gelu(mt(ft(shape()))),
  relu: () => ops.relu(mt(ft(shape()))),
  dropout: () => ops.dropout(mt(ft(shape())), m(rnd()), options({ training: () => chance(0.8), seed: () => int(0, 1e9) })),
  embedding: () => {
    const V = int(1, 6), d = int(0, 4);
    const ids = tensor(new Int32Array(int(0, 6)).map(() => int(0, V - 1 + (chance(0.1) ? 3 : 0))), { dtype: 'int32' });
    return ops.embedding(mt(ids), mt(ft([V, d])), options({ paddingIdx: () => int(-V, V - 1) }));
  },
  crossEntropy: () => {
    const N = int(0, 5), C = int(1, 5);
    const tg = tensor(new Int32Array(N).map(() => (chance(0.1) ? -100 : int(0, C - 1))), { dtype: 'int32' });
    return ops.crossEntropy(mt(ft([N, C])), mt(tg), options({
      labelSmoothing: () => rnd() * 0.3, ignoreIndex: () => -100, reduction: () => pick(['mean', 'sum', 'none']),
    }));
  },
};
function binary(op) {
  const s = shape(), dt = pick(DT);
  const other = s.map((d) => (chance(0.3) ? 1 : d)).slice(int(0, s.length));
  return ops[op](mt(ft(s, dt)), mt(ft(other, dt)));
}
function reduce(op) {
  const t = ft(shape());
  return ops[op](mt(t), options({ axis: () => (t.rank > 0 ? int(-t.rank, t.rank - 1) : [0]), keepDim: () => chance(0.5) }));
}
const common = () => ({ dtype: () => pick(DT), seed: () => int(0, 1e6) });
const NN = {
  Linear: () => new nn.Linear(options({ inFeatures: () => int(1, 4), outFeatures: () => int(1, 4), bias: () => chance(0.5), ...common() })),
  LayerNorm: () => new nn.LayerNorm(options({ normalizedShape: () => int(1, 4), eps: () => 1e-5, ...common() })),
  Embedding: () => new nn.Embedding(options({ numEmbeddings: () => int(1, 5), embeddingDim: () => int(1, 4), paddingIdx: () => 0, ...common() })),
  Dropout: () => new nn.Dropout(options({ p: () => rnd() * 0.5 })),
  LunaAttention: () => new nn.LunaAttention(options({ embedDim: () => 4, numHeads: () => pick([1, 2]), tieKV: () => chance(0.5),
    dropout: () => 0.1, ...common() })),
  LunaEncoderLayer: () => new nn.LunaEncoderLayer(options({ embedDim: () => 4, numHeads: () => 2, ffnDim: () => int(1, 8),
    normalizeBefore: () => chance(0.5), activation: () => pick(['gelu', 'relu']), ...common() })),
  LunaClassifier: () => new nn.LunaClassifier(options({ vocabSize: () => 7, maxPositions: () => 8, embedDim: () => 4, numLayers: () => 1,
    numHeads: () => 2, ffnDim: () => 8, projectionLength: () => 3, numClasses: () => 3, pooling: () => pick(['cls', 'mean', 'p']),
    ...common() })),
};
function nnCase() {
  const name = pick(Object.keys(NN));
  const mod = NN[name]();
  const d = mod.embedDim ?? mod.inFeatures ?? mod.normalizedShape ?? 4;
  const B = int(1, 2), n = int(1, 4), l = int(1, 3), dt = mod.dtype ?? 'float32';
  let out;
  if (name === 'LunaClassifier') {
    out = mod.forward(mt(tensor(new Int32Array(B * n).map(() => int(0, 6)), { shape: [B, n], dtype: 'int32' })));
  } else if (name === 'Embedding') {
    out = mod.forward(mt(tensor(new Int32Array(n).map(() => int(0, mod.numEmbeddings - 1)), { dtype: 'int32' })));
  } else if (name === 'LunaAttention' || name === 'LunaEncoderLayer') {
    const mask = () => tensor(new Uint8Array(B * n).map(() => int(0, 1)), { shape: [B, n], dtype: 'bool' });
    const inputs = name === 'LunaAttention' ? options({ contextPaddingMask: mask }) : options({ paddingMask: mask });
    out = mod.forward(mt(ft([B, n, d], dt)), mt(ft([B, l, d], dt)), inputs);
  } else {
    out = mod.forward(mt(ft([B, n, d], dt)));
  }
  finish(out);
  if (chance(0.3)) mod.loadStateDict(m(mod.stateDict()));
}
function optimCase() {
  const params = [ft([2, 3], 'float32', true), ft([3], 'float32', true)];
  const Kind = pick([optim.SGD, optim.Adam, optim.AdamW]);
  const opt = new Kind(m(params), options({ lr: () => rnd(), momentum: () => rnd(), betas: () => [0.9, 0.99], eps: () => 1e-8,
    weightDecay: () => rnd() * 0.1 }));
  for (const p of params) p.grad = mt(randn(p.shape, { seed: int(0, 1e6) }));
  if (chance(0.5)) optim.clipGradNorm(m(params), m(rnd()), options({ normType: () => pick([1, 2, Infinity]), errorIfNonfinite: () => chance(0.5) }));
  opt.step();
  if (chance(0.5)) opt.lr = m(rnd());
  if (chance(0.4)) {
    const Sched = pick([optim.LinearWarmupInverseSqrt, optim.LinearDecay]);
    new Sched(mt(opt), options({ warmupSteps: () => int(0, 10), peakLr: () => rnd(), totalSteps: () => int(10, 20) })).step();
  }
  if (chance(0.4)) opt.loadStateDict(m(opt.stateDict()));
  opt.zeroGrad();
}
function safetensorsCase() {
  const dict = { a: ft([2, 2]), b: zeros([3], { dtype: 'bool' }), c: tensor([1, 2], { dtype: 'int32' }) };
  if (chance(q)) dict[pick(['d', '__metadata__', ''])] = mt(ft([1]));
  const bytes = serializeSafetensors(m(dict), options({ metadata: () => ({ k: 'v' }) }));
  const mutated = Uint8Array.from(bytes);
  for (let i = int(0, 3); i > 0; i--) mutated[int(0, mutated.length - 1)] = int(0, 255);
  const cut = chance(0.3) ? mutated.subarray(0, int(0, mutated.length)) : mutated;
  if (chance(0.5)) readSafetensorsHeader(m(cut));
  deserializeSafetensors(m(cut), options({ dtype: () => pick(DT) }));
}
function creationCase() {
  const r = int(0, 3);
  const opts = () => options({ shape: () => shape(), dtype: () => pick(['float32', 'float64', 'bool', 'int32']),
    requiresGrad: () => chance(0.3), device: () => pick(['cpu', 'cuda', 'tpu']), seed: () => int(0, 9) });
  if (r === 0) return tensor(m(pick([[1, 2, 3], [[1, 2], [3, 4]], [true, false], 2.5, new Float32Array(4), [[[0]]]])), opts());
  if (r === 1) return zeros(m(shape()), opts());
  if (r === 2) return ones(m(shape()), opts());
  return randn(m(shape()), opts());
}
function tensorCase() {
  const t = anyTensor();
  switch (int(0, 8)) {
    case 0: return t.to(m('cpu'));
    case 1: return t.detach();
    case 2: t.requiresGrad = m(true); return t;
    case 3: t.grad = mt(t.isDisposed ? null : zeros(t.shape, { dtype: t.dtype })); return t;
    case 4: return t.registerHook(m(() => undefined));
    case 5: return t.dataSync();
    case 6: t.data().catch((e) => { if (!(e instanceof LunaError)) problem('Tensor.data', e && e.message); }); return t;
    case 7: return finish(t);
    default: t.dispose(); t.dispose(); return t;
  }
}
function miscCase() {
  switch (int(0, 5)) {
    case 0: return tidy(m(() => ft([2])));
    case 1: return keep(mt(ft([1])));
    case 2: return noGrad(m(() => 1));
    case 3: return setNumThreads(m(int(1, 4)));
    case 4: return manualSeed(m(int(0, 100)));
    default: return memoryStats();
  }
}
const CASES = [
  ...Object.entries(OPS).map(([name, f]) => ['ops.' + name, () => finish(f())]),
  ['nn', nnCase], ['optim', optimCase], ['safetensors', safetensorsCase], ['creation', creationCase],
  ['Tensor', tensorCase], ['misc', miscCase],
];
let calls = 0, lunaErrors = 0;
for (let i = 0; i < ARGS.iterations; i++) {
  const [name, run] = pick(CASES);
  q = pick([0, 0.05, 0.12, 0.3]);
  calls++;
  try {
    tidy(() => { run(); });
  } catch (e) {
    if (e instanceof LunaError) {
      lunaErrors++;
      if (!CODES.has(e.code) || typeof e.message !== 'string' || !/^[A-Za-z.]+.*: /.test(e.message)) problem(name, 'malformed LunaError ' + e.code + ' ' + e.message);
    } else if (!(e && e.message === MARK)) {
      problem(name, (e && e.constructor && e.constructor.name) + ': ' + (e && e.message) + ' @ ' + String(e && e.stack).split('\n').slice(1, 3).join(' | '));
    }
  }
}
setNumThreads(2);
// After the abuse: known ops still give the right numbers, and nothing is left alive.
const check = [];
const a = tensor([[1, 2, 3], [4, 5, 6]]), b = tensor([[1, 0], [0, 1], [1, 1]]);
check.push(['matmul', Array.from(ops.matmul(a, b).dataSync()), [4, 5, 10, 11]]);
const v = tensor(new Float32Array(2 * 5 * 3).fill(0.5), { shape: [1, 2, 5, 3] });
const packed = ops.packAttention(randn([1, 2, 4, 3], { seed: 1 }), randn([1, 2, 5, 3], { seed: 2 }), v);
check.push(['packAttention', Array.from(packed.dataSync()).map((x) => Math.round(x * 1e5) / 1e5), new Array(24).fill(0.5)]);
check.push(['layerNorm', Array.from(ops.layerNorm(tensor([[1, 3]], { dtype: 'float64' }), null, null, { eps: 0 }).dataSync()), [-1, 1]]);
const ce = ops.crossEntropy(tensor([[0, 0]], { dtype: 'float64' }), tensor([1], { dtype: 'int32' }));
check.push(['crossEntropy', [Math.round(ce.dataSync()[0] * 1e12) / 1e12], [Math.round(Math.LN2 * 1e12) / 1e12]]);
for (const [name, got, want] of check) if (JSON.stringify(got) !== JSON.stringify(want)) problem('after fuzz: ' + name, JSON.stringify(got));
setTimeout(() => {
  process.stdout.write('\n' + JSON.stringify({ calls, lunaErrors, problems: [...problems].map(([k, n]) => n + 'x ' + k) }) + '\n');
}, 0);
`;

// ---- The raw addon ----

const ADDON_SCRIPT = String.raw`
const addon = require(require('node:path').join(ROOT, 'lib', 'native.ts')).loadNative();
const F32 = Float32Array, F64 = Float64Array;
// A valid call of every addon function, at small random sizes, for the float type T.
function valid(name, T) {
  const d = () => int(1, 4);
  const arr = (n, C = T) => new C(n).map(() => rnd() * 2 - 1);
  if (/^(pack|unpack|reference)(Forward|Backward)$/.test(name)) {
    const B = d(), h = d(), lq = d(), lk = d(), dh = d();
    const k = arr(B * h * lk * dh), tied = chance(0.5);
    const o = { q: arr(B * h * lq * dh), k, v: tied ? k : arr(k.length), mask: chance(0.5) ? null : new Uint8Array(B * lk),
      out: arr(B * h * lq * dh), lse: arr(B * h * lq), B, h, lq, lk, dh, scale: 0.5 };
    if (chance(0.3)) Object.assign(o, { dropout: 0.2, seed: 7 });
    if (name.endsWith('Backward')) {
      const dk = arr(k.length);
      Object.assign(o, { dout: arr(o.q.length), dq: arr(o.q.length), dk, dv: tied ? dk : arr(k.length) });
    }
    return o;
  }
  if (name === 'gemm' || name === 'gemmReference') {
    const M = int(0, 5), N = int(0, 5), K = int(0, 5), batch = int(1, 3);
    return { a: arr(batch * M * K), b: arr(batch * K * N), c: arr(batch * M * N), M, N, K, batch, transA: chance(0.5),
      transB: chance(0.5), alpha: 1, beta: chance(0.5) ? 0 : 1, bias: chance(0.5) ? null : arr(N) };
  }
  if (name === 'biasAdd') { const rows = d(), cols = d(); return { y: arr(rows * cols), bias: arr(cols), rows, cols }; }
  if (name.startsWith('columnSum')) { const rows = d(), cols = d(); return { x: arr(rows * cols), out: arr(cols), rows, cols }; }
  if (/ementwiseBinary$/.test(name)) {
    const shape = [d(), d()];
    return { op: pick(['add', 'sub', 'mul']), a: arr(shape[0] * shape[1]), b: arr(shape[1]), out: arr(shape[0] * shape[1]), shape,
      aStrides: [shape[1], 1], bStrides: [0, 1] };
  }
  if (/tridedCopy$/.test(name)) { const shape = [d(), d()]; return { x: arr(shape[0] * shape[1]), out: arr(shape[0] * shape[1]), shape, strides: [1, shape[0]] }; }
  if (/educeSum$/.test(name)) { const shape = [d(), d()]; return { x: arr(shape[0] * shape[1]), out: arr(shape[1]), shape, outShape: [1, shape[1]] }; }
  if (name === 'scaleShift') { const n = d(); return { x: arr(n), out: arr(n), scale: 2, offset: 1 }; }
  if (name === 'copyBlocks') { const rows = d(), cols = d(); return { src: arr(rows * cols), dst: arr(rows * cols), rows, cols, srcStride: cols, srcOffset: 0, dstStride: cols, dstOffset: 0 }; }
  if (name.startsWith('layerNorm')) {
    const rows = d(), dd = d();
    const o = { x: arr(rows * dd), weight: arr(dd), bias: arr(dd), out: arr(rows * dd), mean: arr(rows), rstd: arr(rows), rows, d: dd, eps: 1e-5 };
    if (name.endsWith('Backward')) Object.assign(o, { dout: arr(rows * dd), dx: arr(rows * dd), dweight: arr(dd), dbias: arr(dd) });
    return o;
  }
  if (/^(gelu|relu)/.test(name)) { const n = d(); return { x: arr(n), out: arr(n), dout: arr(n), dx: arr(n), n }; }
  if (name.startsWith('dropout')) { const n = d(); return { x: arr(n), out: arr(n), dout: arr(n), dx: arr(n), n, p: 0.3, seed: 5 }; }
  if (name.startsWith('embedding')) {
    const n = d(), V = d(), dd = d();
    return { ids: new Int32Array(n).map(() => int(0, V - 1)), weight: arr(V * dd), out: arr(n * dd), dout: arr(n * dd),
      dweight: arr(V * dd), n, V, d: dd, paddingIdx: chance(0.5) ? null : 0 };
  }
  if (name.startsWith('crossEntropy')) {
    const N = d(), C = d();
    return { logits: arr(N * C), targets: new Int32Array(N).map(() => int(0, C - 1)), loss: arr(N), lse: arr(N), dloss: arr(N),
      dlogits: arr(N * C), N, C, labelSmoothing: 0.1, ignoreIndex: -100 };
  }
  if (/^softmax(Reference)?(Forward|Backward)$/.test(name)) {
    const B = d(), h = d(), lq = d(), lk = d(), dh = d();
    const k = arr(B * h * lk * dh), tied = chance(0.5);
    const o = { q: arr(B * h * lq * dh), k, v: tied ? k : arr(k.length), mask: chance(0.5) ? null : new Uint8Array(B * lk),
      out: arr(B * h * lq * dh), lse: arr(B * h * lq), B, h, lq, lk, dh, scale: 0.5, causal: chance(0.5) };
    if (chance(0.3)) Object.assign(o, { dropout: 0.2, seed: 7 });
    if (name.endsWith('Backward')) {
      const dk = arr(k.length);
      Object.assign(o, { dout: arr(o.q.length), dq: arr(o.q.length), dk, dv: tied ? dk : arr(k.length) });
    }
    return o;
  }
  if (/^causal(Reference)?(Forward|Backward)$/.test(name) || name === 'causalStep') {
    const B = d(), h = d(), n = d(), l = d(), dh = d();
    const k = arr(B * h * n * dh), tied = chance(0.5);
    const o = { q: arr(k.length), k, v: tied ? k : arr(k.length), kc: arr(k.length), pq: arr(B * h * l * dh),
      mask: chance(0.5) ? null : new Uint8Array(B * l), B, h, n, l, dh, scale: 0.5,
      activation: pick(['softplus', 'elu']), chunk: int(1, 3) };
    if (name === 'causalStep') {
      Object.assign(o, { out: arr(k.length), lse: arr(B * h * n), stateK: arr(B * h * dh * l), stateV: arr(B * h * l * dh), steps: int(0, 3) });
      return o;
    }
    if (chance(0.3)) Object.assign(o, { dropout: 0.2, seed: 7 });
    if (name.endsWith('Forward')) return Object.assign(o, { out: arr(k.length), lse: arr(B * h * n) });
    const dk = arr(k.length);
    return Object.assign(o, { dout: arr(k.length), dq: arr(k.length), dk, dv: tied ? dk : arr(k.length), dkc: arr(k.length),
      dpq: arr(o.pq.length) });
  }
  if (name === 'adamStep') {
    const n = d();
    return { param: arr(n), grad: arr(n), expAvg: arr(n), expAvgSq: arr(n).map(Math.abs), lr: 1e-3, beta1: 0.9, beta2: 0.999,
      eps: 1e-8, weightDecay: 0.01, decoupled: chance(0.5), biasCorrection1: 0.1, biasCorrection2: 0.001 };
  }
  if (name === 'sgdStep') {
    const n = d(), momentum = chance(0.5) ? 0 : 0.9;
    return { param: arr(n), grad: arr(n), momentumBuffer: momentum ? arr(n) : null, lr: 0.1, momentum, dampening: 0,
      weightDecay: 0.01, nesterov: momentum > 0 && chance(0.5), firstStep: chance(0.5) };
  }
  if (name === 'normReduce') return { xs: [arr(d()), arr(d())], normType: pick([1, 2, 3, Infinity]) };
  if (name === 'sumOfSquares') return { x: chance(0.5) ? arr(d()) : [arr(d()), arr(d())] };
  if (name === 'scaleInPlace') return { x: arr(d()), scale: 0.5 };
  if (name === 'setNumThreads') return int(1, 4);
  return undefined;
}
// One hostile replacement for field f of the call o.
// A field's plain value, without running a getter an earlier mutation installed.
const peek = (o, k) => Object.getOwnPropertyDescriptor(o, k)?.value;
// A typed array (a DataView is an ArrayBuffer view too, but has no subarray or length).
const isTypedArray = (v) => ArrayBuffer.isView(v) && !(v instanceof DataView);
function mutate(o, f) {
  const cur = peek(o, f);
  const arrays = Object.keys(o).filter((k) => isTypedArray(peek(o, k)));
  switch (int(0, 11)) {
    case 0: o[f] = badValue(); break;
    case 1: if (isTypedArray(cur)) o[f] = cur.subarray(0, Math.max(0, cur.length - int(1, 2))); break;
    case 2: if (isTypedArray(cur)) o[f] = new (cur instanceof F32 ? F64 : F32)(cur.length); break;
    case 3: if (typeof cur === 'number') o[f] = pick([cur + 1, cur * 2 ** 20, -cur, cur + 0.5, 2 ** 31, 2 ** 53, NaN]); break;
    case 4: { // alias another array, viewed with this field's type and length when the buffer is big enough
      const other = arrays.length > 0 ? peek(o, pick(arrays)) : undefined;
      if (isTypedArray(cur) && other && other.buffer.byteLength >= cur.byteLength) o[f] = new cur.constructor(other.buffer, 0, cur.length);
      break;
    }
    case 5: { // a getter that detaches another array after the binding may have taken its pointer
      const victim = arrays.length > 0 ? peek(o, pick(arrays)) : null;
      const keepValue = cur;
      Object.defineProperty(o, f, { enumerable: true, configurable: true, get() {
        if (victim !== null && victim.buffer.byteLength > 0) structuredClone(victim.buffer, { transfer: [victim.buffer] });
        return keepValue;
      } });
      break;
    }
    case 6: { // a resizable buffer that a getter on another field shrinks to nothing
      if (!isTypedArray(cur) || cur.length === 0) break;
      const rab = new ArrayBuffer(cur.byteLength, { maxByteLength: cur.byteLength * 2 });
      const view = new cur.constructor(rab);
      o[f] = view;
      const g = pick(Object.keys(o).filter((k) => k !== f));
      const gv = peek(o, g);
      Object.defineProperty(o, g, { enumerable: true, configurable: true, get() { rab.resize(0); return gv; } });
      break;
    }
    case 7: if (isTypedArray(cur)) { const sab = new SharedArrayBuffer(cur.byteLength); o[f] = new cur.constructor(sab); } break;
    case 8: delete o[f]; break;
    case 9: if (isTypedArray(cur) && cur.length > 0 && cur instanceof Int32Array) cur[int(0, cur.length - 1)] = pick([-1, 2 ** 31 - 1, 1e6]); break;
    case 10: o[f] = null; break;
    default: Object.defineProperty(o, f, { enumerable: true, configurable: true, get() { throw new Error(MARK); } });
  }
}
// The device-memory functions (DeviceArray, cudaUpload, ...) take positional arguments, not one
// options object: they get their own hostile calls below instead of the options mutations.
const DEVICE_MEMORY = new Set(['DeviceArray', 'cudaUpload', 'cudaDownload', 'cudaDownloadAsync', 'cudaCopy', 'cudaZero',
  'cudaSynchronize', 'cudaMemoryStats', 'cudaEmptyCache', 'cudaResetPeak', 'cudaDeviceInfo']);
const names = Object.keys(addon).filter((k) => typeof addon[k] === 'function' && !DEVICE_MEMORY.has(k));
{
  // Hostile positional arguments: every call returns or throws an Error, never crashes.
  const hostile = [undefined, null, 0, -1, 2 ** 31, NaN, 'float32', 'float64', {}, [], new Float32Array(3),
    new Float64Array(2), new Uint8Array(0), new Int32Array(5), () => 0, Symbol('x')];
  for (const name of DEVICE_MEMORY) {
    if (typeof addon[name] !== 'function') continue;
    for (let i = 0; i < 40; i++) {
      const args = [pick(hostile), pick(hostile), pick(hostile)].slice(0, int(0, 3));
      try {
        const r = name === 'DeviceArray' ? new addon.DeviceArray(...args) : addon[name](...args);
        if (r && typeof r.then === 'function') r.catch(() => {});
        if (r && typeof r.release === 'function') r.release();
      } catch (e) {
        if (!(e instanceof Error)) problem(name, 'threw a non-Error ' + String(e));
      }
    }
  }
}
let calls = 0, threw = 0, covered = new Set();
function attempt(name, args) {
  calls++;
  covered.add(name);
  try {
    addon[name](...args);
  } catch (e) {
    threw++;
    if (!(e instanceof Error)) problem(name, 'threw a non-Error ' + String(e));
  }
}
// Baselines: every function accepts its unmutated call (else the cases below would pass for
// the wrong reason), with and without the reference flag where it has one.
for (const name of names) {
  for (const T of [F32, F64]) {
    const o = valid(name, T);
    try {
      addon[name](o);
      if (/^(layerNorm|gelu|relu|dropout|embedding|crossEntropy)/.test(name)) addon[name]({ ...valid(name, T), reference: true });
    } catch (e) {
      problem(name, 'a valid call threw: ' + (e && e.message));
    }
  }
}
// Known hazards first, for every function and every array field f:
// - f lives in a resizable buffer that a getter on another field g shrinks to nothing (a
//   binding that took f's pointer before reading g would write to released pages);
// - a getter on g transfers f's buffer away and collects the garbage (a dangling pointer).
for (const name of names) {
  for (const T of [F32, F64]) {
    const fields = Object.keys(valid(name, T) ?? {});
    for (const f of fields) {
      if (!ArrayBuffer.isView(valid(name, T)[f])) continue;
      const transferVia = pick(fields.filter((g) => g !== f));
      for (const g of fields) {
        if (g === f) continue;
        // A full collection per call is slow: transfer once per field, in float32 only.
        for (const how of T === F32 && g === transferVia ? ['shrink', 'transfer'] : ['shrink']) {
          const o = valid(name, T);
          if (!ArrayBuffer.isView(o[f])) continue; // an optional array drawn as null this time
          const len = o[f].length;
          let buffer;
          if (how === 'shrink') {
            buffer = new ArrayBuffer(65536 + o[f].byteLength, { maxByteLength: 131072 + o[f].byteLength });
            o[f] = new o[f].constructor(buffer, 0, len);
          } else {
            buffer = o[f].buffer;
          }
          const gv = o[g];
          Object.defineProperty(o, g, { enumerable: true, configurable: true, get() {
            if (how === 'shrink') buffer.resize(0);
            else if (buffer.byteLength > 0) { structuredClone(buffer, { transfer: [buffer] }); global.gc(); }
            return gv;
          } });
          attempt(name, [o]);
        }
      }
    }
  }
}
// Index arrays (ids, targets) sharing memory with an output: the kernel must not index with
// values it overwrites (1.0f written over an id reads as 1065353216).
for (const name of ['embeddingForward', 'embeddingBackward', 'crossEntropyForward', 'crossEntropyBackward']) {
  for (const T of [F32, F64]) {
    const o = valid(name, T);
    const ids = name.startsWith('embedding') ? 'ids' : 'targets';
    for (const out of Object.keys(o).filter((k) => ArrayBuffer.isView(o[k]) && k !== ids)) {
      const a = valid(name, T);
      for (const k of Object.keys(a)) if (ArrayBuffer.isView(a[k]) && a[k] !== a[ids]) a[k].fill(1);
      const bytes = Math.max(a[out].byteLength, a[ids].byteLength);
      const shared = new ArrayBuffer(bytes);
      a[out] = new a[out].constructor(shared, 0, a[out].length);
      a[ids] = new Int32Array(shared, 0, a[ids].length);
      attempt(name, [a]);
    }
  }
}
for (let i = 0; i < ARGS.iterations; i++) {
  const name = pick(names);
  const T = chance(0.5) ? F32 : F64;
  let args;
  const shape = int(0, 9);
  if (shape === 0) args = [badValue()];
  else if (shape === 1) args = [];
  else {
    const o = valid(name, T);
    if (o !== null && typeof o === 'object') {
      const fields = Object.keys(o);
      for (let j = int(0, 3); j > 0; j--) mutate(o, pick(fields));
      if (chance(0.2)) o.reference = pick([true, false, 1, 'yes']);
    }
    args = [o];
  }
  attempt(name, args);
}
// The process is healthy: a known product and attention still come out right.
const c = new F64(4);
addon.gemm({ a: F64.of(1, 2, 3, 4, 5, 6), b: F64.of(1, 0, 0, 1, 1, 1), c, M: 2, N: 2, K: 3 });
if (Array.from(c).join() !== '4,5,10,11') problem('after fuzz: gemm', Array.from(c).join());
const B = 1, h = 1, lq = 2, lk = 3, dh = 2;
const out = new F32(4), lse = new F32(2);
addon.packForward({ q: new F32(4).fill(1), k: new F32(6).fill(1), v: new F32(6).fill(2), mask: null, out, lse, B, h, lq, lk, dh, scale: 1 });
if (!out.every((x) => x === 2)) problem('after fuzz: packForward', Array.from(out).join());
process.stdout.write('\n' + JSON.stringify({ calls, threw, covered: [...covered], names, problems: [...problems].map(([k, n]) => n + 'x ' + k) }) + '\n');
`;

interface PublicReport {
  calls: number;
  lunaErrors: number;
  problems: string[];
}

interface AddonReport {
  calls: number;
  threw: number;
  covered: string[];
  names: string[];
  problems: string[];
}

describe('fuzz (child process)', () => {
  it('the public API answers bad arguments with a LunaError and still computes correctly', () => {
    // A small allocation limit keeps a random shape from asking for gigabytes.
    const env = { ...process.env, LUNA_MAX_ALLOC_MB: '64', LUNA_NUM_THREADS: '2' };
    const r = runChild(COMMON + PUBLIC_SCRIPT, { seed: SEED, iterations: 2500 }, { env, timeoutMs: 60_000 });
    const info = `${where('public fuzz')}\n${describeChild(r)}`;
    expect(r.signal, info).toBeNull();
    expect(r.status, info).toBe(0);
    const report = r.json as PublicReport;
    expect(report, info).not.toBeNull();
    expect(report.problems, info).toEqual([]);
    // Both outcomes are exercised: many calls fail validation, many succeed.
    expect(report.lunaErrors, info).toBeGreaterThan(report.calls * 0.1);
    expect(report.lunaErrors, info).toBeLessThan(report.calls * 0.9);
  });

  it('every raw addon function survives hostile arguments (no crash) and still computes correctly', () => {
    const r = runChild(COMMON + ADDON_SCRIPT, { seed: SEED, iterations: 6000 }, { timeoutMs: 60_000, nodeArgs: ['--expose-gc'] });
    const info = `${where('addon fuzz')}\n${describeChild(r)}`;
    expect(r.signal, info).toBeNull();
    expect(r.status, info).toBe(0);
    const report = r.json as AddonReport;
    expect(report, info).not.toBeNull();
    expect(report.problems, info).toEqual([]);
    expect(report.names.length, info).toBeGreaterThan(30);
    expect([...report.covered].sort(), info).toEqual([...report.names].sort());
    expect(report.threw, info).toBeGreaterThan(report.calls * 0.3);
  });
});
