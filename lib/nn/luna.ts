/**
 * Luna's attention module and encoder layer (luna-math.md sections 2 and 4.1), with the
 * reference's parameter names and initialisation, so state dicts move to and from PyTorch.
 *
 * Intermediate tensors are disposed as soon as the next op has consumed them: the graph keeps
 * what backward needs, and the buffers go back to the pool right after backward instead of
 * waiting for the garbage collector.
 *
 * @packageDocumentation
 */
import { checkBoolean, checkOptions, checkPositiveInt, describe, mismatch } from '../errors';
import { Tensor, checkTensor } from '../tensor';
import { ops } from '../ops';
import { Module, ModuleOptions, moduleOptions } from './module';
import { Dropout, LayerNorm, Linear, checkProbability } from './layers';

/** Runs `fn(tmp)` and disposes `tmp`, an intermediate nobody else holds. */
export function consume(tmp: Tensor, fn: (t: Tensor) => Tensor): Tensor {
  const out = fn(tmp);
  if (out !== tmp) tmp.dispose();
  return out;
}

/** Options of {@link LunaAttention}. */
export interface LunaAttentionOptions extends ModuleOptions {
  embedDim: number;
  /** Unpack heads h. */
  numHeads: number;
  /** Pack heads hp (default numHeads). */
  numPackHeads?: number;
  /** One projection for key and value (c_proj, pc_proj) instead of two (default true). */
  tieKV?: boolean;
  /** Dropout on the pack and unpack attention probabilities (default 0). */
  dropout?: number;
  /** Biases on the projections (default true). */
  bias?: boolean;
}

/** Per-call inputs of {@link LunaAttention.forward}. */
export interface LunaAttentionInputs {
  /** C [B,m,d], the pack's keys and values; default x (self-attention). */
  context?: Tensor | null;
  /** bool [B,m], 1 = padding context token. */
  contextPaddingMask?: Tensor | null;
  /** bool [B,l], 1 = padding P slot (masks unpack keys only). */
  packPaddingMask?: Tensor | null;
}

const ATTENTION_INPUT_KEYS = ['context', 'contextPaddingMask', 'packPaddingMask'] as const;

/**
 * Non-causal LunaAttn(X, P, C) -> (Y_X, Y_P): P packs the context with hp heads (no output
 * projection), X unpacks from the packed Y_P with h heads, then out_proj.
 */
export class LunaAttention extends Module {
  readonly embedDim: number;
  readonly numHeads: number;
  readonly numPackHeads: number;
  readonly tieKV: boolean;
  readonly attentionDropout: number;
  readonly pq_proj: Linear;
  readonly pc_proj: Linear | null;
  readonly c_proj: Linear | null;
  readonly pk_proj: Linear | null;
  readonly pv_proj: Linear | null;
  readonly k_proj: Linear | null;
  readonly v_proj: Linear | null;
  readonly q_proj: Linear;
  readonly out_proj: Linear;

  /** Creates the projections with the reference's initialisation; see {@link LunaAttentionOptions}. */
  constructor(options: LunaAttentionOptions) {
    const where = 'nn.LunaAttention';
    const { opts, resolved } = moduleOptions(where, options, ['embedDim', 'numHeads', 'numPackHeads', 'tieKV', 'dropout', 'bias']);
    super(resolved);
    const d = (this.embedDim = checkPositiveInt(where, 'options.embedDim', opts.embedDim));
    this.numHeads = checkPositiveInt(where, 'options.numHeads', opts.numHeads);
    this.numPackHeads = opts.numPackHeads === undefined ? this.numHeads : checkPositiveInt(where, 'options.numPackHeads', opts.numPackHeads);
    for (const [name, heads] of [['numHeads', this.numHeads], ['numPackHeads', this.numPackHeads]] as const) {
      if (d % heads !== 0) throw mismatch('ERR_ARGUMENT', where, `options.${name}`, `a divisor of embedDim (${d})`, String(heads));
    }
    this.tieKV = opts.tieKV === undefined ? true : checkBoolean(where, 'options.tieKV', opts.tieKV);
    this.attentionDropout = checkProbability(where, 'options.dropout', opts.dropout, 0);
    const bias = opts.bias === undefined ? true : checkBoolean(where, 'options.bias', opts.bias);
    const rng = resolved.rng;
    // The reference's reset_parameters: xavier-uniform with gain 1/sqrt(2) on the input
    // projections (biases keep nn.Linear's default), gain 1 and a zero bias on out_proj.
    const proj = (name: string, gain: number, biasValue?: number): Linear =>
      this.registerModule(
        name,
        new Linear({
          inFeatures: d,
          outFeatures: d,
          bias,
          xavierGain: gain,
          ...(biasValue === undefined ? {} : { biasValue }),
          dtype: resolved.dtype,
          device: resolved.device,
          seed: rng.nextUint32(),
        }),
      );
    const g = Math.SQRT1_2;
    this.pq_proj = proj('pq_proj', g);
    if (this.tieKV) {
      this.pc_proj = proj('pc_proj', g);
      this.c_proj = proj('c_proj', g);
      this.pk_proj = this.pv_proj = this.k_proj = this.v_proj = null;
    } else {
      this.pk_proj = proj('pk_proj', g);
      this.pv_proj = proj('pv_proj', g);
      this.k_proj = proj('k_proj', g);
      this.v_proj = proj('v_proj', g);
      this.pc_proj = this.c_proj = null;
    }
    this.q_proj = proj('q_proj', g);
    this.out_proj = proj('out_proj', 1, 0);
  }

  /**
   * x [B,n,d] (unpack queries), p [B,l,d] (pack queries) -> { output: Y_X [B,n,d], packed: Y_P [B,l,d] }.
   * The context defaults to x.
   */
  forward(x: Tensor, p: Tensor, inputs: LunaAttentionInputs = {}): { output: Tensor; packed: Tensor } {
    return this.callForward([x, p, inputs], (xi: Tensor, pi: Tensor, opts: LunaAttentionInputs) => this.compute(xi, pi, opts));
  }

  private compute(xIn: Tensor, pIn: Tensor, inputs: LunaAttentionInputs): { output: Tensor; packed: Tensor } {
    const where = 'LunaAttention.forward';
    const x = checkTensor(where, 'x', xIn);
    const p = checkTensor(where, 'p', pIn);
    const opts = checkOptions(where, inputs, ATTENTION_INPUT_KEYS);
    const d = this.embedDim;
    if (x.rank !== 3 || x.shape[2] !== d) throw mismatch('ERR_SHAPE', where, 'x.shape', `[B,n,${d}]`, `[${x.shape.join(',')}]`);
    if (p.rank !== 3 || p.shape[2] !== d || p.shape[0] !== x.shape[0]) {
      throw mismatch('ERR_SHAPE', where, 'p.shape', `[${x.shape[0]},l,${d}] (batch of x)`, `[${p.shape.join(',')}]`);
    }
    const context = opts.context === undefined || opts.context === null ? x : checkTensor(where, 'inputs.context', opts.context);
    const ctxMask = (opts.contextPaddingMask ?? null) as Tensor | null;
    const packMask = (opts.packPaddingMask ?? null) as Tensor | null;
    const packed = this.pack(p, context, ctxMask);
    const kv = this.unpackKeys(packed);
    const output = this.unpack(x, kv, packMask);
    kv.k.dispose();
    if (kv.v !== kv.k) kv.v.dispose();
    return { output, packed };
  }

  /**
   * The pack half: P's hp-head queries attend to the context. p [B,l,d], context [B,m,d] ->
   * Y_P [B,l,d] (no output projection). Decoders call it once per source: neither P nor the
   * encoder output depends on the target tokens.
   */
  pack(p: Tensor, context: Tensor, contextPaddingMask: Tensor | null = null): Tensor {
    const hp = this.numPackHeads;
    const dropout = this.training ? this.attentionDropout : 0;
    const qp = consume(this.pq_proj.forward(p), (t) => ops.splitHeads(t, hp));
    let yp4: Tensor;
    if (this.tieKV) {
      const kvp = consume((this.pc_proj as Linear).forward(context), (t) => ops.splitHeads(t, hp));
      yp4 = ops.packAttention(qp, kvp, kvp, { keyPaddingMask: contextPaddingMask, dropout });
      kvp.dispose();
    } else {
      const kp = consume((this.pk_proj as Linear).forward(context), (t) => ops.splitHeads(t, hp));
      const vp = consume((this.pv_proj as Linear).forward(context), (t) => ops.splitHeads(t, hp));
      yp4 = ops.packAttention(qp, kp, vp, { keyPaddingMask: contextPaddingMask, dropout });
      kp.dispose();
      vp.dispose();
    }
    qp.dispose();
    return consume(yp4, (t) => ops.mergeHeads(t));
  }

  /**
   * The unpack's keys and values, projected from the raw Y_P [B,l,d] into h heads [B,h,l,dh]
   * (one tensor when tied). A decoder caches them for every generated token.
   */
  unpackKeys(packed: Tensor): { k: Tensor; v: Tensor } {
    const h = this.numHeads;
    if (this.tieKV) {
      const kv = consume((this.c_proj as Linear).forward(packed), (t) => ops.splitHeads(t, h));
      return { k: kv, v: kv };
    }
    const k = consume((this.k_proj as Linear).forward(packed), (t) => ops.splitHeads(t, h));
    const v = consume((this.v_proj as Linear).forward(packed), (t) => ops.splitHeads(t, h));
    return { k, v };
  }

  /** The unpack half: x [B,n,d] attends to the cached keys and values -> Y_X [B,n,d] (after out_proj). */
  unpack(x: Tensor, kv: { k: Tensor; v: Tensor }, packPaddingMask: Tensor | null = null): Tensor {
    const dropout = this.training ? this.attentionDropout : 0;
    const q = consume(this.q_proj.forward(x), (t) => ops.splitHeads(t, this.numHeads));
    const o4 = ops.unpackAttention(q, kv.k, kv.v, { keyPaddingMask: packPaddingMask, dropout });
    q.dispose();
    return consume(consume(o4, (t) => ops.mergeHeads(t)), (t) => this.out_proj.forward(t));
  }
}

/** Options of {@link LunaEncoderLayer}. */
export interface LunaEncoderLayerOptions extends ModuleOptions {
  embedDim: number;
  numHeads: number;
  ffnDim: number;
  numPackHeads?: number;
  tieKV?: boolean;
  /** Pre-norm instead of the reference's default post-norm. */
  normalizeBefore?: boolean;
  /** FFN activation (default gelu, the exact erf form). */
  activation?: 'gelu' | 'relu';
  /** Dropout on Y_X, Y_P and the FFN output before their residuals. */
  dropout?: number;
  /** Dropout on the attention probabilities. */
  attentionDropout?: number;
  /** Dropout after the FFN activation. */
  activationDropout?: number;
}

/** Per-call inputs of {@link LunaEncoderLayer.forward}. */
export interface LunaEncoderLayerInputs {
  /** bool [B,n], 1 = padding token (masks pack keys). */
  paddingMask?: Tensor | null;
  /** bool [B,l], 1 = padding P slot (masks unpack keys). */
  packPaddingMask?: Tensor | null;
}

const LAYER_INPUT_KEYS = ['paddingMask', 'packPaddingMask'] as const;

/** One Luna encoder layer: attention, three layer norms, the FFN on X (P gets no FFN). */
export class LunaEncoderLayer extends Module {
  readonly normalizeBefore: boolean;
  readonly activation: 'gelu' | 'relu';
  readonly self_attn: LunaAttention;
  readonly self_attn_layer_norm: LayerNorm;
  readonly self_atten_proj_layer_norm: LayerNorm;
  readonly fc1: Linear;
  readonly fc2: Linear;
  readonly final_layer_norm: LayerNorm;
  private readonly dropoutModule: Dropout;
  private readonly activationDropoutModule: Dropout;

  /** Creates the attention, the layer norms and the feed-forward block; see {@link LunaEncoderLayerOptions}. */
  constructor(options: LunaEncoderLayerOptions) {
    const where = 'nn.LunaEncoderLayer';
    const { opts, resolved } = moduleOptions(where, options, [
      'embedDim', 'numHeads', 'ffnDim', 'numPackHeads', 'tieKV', 'normalizeBefore', 'activation',
      'dropout', 'attentionDropout', 'activationDropout',
    ]);
    super(resolved);
    const d = checkPositiveInt(where, 'options.embedDim', opts.embedDim);
    const ffn = checkPositiveInt(where, 'options.ffnDim', opts.ffnDim);
    this.normalizeBefore = opts.normalizeBefore === undefined ? false : checkBoolean(where, 'options.normalizeBefore', opts.normalizeBefore);
    if (opts.activation !== undefined && opts.activation !== 'gelu' && opts.activation !== 'relu') {
      throw mismatch('ERR_ARGUMENT', where, 'options.activation', "'gelu' or 'relu'", describe(opts.activation));
    }
    this.activation = (opts.activation as 'gelu' | 'relu' | undefined) ?? 'gelu';
    const common = { dtype: resolved.dtype, device: resolved.device };
    const rng = resolved.rng;
    this.self_attn = this.registerModule(
      'self_attn',
      new LunaAttention({
        embedDim: d,
        numHeads: opts.numHeads as number,
        ...(opts.numPackHeads === undefined ? {} : { numPackHeads: opts.numPackHeads as number }),
        ...(opts.tieKV === undefined ? {} : { tieKV: opts.tieKV as boolean }),
        dropout: checkProbability(where, 'options.attentionDropout', opts.attentionDropout, 0),
        ...common,
        seed: rng.nextUint32(),
      }),
    );
    this.self_attn_layer_norm = this.registerModule('self_attn_layer_norm', new LayerNorm({ normalizedShape: d, ...common }));
    this.self_atten_proj_layer_norm = this.registerModule('self_atten_proj_layer_norm', new LayerNorm({ normalizedShape: d, ...common }));
    this.fc1 = this.registerModule('fc1', new Linear({ inFeatures: d, outFeatures: ffn, ...common, seed: rng.nextUint32() }));
    this.fc2 = this.registerModule('fc2', new Linear({ inFeatures: ffn, outFeatures: d, ...common, seed: rng.nextUint32() }));
    this.final_layer_norm = this.registerModule('final_layer_norm', new LayerNorm({ normalizedShape: d, ...common }));
    this.dropoutModule = this.registerModule('dropout_module', new Dropout({ p: checkProbability(where, 'options.dropout', opts.dropout, 0), ...common }));
    this.activationDropoutModule = this.registerModule(
      'activation_dropout_module',
      new Dropout({ p: checkProbability(where, 'options.activationDropout', opts.activationDropout, 0), ...common }),
    );
  }

  /** x [B,n,d], p [B,l,d] -> { x: X' [B,n,d], p: P' [B,l,d] }. */
  forward(x: Tensor, p: Tensor, inputs: LunaEncoderLayerInputs = {}): { x: Tensor; p: Tensor } {
    return this.callForward([x, p, inputs], (xi: Tensor, pi: Tensor, opts: LunaEncoderLayerInputs) => this.compute(xi, pi, opts));
  }

  private ffn(t: Tensor): Tensor {
    const hidden = consume(this.fc1.forward(t), (a) => (this.activation === 'gelu' ? ops.gelu(a) : ops.relu(a)));
    return consume(consume(hidden, (a) => this.activationDropoutModule.forward(a)), (a) => this.fc2.forward(a));
  }

  /** residual + dropout(branch), disposing the branch. */
  private residual(residual: Tensor, branch: Tensor): Tensor {
    return consume(consume(branch, (b) => this.dropoutModule.forward(b)), (b) => ops.add(residual, b));
  }

  private compute(x: Tensor, p: Tensor, inputs: LunaEncoderLayerInputs): { x: Tensor; p: Tensor } {
    const opts = checkOptions('LunaEncoderLayer.forward', inputs, LAYER_INPUT_KEYS);
    const attnInputs = {
      contextPaddingMask: (opts.paddingMask ?? null) as Tensor | null,
      packPaddingMask: (opts.packPaddingMask ?? null) as Tensor | null,
    };
    if (this.normalizeBefore) {
      const xn = this.self_attn_layer_norm.forward(x);
      const pn = this.self_atten_proj_layer_norm.forward(p);
      const { output, packed } = this.self_attn.forward(xn, pn, attnInputs);
      xn.dispose();
      pn.dispose();
      const xa = this.residual(x, output);
      const pOut = this.residual(p, packed);
      const branch = consume(this.final_layer_norm.forward(xa), (t) => this.ffn(t));
      const xOut = this.residual(xa, branch);
      xa.dispose();
      return { x: xOut, p: pOut };
    }
    const { output, packed } = this.self_attn.forward(x, p, attnInputs);
    const xa = consume(this.residual(x, output), (t) => this.self_attn_layer_norm.forward(t));
    const pOut = consume(this.residual(p, packed), (t) => this.self_atten_proj_layer_norm.forward(t));
    const xOut = consume(this.residual(xa, this.ffn(xa)), (t) => this.final_layer_norm.forward(t));
    xa.dispose();
    return { x: xOut, p: pOut };
  }
}
