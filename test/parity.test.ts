// Parity of nn.LunaAttention, nn.LunaEncoderLayer, nn.LunaCausalAttention and nn.LunaDecoderLayer
// with the PyTorch reference
// (../shared/anchors/luna_ref.py), through state dicts: each fixture in test/fixtures holds the
// reference's parameters (fairseq names), inputs, outputs, a cotangent per output and the
// gradients of sum(output * cotangent) for every parameter and input, all float64. We load the
// parameters into our module, run the same inputs, and compare everything. See
// test/fixtures/README.md for how the files were made.
import { readdirSync } from 'node:fs';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { loadSafetensors, nn, ops, readSafetensorsHeader, type Module, type Tensor } from '../lib/index';
import { maxAbs, maxAbsDiff } from './helpers';

const dir = path.join(__dirname, 'fixtures');
const files = readdirSync(dir).filter((f) => f.endsWith('.safetensors')).sort();

// Both sides compute in float64; the orders of summation differ, so results agree to ~1e-14 of
// the magnitudes. 1e-10 leaves room for that and still catches any real difference.
const REL = 1e-10;

function close(what: string, got: Tensor, want: Tensor, ctx: string): void {
  expect(got.shape, `${what} shape ${ctx}`).toEqual(want.shape);
  const a = got.dataSync() as Float64Array;
  const b = want.dataSync() as Float64Array;
  const err = maxAbsDiff(a, b);
  const bound = REL * Math.max(1, maxAbs(b));
  expect(err, `${what}: max |ours - torch| = ${err.toExponential(3)} > ${bound.toExponential(3)} ${ctx}`).toBeLessThanOrEqual(bound);
}

describe('parity with the PyTorch reference (float64 fixtures)', () => {
  it('has fixtures', () => {
    expect(files.length).toBeGreaterThanOrEqual(17);
  });

  for (const file of files) {
    it(file, () => {
      const full = path.join(dir, file);
      const config = JSON.parse(readSafetensorsHeader(full).metadata.config) as Record<string, unknown>;
      const t = loadSafetensors(full);
      const params: Record<string, Tensor> = {};
      for (const [k, v] of Object.entries(t)) if (k.startsWith('param.')) params[k.slice('param.'.length)] = v;
      const x = t['input.x'].detach();
      const p = t['input.p'].detach();
      x.requiresGrad = true;
      p.requiresGrad = true;
      const context = t['input.context']?.detach() ?? null;
      if (context) context.requiresGrad = true;
      const ctxMask = t['input.context_padding_mask'] ?? null;
      const packMask = t['input.pack_padding_mask'] ?? null;
      const common = {
        embedDim: config.d as number,
        numHeads: config.h as number,
        numPackHeads: config.hp as number,
        tieKV: config.tie_kv as boolean,
        dtype: 'float64' as const,
        seed: 0,
      };

      let outputs: [string, Tensor][];
      let module: Module;
      if (config.module === 'LunaAttention') {
        const attn = new nn.LunaAttention(common);
        attn.loadStateDict(params);
        const { output, packed } = attn.forward(x, p, { context, contextPaddingMask: ctxMask, packPaddingMask: packMask });
        outputs = [['yx', output], ['yp', packed]];
        module = attn;
      } else if (config.module === 'LunaCausalAttention') {
        const attn = new nn.LunaCausalAttention({ embedDim: common.embedDim, numHeads: common.numHeads, tieKV: common.tieKV, dtype: 'float64', seed: 0 });
        attn.loadStateDict(params);
        outputs = [['y', attn.forward(x, p, { packPaddingMask: packMask })]];
        module = attn;
      } else if (config.module === 'LunaDecoderLayer') {
        const layer = new nn.LunaDecoderLayer({
          ...common,
          ffnDim: config.ffn as number,
          normalizeBefore: config.normalize_before as boolean,
          activation: config.activation as 'gelu' | 'relu',
        });
        layer.loadStateDict(params);
        const out = layer.forward(x, p, { encoderOut: context as Tensor, encoderPaddingMask: ctxMask, packPaddingMask: packMask });
        outputs = [['x', out.x], ['p', out.p]];
        module = layer;
      } else {
        const layer = new nn.LunaEncoderLayer({
          ...common,
          ffnDim: config.ffn as number,
          normalizeBefore: config.normalize_before as boolean,
          activation: config.activation as 'gelu' | 'relu',
        });
        layer.loadStateDict(params);
        const out = layer.forward(x, p, { paddingMask: ctxMask, packPaddingMask: packMask });
        outputs = [['x', out.x], ['p', out.p]];
        module = layer;
      }
      const ctx = `[${file}]`;
      for (const [name, got] of outputs) close(`output.${name}`, got, t[`output.${name}`], ctx);

      // loss = sum over outputs of sum(output * cotangent)
      const terms = outputs.map(([name, got]) => ops.sum(ops.mul(got, t[`cotangent.${name}`])));
      terms.reduce((a, b) => ops.add(a, b)).backward();
      close('grad.input.x', x.grad as Tensor, t['grad.input.x'], ctx);
      close('grad.input.p', p.grad as Tensor, t['grad.input.p'], ctx);
      if (context) close('grad.input.context', context.grad as Tensor, t['grad.input.context'], ctx);
      const named = module.namedParameters();
      expect(named.length, ctx).toBe(Object.keys(params).length);
      for (const [name, param] of named) close(`grad.${name}`, param.grad as Tensor, t[`grad.${name}`], ctx);
    });
  }
});
