/**
 * Luna's decoder layer (luna-math.md section 4.4): causal Luna self-attention with P as the pack
 * query, then Luna cross-attention over the encoder output (which also updates P), then the FFN;
 * post-norm (the reference's default) or pre-norm. Incremental decoding runs the same layer one
 * token at a time: everything that depends only on the source (each layer's P, the cross
 * attention's packed keys and values) is computed once when decoding starts.
 *
 * @packageDocumentation
 */
import { checkBoolean, checkOptions, checkPositiveInt, describe, mismatch } from '../errors';
import { Tensor } from '../tensor';
import { ops } from '../ops';
import { noGrad } from '../autograd';
import { CausalLunaState } from '../ops/causal';
import { Module, ModuleOptions, moduleOptions } from './module';
import { Dropout, LayerNorm, Linear, checkProbability } from './layers';
import { LunaAttention, consume } from './luna';
import { LunaCausalAttention } from './causal';
import { selectRows } from './select';

/** Options of {@link LunaDecoderLayer}. */
export interface LunaDecoderLayerOptions extends ModuleOptions {
  embedDim: number;
  numHeads: number;
  ffnDim: number;
  /** Pack heads of the cross-attention (default numHeads). */
  numPackHeads?: number;
  tieKV?: boolean;
  normalizeBefore?: boolean;
  /** FFN activation (default gelu, like the encoder layer). */
  activation?: 'gelu' | 'relu';
  /** φ of the causal pack (default softplus with β = ln 2). */
  causalActivation?: 'softplus' | 'elu';
  dropout?: number;
  attentionDropout?: number;
  activationDropout?: number;
}

/** What a decoder layer reads from the encoder. */
export interface LunaDecoderLayerInputs {
  /** The encoder's final X [B,m,d]: the cross-attention's context. */
  encoderOut: Tensor;
  /** bool [B,m], 1 = padded source token (masks the cross-attention's pack keys). */
  encoderPaddingMask?: Tensor | null;
  /** bool [B,l], 1 = padded P slot (masks the unpack keys of both attentions). */
  packPaddingMask?: Tensor | null;
}

const LAYER_INPUT_KEYS = ['encoderOut', 'encoderPaddingMask', 'packPaddingMask'] as const;

/** One layer's incremental-decoding cache. */
export interface DecoderLayerCache {
  /** The causal attention's prefix state (prefix sums, step count, projected P). */
  causal: CausalLunaState;
  /** The cross-attention's unpack keys and values [B,h,l,dh] (one tensor when tied). */
  kv: { k: Tensor; v: Tensor };
}

/** One Luna decoder layer: causal self-attention, cross-attention (which updates P), FFN. */
export class LunaDecoderLayer extends Module {
  readonly normalizeBefore: boolean;
  readonly activation: 'gelu' | 'relu';
  readonly self_attn: LunaCausalAttention;
  readonly self_attn_layer_norm: LayerNorm;
  readonly encoder_attn: LunaAttention;
  readonly encoder_attn_layer_norm: LayerNorm;
  readonly encoder_atten_proj_layer_norm: LayerNorm;
  readonly fc1: Linear;
  readonly fc2: Linear;
  readonly final_layer_norm: LayerNorm;
  private readonly dropoutModule: Dropout;
  private readonly activationDropoutModule: Dropout;

  /** Creates both attentions, the four layer norms and the FFN; see {@link LunaDecoderLayerOptions}. */
  constructor(options: LunaDecoderLayerOptions) {
    const where = 'nn.LunaDecoderLayer';
    const { opts, resolved } = moduleOptions(where, options, [
      'embedDim', 'numHeads', 'ffnDim', 'numPackHeads', 'tieKV', 'normalizeBefore', 'activation',
      'causalActivation', 'dropout', 'attentionDropout', 'activationDropout',
    ]);
    super(resolved);
    const d = checkPositiveInt(where, 'options.embedDim', opts.embedDim);
    const ffn = checkPositiveInt(where, 'options.ffnDim', opts.ffnDim);
    this.normalizeBefore = opts.normalizeBefore === undefined ? false : checkBoolean(where, 'options.normalizeBefore', opts.normalizeBefore);
    if (opts.activation !== undefined && opts.activation !== 'gelu' && opts.activation !== 'relu') {
      throw mismatch('ERR_ARGUMENT', where, 'options.activation', "'gelu' or 'relu'", describe(opts.activation));
    }
    this.activation = (opts.activation as 'gelu' | 'relu' | undefined) ?? 'gelu';
    const attentionDropout = checkProbability(where, 'options.attentionDropout', opts.attentionDropout, 0);
    const common = { dtype: resolved.dtype, device: resolved.device };
    const rng = resolved.rng;
    const tie = opts.tieKV === undefined ? {} : { tieKV: opts.tieKV as boolean };
    this.self_attn = this.registerModule(
      'self_attn',
      new LunaCausalAttention({
        embedDim: d,
        numHeads: opts.numHeads as number,
        ...tie,
        dropout: attentionDropout,
        ...(opts.causalActivation === undefined ? {} : { activation: opts.causalActivation as 'softplus' | 'elu' }),
        ...common,
        seed: rng.nextUint32(),
      }),
    );
    this.self_attn_layer_norm = this.registerModule('self_attn_layer_norm', new LayerNorm({ normalizedShape: d, ...common }));
    this.encoder_attn = this.registerModule(
      'encoder_attn',
      new LunaAttention({
        embedDim: d,
        numHeads: opts.numHeads as number,
        ...(opts.numPackHeads === undefined ? {} : { numPackHeads: opts.numPackHeads as number }),
        ...tie,
        dropout: attentionDropout,
        ...common,
        seed: rng.nextUint32(),
      }),
    );
    this.encoder_attn_layer_norm = this.registerModule('encoder_attn_layer_norm', new LayerNorm({ normalizedShape: d, ...common }));
    this.encoder_atten_proj_layer_norm = this.registerModule('encoder_atten_proj_layer_norm', new LayerNorm({ normalizedShape: d, ...common }));
    this.fc1 = this.registerModule('fc1', new Linear({ inFeatures: d, outFeatures: ffn, ...common, seed: rng.nextUint32() }));
    this.fc2 = this.registerModule('fc2', new Linear({ inFeatures: ffn, outFeatures: d, ...common, seed: rng.nextUint32() }));
    this.final_layer_norm = this.registerModule('final_layer_norm', new LayerNorm({ normalizedShape: d, ...common }));
    this.dropoutModule = this.registerModule('dropout_module', new Dropout({ p: checkProbability(where, 'options.dropout', opts.dropout, 0), ...common }));
    this.activationDropoutModule = this.registerModule(
      'activation_dropout_module',
      new Dropout({ p: checkProbability(where, 'options.activationDropout', opts.activationDropout, 0), ...common }),
    );
  }

  /** x [B,n,d] (target side), p [B,l,d] -> { x: [B,n,d], p: P' [B,l,d] }. */
  forward(x: Tensor, p: Tensor, inputs: LunaDecoderLayerInputs): { x: Tensor; p: Tensor } {
    return this.callForward([x, p, inputs], (xi: Tensor, pi: Tensor, opts: LunaDecoderLayerInputs) => this.compute(xi, pi, opts));
  }

  private ffn(t: Tensor): Tensor {
    const hidden = consume(this.fc1.forward(t), (a) => (this.activation === 'gelu' ? ops.gelu(a) : ops.relu(a)));
    return consume(consume(hidden, (a) => this.activationDropoutModule.forward(a)), (a) => this.fc2.forward(a));
  }

  /** residual + dropout(branch), disposing the branch. */
  private residual(residual: Tensor, branch: Tensor): Tensor {
    return consume(consume(branch, (b) => this.dropoutModule.forward(b)), (b) => ops.add(residual, b));
  }

  private static readInputs(where: string, inputs: unknown): { enc: Tensor; encMask: Tensor | null; packMask: Tensor | null } {
    const opts = checkOptions(where, inputs, LAYER_INPUT_KEYS);
    if (!(opts.encoderOut instanceof Tensor)) throw mismatch('ERR_ARGUMENT', where, 'inputs.encoderOut', 'a Tensor [B,m,d]', describe(opts.encoderOut));
    return {
      enc: opts.encoderOut,
      encMask: (opts.encoderPaddingMask ?? null) as Tensor | null,
      packMask: (opts.packPaddingMask ?? null) as Tensor | null,
    };
  }

  private compute(x: Tensor, p: Tensor, inputs: LunaDecoderLayerInputs): { x: Tensor; p: Tensor } {
    const { enc, encMask, packMask } = LunaDecoderLayer.readInputs('LunaDecoderLayer.forward', inputs);
    if (this.normalizeBefore) {
      // The causal attention reads the layer's raw P; the cross-attention a normalised one.
      const xs = this.self_attn_layer_norm.forward(x);
      const x1 = this.residual(x, this.self_attn.forward(xs, p, { packPaddingMask: packMask }));
      xs.dispose();
      const xn = this.encoder_attn_layer_norm.forward(x1);
      const pn = this.encoder_atten_proj_layer_norm.forward(p);
      const { output, packed } = this.encoder_attn.forward(xn, pn, { context: enc, contextPaddingMask: encMask, packPaddingMask: packMask });
      xn.dispose();
      pn.dispose();
      const x2 = consume(x1, (t) => this.residual(t, output));
      const pOut = this.residual(p, packed);
      const branch = consume(this.final_layer_norm.forward(x2), (t) => this.ffn(t));
      const xOut = consume(x2, (t) => this.residual(t, branch));
      return { x: xOut, p: pOut };
    }
    const x1 = consume(this.residual(x, this.self_attn.forward(x, p, { packPaddingMask: packMask })), (t) =>
      this.self_attn_layer_norm.forward(t),
    );
    const { output, packed } = this.encoder_attn.forward(x1, p, { context: enc, contextPaddingMask: encMask, packPaddingMask: packMask });
    const x2 = consume(consume(x1, (t) => this.residual(t, output)), (t) => this.encoder_attn_layer_norm.forward(t));
    const pOut = consume(this.residual(p, packed), (t) => this.encoder_atten_proj_layer_norm.forward(t));
    const xOut = consume(consume(x2, (t) => this.residual(t, this.ffn(t))), (t) => this.final_layer_norm.forward(t));
    return { x: xOut, p: pOut };
  }

  /**
   * Starts incremental decoding for this layer: the causal state from the layer's P, the
   * cross-attention's packed keys and values, and the P the next layer gets. Inference only.
   */
  startDecoding(p: Tensor, inputs: LunaDecoderLayerInputs): { cache: DecoderLayerCache; p: Tensor } {
    const { enc, encMask, packMask } = LunaDecoderLayer.readInputs('LunaDecoderLayer.startDecoding', inputs);
    return noGrad(() => {
      const causal = this.self_attn.startDecoding(p, { packPaddingMask: packMask });
      const pq = this.normalizeBefore ? this.encoder_atten_proj_layer_norm.forward(p) : p;
      const packed = this.encoder_attn.pack(pq, enc, encMask);
      if (pq !== p) pq.dispose();
      const kv = this.encoder_attn.unpackKeys(packed);
      const pOut = this.normalizeBefore
        ? consume(packed, (t) => ops.add(p, t))
        : consume(consume(packed, (t) => ops.add(p, t)), (t) => this.encoder_atten_proj_layer_norm.forward(t));
      return { cache: { causal, kv }, p: pOut };
    });
  }

  /** The layer's outputs [B,s,d] for the next s target positions x [B,s,d]; advances the cache. */
  step(x: Tensor, cache: DecoderLayerCache, packPaddingMask: Tensor | null = null): Tensor {
    return noGrad(() => {
      if (this.normalizeBefore) {
        const x1 = consume(consume(this.self_attn_layer_norm.forward(x), (t) => this.self_attn.step(t, cache.causal)), (t) => ops.add(x, t));
        const c = consume(this.encoder_attn_layer_norm.forward(x1), (t) => this.encoder_attn.unpack(t, cache.kv, packPaddingMask));
        const x2 = consume(x1, (t) => consume(c, (u) => ops.add(t, u)));
        const f = consume(this.final_layer_norm.forward(x2), (t) => this.ffn(t));
        return consume(x2, (t) => consume(f, (u) => ops.add(t, u)));
      }
      const x1 = consume(consume(this.self_attn.step(x, cache.causal), (t) => ops.add(x, t)), (t) => this.self_attn_layer_norm.forward(t));
      const c = this.encoder_attn.unpack(x1, cache.kv, packPaddingMask);
      const x2 = consume(consume(x1, (t) => consume(c, (u) => ops.add(t, u))), (t) => this.encoder_attn_layer_norm.forward(t));
      const f = this.ffn(x2);
      return consume(consume(x2, (t) => consume(f, (u) => ops.add(t, u))), (t) => this.final_layer_norm.forward(t));
    });
  }
}

/** Reorders a layer cache's batch rows (beam search): row i takes old row indices[i]. */
export function reorderLayerCache(cache: DecoderLayerCache, indices: readonly number[]): DecoderLayerCache {
  const k = selectRows(cache.kv.k, indices);
  const v = cache.kv.v === cache.kv.k ? k : selectRows(cache.kv.v, indices);
  cache.kv.k.dispose();
  if (cache.kv.v !== cache.kv.k) cache.kv.v.dispose();
  cache.causal.reorder(indices);
  return { causal: cache.causal, kv: { k, v } };
}

/** Frees a layer cache. */
export function disposeLayerCache(cache: DecoderLayerCache): void {
  cache.causal.dispose();
  cache.kv.k.dispose();
  if (cache.kv.v !== cache.kv.k) cache.kv.v.dispose();
}
