// What a user does first with the installed package, checked against plain JavaScript that does
// not share a line with the library: the fused attention forward and its gradients, then a few
// training steps of a Luna encoder layer. check.mjs and check.cjs call this with the module they
// got from `import` and from `require`. scripts/check-tarball.mjs copies this folder into an
// empty project that installed the packed tarball.
'use strict';

const assert = require('node:assert/strict');
const path = require('node:path');

/** Softmax attention in float64, one query row at a time. mask [B,M] (1 = padding) or null. */
function attentionRef(q, k, v, mask, dims, scale) {
  const { B, h, L, M, dh } = dims;
  const out = new Float64Array(B * h * L * dh);
  const logits = new Float64Array(M);
  for (let b = 0; b < B; b++) {
    for (let hh = 0; hh < h; hh++) {
      const qb = (b * h + hh) * L * dh;
      const kb = (b * h + hh) * M * dh;
      for (let i = 0; i < L; i++) {
        let max = -Infinity;
        for (let j = 0; j < M; j++) {
          if (mask && mask[b * M + j]) continue;
          let s = 0;
          for (let d = 0; d < dh; d++) s += q[qb + i * dh + d] * k[kb + j * dh + d];
          logits[j] = s * scale;
          max = Math.max(max, logits[j]);
        }
        if (max === -Infinity) continue; // every key masked: the library defines the output as 0
        let sum = 0;
        for (let j = 0; j < M; j++) if (!(mask && mask[b * M + j])) sum += Math.exp(logits[j] - max);
        for (let j = 0; j < M; j++) {
          if (mask && mask[b * M + j]) continue;
          const p = Math.exp(logits[j] - max) / sum;
          for (let d = 0; d < dh; d++) out[qb + i * dh + d] += p * v[kb + j * dh + d];
        }
      }
    }
  }
  return out;
}

function maxAbsDiff(a, b) {
  assert.equal(a.length, b.length);
  let m = 0;
  for (let i = 0; i < a.length; i++) m = Math.max(m, Math.abs(a[i] - b[i]));
  return m;
}

/**
 * Central differences of sum(cot * f(...inputs)) with respect to inputs[which], where f is the
 * plain reference: the gradient the library's backward pass must reproduce.
 */
function numericGrad(f, inputs, which, cot, eps = 1e-6) {
  const x = inputs[which];
  const g = new Float64Array(x.length);
  const dot = (out) => out.reduce((s, o, i) => s + o * cot[i], 0);
  for (let i = 0; i < x.length; i++) {
    const keep = x[i];
    x[i] = keep + eps;
    const up = dot(f(...inputs));
    x[i] = keep - eps;
    const down = dot(f(...inputs));
    x[i] = keep;
    g[i] = (up - down) / (2 * eps);
  }
  return g;
}

function checkAttention(luna, log) {
  const { tensor, randn, ops, gradcheck } = luna;
  const dims = { B: 2, h: 2, L: 3, M: 5, dh: 4 };
  const { B, h, L, M, dh } = dims;
  const scale = 1 / Math.sqrt(dh);
  // Batch 0 has its last two keys padded; batch 1 none.
  const maskData = [0, 0, 0, 1, 1, 0, 0, 0, 0, 0];
  const mask = tensor([maskData.slice(0, M), maskData.slice(M)], { dtype: 'bool' });
  const maskArr = Uint8Array.from(maskData);

  const opts = (seed) => ({ dtype: 'float64', requiresGrad: true, seed });
  const q = randn([B, h, L, dh], opts(11));
  const k = randn([B, h, M, dh], opts(12));
  const v = randn([B, h, M, dh], opts(13));
  const out = ops.packAttention(q, k, v, { keyPaddingMask: mask });
  assert.deepEqual(out.shape, [B, h, L, dh]);
  assert.equal(out.dtype, 'float64');

  const raw = [q, k, v].map((t) => Float64Array.from(t.dataSync()));
  const ref = (qq, kk, vv) => attentionRef(qq, kk, vv, maskArr, dims, scale);
  const fwdErr = maxAbsDiff(out.dataSync(), ref(...raw));
  assert.ok(fwdErr < 1e-12, `packAttention float64 forward differs from the reference by ${fwdErr}`);

  const cotT = randn(out.shape, { dtype: 'float64', seed: 14 });
  const cot = cotT.dataSync();
  out.backward(cotT);
  let gradErr = 0;
  [q, k, v].forEach((t, which) => {
    const want = numericGrad(ref, raw, which, cot);
    gradErr = Math.max(gradErr, maxAbsDiff(t.grad.dataSync(), want));
  });
  assert.ok(gradErr < 1e-7, `packAttention gradients differ from central differences by ${gradErr}`);

  // Tied key/value (Luna's shared projection): one tensor in both slots gets both gradients.
  const c = randn([B, h, M, dh], opts(15));
  const tied = ops.packAttention(q, c, c, { keyPaddingMask: mask });
  const cRaw = Float64Array.from(c.dataSync());
  tied.backward(cotT);
  const tiedRef = (cc) => attentionRef(raw[0], cc, cc, maskArr, dims, scale);
  const tiedErr = maxAbsDiff(c.grad.dataSync(), numericGrad(tiedRef, [cRaw], 0, cot));
  assert.ok(tiedErr < 1e-7, `tied key/value gradient differs from central differences by ${tiedErr}`);

  // The float32 kernels on the same inputs.
  const f32 = raw.map((a, i) => tensor(Float32Array.from(a), { shape: [q, k, v][i].shape }));
  const out32 = ops.packAttention(f32[0], f32[1], f32[2], { keyPaddingMask: mask });
  assert.equal(out32.dtype, 'float32');
  const f32Err = maxAbsDiff(out32.dataSync(), ref(...f32.map((t) => Float64Array.from(t.dataSync()))));
  assert.ok(f32Err < 1e-5, `packAttention float32 forward differs from the reference by ${f32Err}`);

  // unpackAttention is the same math with the roles of the lengths swapped; no mask here.
  const un = ops.unpackAttention(k, q, q);
  const unDims = { B, h, L: M, M: L, dh };
  const unErr = maxAbsDiff(un.dataSync(), attentionRef(raw[1], raw[0], raw[0], null, unDims, scale));
  assert.ok(unErr < 1e-12, `unpackAttention forward differs from the reference by ${unErr}`);

  // And the library's own gradcheck, as the README shows it.
  const x = (shape, seed) => randn(shape, { dtype: 'float64', requiresGrad: true, seed });
  assert.equal(gradcheck((a, b) => ops.packAttention(a, b, b), [x([1, 1, 3, 5], 16), x([1, 1, 7, 5], 17)]), true);

  log(`packAttention: forward error ${fwdErr.toExponential(1)}, gradient error ${gradErr.toExponential(1)} (float64), float32 forward error ${f32Err.toExponential(1)}`);
}

function checkLayerStep(luna, log) {
  const { randn, ops, nn, optim, manualSeed } = luna;
  manualSeed(1);
  const layer = new nn.LunaEncoderLayer({ embedDim: 16, numHeads: 2, ffnDim: 32, seed: 2 });
  const opt = new optim.Adam(layer.parameters(), { lr: 1e-2 });
  const x = randn([2, 9, 16], { seed: 3 });
  const p = randn([2, 4, 16], { seed: 4 });
  const target = randn([2, 9, 16], { seed: 5 });
  const losses = [];
  for (let step = 0; step < 8; step++) {
    const out = layer.forward(x, p);
    assert.deepEqual(out.x.shape, [2, 9, 16]);
    assert.deepEqual(out.p.shape, [2, 4, 16]);
    // Both outputs enter the loss, so every parameter (the P-side layer norm too) gets a gradient.
    const diff = ops.sub(out.x, target);
    const loss = ops.add(ops.mean(ops.mul(diff, diff)), ops.mean(ops.mul(out.p, out.p)));
    loss.backward();
    for (const [name, param] of layer.namedParameters()) {
      assert.ok(param.grad !== null, `${name} got no gradient`);
    }
    opt.step();
    opt.zeroGrad();
    losses.push(loss.dataSync()[0]);
  }
  assert.ok(losses.every(Number.isFinite), `non-finite loss: ${losses.join(', ')}`);
  assert.ok(losses.at(-1) < losses[0], `the loss did not go down: ${losses.join(', ')}`);
  log(`LunaEncoderLayer: 8 Adam steps, loss ${losses[0].toFixed(4)} -> ${losses.at(-1).toFixed(4)}`);
}

/**
 * Runs every check on `luna` (the module as `via` gave it) and prints one line per check.
 * LUNA_CHECK_EXPECT_CUDA=1 asserts that the loaded binary has the CUDA kernels compiled in.
 */
module.exports = function check(luna, via) {
  const log = (msg) => console.log(`[${via}] ${msg}`);
  const info = luna.backendInfo();
  // The binary the loader chose: the file path, not a package subpath, since the exports map
  // keeps dist/cjs/native.js private.
  const pkgDir = path.dirname(require.resolve('luna-attention/package.json'));
  const binary = require(path.join(pkgDir, 'dist', 'cjs', 'native.js')).nativeBinaryPath();
  assert.ok(
    binary && binary.startsWith(path.join(pkgDir, 'prebuilds') + path.sep),
    `expected the prebuilt binary, got ${binary}`,
  );
  if (process.env.LUNA_CHECK_EXPECT_CUDA === '1') {
    assert.equal(info.cuda.compiled, true, 'the loaded binary has no CUDA kernels');
  }
  log(`binary ${path.relative(pkgDir, binary)}; cpu ${info.cpu.isa}; cuda compiled ${info.cuda.compiled}, available ${info.cuda.available}${info.cuda.available ? '' : ` (${info.cuda.reason})`}`);
  checkAttention(luna, log);
  checkLayerStep(luna, log);
};
