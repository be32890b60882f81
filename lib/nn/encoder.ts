/**
 * The Luna encoder (token and learned position embeddings, the learned initial P with its layer
 * norm, dynamic projection length, the layer stack) and a sequence classifier on top of it
 * (luna-math.md sections 4.2, 4.3 and 4.5; the MLM/LRA flavour of the reference encoder).
 *
 * @packageDocumentation
 */
import { checkBoolean, checkFinite, checkNonNegativeInt, checkOptions, checkPositiveInt, describe, mismatch } from '../errors';
import { Tensor, checkTensor, makeTensor } from '../tensor';
import { hostValues } from '../ops/common';
import { allocate } from '../dtype';
import { ops } from '../ops';
import { Module, ModuleOptions, moduleOptions, normalFill, parameterTensor } from './module';
import { Dropout, Embedding, LayerNorm, Linear, checkProbability } from './layers';
import { LunaEncoderLayer, consume } from './luna';
import { sinusoidalPositions } from './positions';

/** Options of {@link LunaEncoder}. */
export interface LunaEncoderOptions extends ModuleOptions {
  vocabSize: number;
  /** Longest sequence the learned positions cover. */
  maxPositions: number;
  embedDim: number;
  numLayers: number;
  numHeads: number;
  ffnDim: number;
  /** l, the number of rows of P. */
  projectionLength: number;
  numPackHeads?: number;
  tieKV?: boolean;
  normalizeBefore?: boolean;
  activation?: 'gelu' | 'relu';
  dropout?: number;
  attentionDropout?: number;
  activationDropout?: number;
  /** The padding token id (default 1, fairseq's); padded tokens are masked as pack keys. */
  paddingIdx?: number;
  /** l_eff = min(l, longest sequence in the batch) (default true, the reference's default). */
  dynamicProjection?: boolean;
  /**
   * 'learned' (default; the MLM/LRA encoder: a learned position table `embed_positions`) or
   * 'sinusoidal' (the MT encoder: fixed sinusoids added to sqrt(d)-scaled token embeddings, and
   * to sqrt(d)-scaled P rows at slots 0..l_eff-1; no `embed_positions` parameter).
   */
  positions?: 'learned' | 'sinusoidal';
  /** Multiplies token embeddings (and P rows): default sqrt(d) with sinusoidal positions, 1 with learned ones. */
  embedScale?: number;
}

const ENCODER_KEYS = [
  'vocabSize', 'maxPositions', 'embedDim', 'numLayers', 'numHeads', 'ffnDim', 'projectionLength',
  'numPackHeads', 'tieKV', 'normalizeBefore', 'activation', 'dropout', 'attentionDropout',
  'activationDropout', 'paddingIdx', 'dynamicProjection', 'positions', 'embedScale',
] as const;

/** What the encoder returns. */
export interface LunaEncoderOutput {
  /** X after the last layer, [B,n,d]. */
  x: Tensor;
  /** P after the last layer, [B,l_eff,d]. */
  p: Tensor;
  /** bool [B,n], 1 = padding token; null when the batch has no padding. */
  paddingMask: Tensor | null;
  /** bool [B,l_eff], 1 = P slot beyond the example's length; null when none is. */
  packPaddingMask: Tensor | null;
  /** Unpadded length of each example. */
  lengths: number[];
}

/** Per-call inputs of {@link LunaEncoder.forward}. */
export interface LunaEncoderInputs {
  /** Position of the first token (default 0). */
  positionOffset?: number;
}

/** Builds a float tensor [B, len, 1] holding 1 for kept positions and 0 for masked ones. */
function keepColumn(mask: Uint8Array, B: number, len: number, like: Tensor): Tensor {
  const data = allocate('LunaEncoder', like.dtype, B * len) as Float32Array | Float64Array;
  for (let i = 0; i < B * len; i++) data[i] = mask[i] ? 0 : 1;
  return makeTensor(data, [B, len, 1], like.dtype, like.device);
}

/** The Luna encoder: embeddings, initial P, and numLayers LunaEncoderLayers. */
export class LunaEncoder extends Module {
  readonly embedDim: number;
  readonly projectionLength: number;
  readonly maxPositions: number;
  readonly paddingIdx: number;
  readonly dynamicProjection: boolean;
  readonly normalizeBefore: boolean;
  readonly embed_tokens: Embedding;
  /** The learned position table; null with sinusoidal positions. */
  readonly embed_positions: Embedding | null;
  readonly positions: 'learned' | 'sinusoidal';
  /** Multiplies token embeddings and P rows: sqrt(d) with sinusoidal positions, else 1. */
  readonly embedScale: number;
  readonly projected_embeddings: Tensor;
  readonly emb_layer_norm: LayerNorm;
  readonly proj_emb_layer_norm: LayerNorm;
  readonly layers: LunaEncoderLayer[];
  readonly layer_norm: LayerNorm | null;
  readonly proj_layer_norm: LayerNorm | null;
  private readonly dropoutModule: Dropout;

  /** Creates the embeddings, the learned initial P and the layers; see {@link LunaEncoderOptions}. */
  constructor(options: LunaEncoderOptions) {
    const where = 'nn.LunaEncoder';
    const { opts, resolved } = moduleOptions(where, options, ENCODER_KEYS);
    super(resolved);
    const d = (this.embedDim = checkPositiveInt(where, 'options.embedDim', opts.embedDim));
    const vocab = checkPositiveInt(where, 'options.vocabSize', opts.vocabSize);
    this.maxPositions = checkPositiveInt(where, 'options.maxPositions', opts.maxPositions);
    this.projectionLength = checkPositiveInt(where, 'options.projectionLength', opts.projectionLength);
    const numLayers = checkNonNegativeInt(where, 'options.numLayers', opts.numLayers);
    this.paddingIdx = opts.paddingIdx === undefined ? 1 : checkNonNegativeInt(where, 'options.paddingIdx', opts.paddingIdx);
    if (this.paddingIdx >= vocab) {
      throw mismatch('ERR_ARGUMENT', where, 'options.paddingIdx', `an id below vocabSize (${vocab})`, String(this.paddingIdx));
    }
    this.dynamicProjection = opts.dynamicProjection === undefined ? true : checkBoolean(where, 'options.dynamicProjection', opts.dynamicProjection);
    this.normalizeBefore = opts.normalizeBefore === undefined ? false : checkBoolean(where, 'options.normalizeBefore', opts.normalizeBefore);
    const dropout = checkProbability(where, 'options.dropout', opts.dropout, 0);
    const common = { dtype: resolved.dtype, device: resolved.device };
    const rng = resolved.rng;

    this.embed_tokens = this.registerModule(
      'embed_tokens',
      new Embedding({ numEmbeddings: vocab, embeddingDim: d, paddingIdx: this.paddingIdx, ...common, seed: rng.nextUint32() }),
    );
    if (opts.positions !== undefined && opts.positions !== 'learned' && opts.positions !== 'sinusoidal') {
      throw mismatch('ERR_ARGUMENT', where, 'options.positions', "'learned' or 'sinusoidal'", describe(opts.positions));
    }
    this.positions = (opts.positions as 'learned' | 'sinusoidal' | undefined) ?? 'learned';
    this.embedScale =
      opts.embedScale === undefined ? (this.positions === 'sinusoidal' ? Math.sqrt(d) : 1) : checkFinite(where, 'options.embedScale', opts.embedScale);
    // Drawn even when unused, so the other parameters' initial values do not depend on the choice.
    const positionSeed = rng.nextUint32();
    this.embed_positions =
      this.positions === 'learned'
        ? this.registerModule('embed_positions', new Embedding({ numEmbeddings: this.maxPositions, embeddingDim: d, ...common, seed: positionSeed }))
        : null;
    // The learned initial P, N(0, d^-1/2) as in the reference's LRA encoder.
    this.projected_embeddings = this.registerParameter(
      'projected_embeddings',
      parameterTensor(where, [this.projectionLength, d], resolved, normalFill(d ** -0.5)),
    );
    this.emb_layer_norm = this.registerModule('emb_layer_norm', new LayerNorm({ normalizedShape: d, ...common }));
    this.proj_emb_layer_norm = this.registerModule('proj_emb_layer_norm', new LayerNorm({ normalizedShape: d, ...common }));
    this.layers = [];
    for (let i = 0; i < numLayers; i++) {
      this.layers.push(
        this.registerModule(
          `layers.${i}`,
          new LunaEncoderLayer({
            embedDim: d,
            numHeads: opts.numHeads as number,
            ffnDim: opts.ffnDim as number,
            ...(opts.numPackHeads === undefined ? {} : { numPackHeads: opts.numPackHeads as number }),
            ...(opts.tieKV === undefined ? {} : { tieKV: opts.tieKV as boolean }),
            normalizeBefore: this.normalizeBefore,
            ...(opts.activation === undefined ? {} : { activation: opts.activation as 'gelu' | 'relu' }),
            dropout,
            attentionDropout: checkProbability(where, 'options.attentionDropout', opts.attentionDropout, 0),
            activationDropout: checkProbability(where, 'options.activationDropout', opts.activationDropout, 0),
            ...common,
            seed: rng.nextUint32(),
          }),
        ),
      );
    }
    this.layer_norm = this.normalizeBefore ? this.registerModule('layer_norm', new LayerNorm({ normalizedShape: d, ...common })) : null;
    this.proj_layer_norm = this.normalizeBefore ? this.registerModule('proj_layer_norm', new LayerNorm({ normalizedShape: d, ...common })) : null;
    this.dropoutModule = this.registerModule('dropout_module', new Dropout({ p: dropout, ...common }));
  }

  /**
   * tokens int32 [B,n] -> the final X and P, and the masks the layers used. `positionOffset`
   * (default 0) is the position of the first token: a right-aligned source of length n in a
   * window of N positions can be encoded with offset N - n instead of n - N left pads, for the
   * same result at less cost (padded tokens are masked anyway).
   */
  forward(tokens: Tensor, inputs: LunaEncoderInputs = {}): LunaEncoderOutput {
    return this.callForward([tokens, inputs], (t: Tensor, opts: LunaEncoderInputs) => this.compute(t, opts));
  }

  private compute(tokensIn: Tensor, inputs: LunaEncoderInputs): LunaEncoderOutput {
    const where = 'LunaEncoder.forward';
    const tokens = checkTensor(where, 'tokens', tokensIn);
    const offset = checkOptions(where, inputs, ['positionOffset']).positionOffset === undefined
      ? 0
      : checkNonNegativeInt(where, 'inputs.positionOffset', inputs.positionOffset);
    if (tokens.dtype !== 'int32') throw mismatch('ERR_DTYPE', where, 'tokens.dtype', 'int32', tokens.dtype);
    if (tokens.rank !== 2) throw mismatch('ERR_SHAPE', where, 'tokens.shape', '[B,n]', `[${tokens.shape.join(',')}]`);
    const [B, n] = tokens.shape;
    if (offset + n > this.maxPositions) {
      throw mismatch('ERR_SHAPE', where, 'positionOffset + tokens.shape[1]', `at most maxPositions (${this.maxPositions})`, String(offset + n));
    }
    if (B === 0 || n === 0) throw mismatch('ERR_SHAPE', where, 'tokens.shape', 'a non-empty batch', `[${B},${n}]`);
    const ids = hostValues(tokens, where, 'tokens') as Int32Array;

    // Padding: every token equal to paddingIdx. Lengths count the unpadded tokens (the
    // reference assumes right padding).
    const padMask = new Uint8Array(B * n);
    const lengths = new Array<number>(B).fill(0);
    let anyPad = false;
    for (let b = 0; b < B; b++) {
      for (let i = 0; i < n; i++) {
        const pad = ids[b * n + i] === this.paddingIdx ? 1 : 0;
        padMask[b * n + i] = pad;
        if (pad) anyPad = true;
        else lengths[b]++;
      }
    }
    const longest = Math.max(...lengths);
    const l = this.dynamicProjection ? Math.max(1, Math.min(this.projectionLength, longest)) : this.projectionLength;
    const slotMask = new Uint8Array(B * l);
    let anySlotPad = false;
    for (let b = 0; b < B; b++) {
      for (let r = 0; r < l; r++) {
        if (r >= lengths[b]) {
          slotMask[b * l + r] = 1;
          anySlotPad = true;
        }
      }
    }
    const paddingMask = anyPad ? makeTensor(padMask, [B, n], 'bool', this.device) : null;
    const packPaddingMask = anySlotPad ? makeTensor(slotMask, [B, l], 'bool', this.device) : null;

    // X0 = LN(scale * token + position embeddings), dropout, padded rows zeroed.
    let tok = this.embed_tokens.forward(tokens);
    if (this.embedScale !== 1) tok = consume(tok, (t) => ops.scale(t, this.embedScale));
    let pos: Tensor;
    if (this.embed_positions !== null) {
      const positions = new Int32Array(B * n);
      for (let b = 0; b < B; b++) for (let i = 0; i < n; i++) positions[b * n + i] = offset + i;
      const posIds = makeTensor(positions, [B, n], 'int32', this.device);
      pos = this.embed_positions.forward(posIds);
      posIds.dispose();
    } else {
      pos = sinusoidalPositions(offset, n, this.embedDim, this.dtype, this.device);
    }
    let x = consume(consume(ops.add(tok, pos), (t) => this.emb_layer_norm.forward(t)), (t) => this.dropoutModule.forward(t));
    tok.dispose();
    pos.dispose();
    if (anyPad) {
      const keep = keepColumn(padMask, B, n, x);
      x = consume(x, (t) => ops.mul(t, keep));
      keep.dispose();
    }

    // P0 = LN(E_P[:l_eff]) broadcast over the batch, dropout, padded slots zeroed.
    let pe = l === this.projectionLength ? this.projected_embeddings : ops.slice(this.projected_embeddings, 0, 0, l);
    if (this.positions === 'sinusoidal') {
      const slots = sinusoidalPositions(0, l, this.embedDim, this.dtype, this.device);
      const scaled = ops.scale(pe, this.embedScale);
      if (pe !== this.projected_embeddings) pe.dispose();
      pe = consume(scaled, (t) => ops.add(t, slots));
      slots.dispose();
    }
    const peNorm = this.proj_emb_layer_norm.forward(pe);
    if (pe !== this.projected_embeddings) pe.dispose();
    let p = consume(consume(peNorm, (t) => ops.broadcastTo(t, [B, l, this.embedDim])), (t) => this.dropoutModule.forward(t));
    if (anySlotPad) {
      const keep = keepColumn(slotMask, B, l, p);
      p = consume(p, (t) => ops.mul(t, keep));
      keep.dispose();
    }

    for (const layer of this.layers) {
      const out = layer.forward(x, p, { paddingMask, packPaddingMask });
      x.dispose();
      p.dispose();
      x = out.x;
      p = out.p;
    }
    if (this.layer_norm !== null && this.proj_layer_norm !== null) {
      x = consume(x, (t) => (this.layer_norm as LayerNorm).forward(t));
      p = consume(p, (t) => (this.proj_layer_norm as LayerNorm).forward(t));
    }
    return { x, p, paddingMask, packPaddingMask, lengths };
  }
}

/** How {@link LunaClassifier} pools a sequence into one vector. */
export type Pooling = 'cls' | 'mean' | 'p';

/** Options of {@link LunaClassifier}: the encoder's plus the head's. */
export interface LunaClassifierOptions extends LunaEncoderOptions {
  numClasses: number;
  /** 'cls' (first token), 'mean' (mean of the unpadded tokens) or 'p' (mean of the final P). Default 'mean'. */
  pooling?: Pooling;
}

/** A sequence classifier: LunaEncoder, pooling, then dense -> relu -> out_proj. */
export class LunaClassifier extends Module {
  readonly pooling: Pooling;
  readonly encoder: LunaEncoder;
  readonly dense: Linear;
  readonly out_proj: Linear;

  /** Creates the encoder and the classification head; see {@link LunaClassifierOptions}. */
  constructor(options: LunaClassifierOptions) {
    const where = 'nn.LunaClassifier';
    const { opts, resolved } = moduleOptions(where, options, [...ENCODER_KEYS, 'numClasses', 'pooling']);
    super(resolved);
    const numClasses = checkPositiveInt(where, 'options.numClasses', opts.numClasses);
    const pooling = opts.pooling ?? 'mean';
    if (pooling !== 'cls' && pooling !== 'mean' && pooling !== 'p') {
      throw mismatch('ERR_ARGUMENT', where, 'options.pooling', "'cls', 'mean' or 'p'", describe(pooling));
    }
    this.pooling = pooling;
    const encoderOptions: Record<string, unknown> = {};
    for (const k of ENCODER_KEYS) if (opts[k] !== undefined) encoderOptions[k] = opts[k];
    const common = { dtype: resolved.dtype, device: resolved.device };
    const rng = resolved.rng;
    this.encoder = this.registerModule(
      'encoder',
      new LunaEncoder({ ...(encoderOptions as unknown as LunaEncoderOptions), ...common, seed: rng.nextUint32() }),
    );
    const d = this.encoder.embedDim;
    this.dense = this.registerModule('classifier.dense', new Linear({ inFeatures: d, outFeatures: d, ...common, seed: rng.nextUint32() }));
    this.out_proj = this.registerModule(
      'classifier.out_proj',
      new Linear({ inFeatures: d, outFeatures: numClasses, ...common, seed: rng.nextUint32() }),
    );
  }

  /** tokens int32 [B,n] -> logits [B, numClasses]. */
  forward(tokens: Tensor): Tensor {
    return this.callForward([tokens], (t: Tensor) => this.compute(t));
  }

  private compute(tokens: Tensor): Tensor {
    const enc = this.encoder.forward(tokens);
    const [B, , d] = enc.x.shape;
    let pooled: Tensor;
    if (this.pooling === 'p') {
      pooled = ops.mean(enc.p, { axis: 1 });
    } else if (this.pooling === 'cls') {
      pooled = consume(ops.slice(enc.x, 1, 0, 1), (t) => ops.reshape(t, [B, d]));
    } else {
      // The encoder already zeroed padded rows, so the sum over n is the sum over valid tokens.
      const inv = allocate('LunaClassifier', enc.x.dtype, B) as Float32Array | Float64Array;
      enc.lengths.forEach((len, b) => {
        inv[b] = len > 0 ? 1 / len : 0;
      });
      const invLen = makeTensor(inv, [B, 1], enc.x.dtype, enc.x.device);
      pooled = consume(ops.sum(enc.x, { axis: 1 }), (t) => ops.mul(t, invLen));
      invLen.dispose();
    }
    enc.x.dispose();
    enc.p.dispose();
    enc.paddingMask?.dispose();
    enc.packPaddingMask?.dispose();
    const hidden = consume(consume(pooled, (t) => this.dense.forward(t)), (t) => ops.relu(t));
    return consume(hidden, (t) => this.out_proj.forward(t));
  }
}
