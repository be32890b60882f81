/**
 * The Luna decoder (embeddings, a stack of LunaDecoderLayers, the output projection) and the
 * encoder-decoder model of the paper's translation experiments (luna-math.md section 4.4), with
 * incremental decoding for generation (see ./generate.ts for greedy and beam search).
 *
 * @packageDocumentation
 */
import { checkBoolean, checkFinite, checkNonNegativeInt, checkPositiveInt, describe, mismatch } from '../errors';
import { Tensor, checkTensor, makeTensor } from '../tensor';
import { ops } from '../ops';
import { noGrad } from '../autograd';
import { Module, ModuleOptions, moduleOptions } from './module';
import { Dropout, Embedding, LayerNorm, Linear, checkProbability } from './layers';
import { consume } from './luna';
import { LunaEncoder, LunaEncoderInputs, LunaEncoderOptions } from './encoder';
import { DecoderLayerCache, LunaDecoderLayer, disposeLayerCache, reorderLayerCache } from './decoder';
import { sinusoidalPositions } from './positions';
import { selectRows } from './select';

/** What the decoder reads from the encoder (LunaEncoder's output has these fields). */
export interface EncoderContext {
  /** The encoder's final X [B,m,d]. */
  x: Tensor;
  /** The encoder's final P [B,l,d]: the decoder's initial P. */
  p: Tensor;
  /** bool [B,m], 1 = padded source token, or null. */
  paddingMask: Tensor | null;
  /** bool [B,l], 1 = padded P slot, or null. */
  packPaddingMask: Tensor | null;
}

/** Options of {@link LunaDecoder}. */
export interface LunaDecoderOptions extends ModuleOptions {
  vocabSize: number;
  /** Longest target the positions cover. */
  maxPositions: number;
  embedDim: number;
  numLayers: number;
  numHeads: number;
  ffnDim: number;
  numPackHeads?: number;
  tieKV?: boolean;
  normalizeBefore?: boolean;
  activation?: 'gelu' | 'relu';
  causalActivation?: 'softplus' | 'elu';
  dropout?: number;
  attentionDropout?: number;
  activationDropout?: number;
  /** Padding id (default 1): its embedding row stays zero. */
  paddingIdx?: number;
  /** 'learned' (default) or 'sinusoidal' positions; see LunaEncoderOptions.positions. */
  positions?: 'learned' | 'sinusoidal';
  /** Multiplies token embeddings: default sqrt(d) with sinusoidal positions, 1 with learned ones. */
  embedScale?: number;
  /** The output projection is the token embedding table (default true). */
  shareInputOutputEmbed?: boolean;
  /** A token table to use instead of a new one (a shared source/target vocabulary); not registered here. */
  embedTokens?: Embedding;
}

const DECODER_KEYS = [
  'vocabSize', 'maxPositions', 'embedDim', 'numLayers', 'numHeads', 'ffnDim', 'numPackHeads', 'tieKV',
  'normalizeBefore', 'activation', 'causalActivation', 'dropout', 'attentionDropout', 'activationDropout',
  'paddingIdx', 'positions', 'embedScale', 'shareInputOutputEmbed', 'embedTokens',
] as const;

/** Incremental-decoding state of a whole decoder: one cache per layer plus the step count. */
export class LunaDecoderState {
  /** @internal */
  caches: DecoderLayerCache[];
  /** @internal */
  packPaddingMask: Tensor | null;
  private _steps = 0;
  private _disposed = false;

  /** @internal Made by {@link LunaDecoder.startDecoding}. */
  constructor(caches: DecoderLayerCache[], packPaddingMask: Tensor | null) {
    this.caches = caches;
    this.packPaddingMask = packPaddingMask;
  }

  /** Target positions decoded so far. */
  get steps(): number {
    return this._steps;
  }

  /** @internal */
  advance(s: number): void {
    this._steps += s;
  }

  /** @internal Throws ERR_DISPOSED once disposed. */
  check(where: string): void {
    if (this._disposed) throw mismatch('ERR_DISPOSED', where, 'state', 'a live decoder state', 'a disposed one');
  }

  /** Keeps batch rows `indices` (row i becomes old row indices[i]; beam search). */
  reorder(indices: readonly number[]): void {
    this.check('LunaDecoderState.reorder');
    this.caches = this.caches.map((c) => reorderLayerCache(c, indices));
    if (this.packPaddingMask !== null) {
      const m = selectRows(this.packPaddingMask, indices);
      this.packPaddingMask.dispose();
      this.packPaddingMask = m;
    }
  }

  /** Frees every cache. */
  dispose(): void {
    if (this._disposed) return;
    this._disposed = true;
    for (const c of this.caches) disposeLayerCache(c);
    this.packPaddingMask?.dispose();
  }

  [Symbol.dispose](): void {
    this.dispose();
  }
}

/** The Luna decoder: token and position embeddings, numLayers LunaDecoderLayers, the output projection. */
export class LunaDecoder extends Module {
  readonly embedDim: number;
  readonly vocabSize: number;
  readonly maxPositions: number;
  readonly positions: 'learned' | 'sinusoidal';
  readonly embedScale: number;
  readonly embed_tokens: Embedding;
  readonly embed_positions: Embedding | null;
  readonly emb_layer_norm: LayerNorm;
  readonly layers: LunaDecoderLayer[];
  readonly layer_norm: LayerNorm | null;
  /** The output projection; null when it shares the token table. */
  readonly output_projection: Linear | null;
  private readonly dropoutModule: Dropout;

  /** Creates the embeddings, the layers and the output projection; see {@link LunaDecoderOptions}. */
  constructor(options: LunaDecoderOptions) {
    const where = 'nn.LunaDecoder';
    const { opts, resolved } = moduleOptions(where, options, DECODER_KEYS);
    super(resolved);
    const d = (this.embedDim = checkPositiveInt(where, 'options.embedDim', opts.embedDim));
    this.vocabSize = checkPositiveInt(where, 'options.vocabSize', opts.vocabSize);
    this.maxPositions = checkPositiveInt(where, 'options.maxPositions', opts.maxPositions);
    const numLayers = checkNonNegativeInt(where, 'options.numLayers', opts.numLayers);
    const paddingIdx = opts.paddingIdx === undefined ? 1 : checkNonNegativeInt(where, 'options.paddingIdx', opts.paddingIdx);
    if (opts.positions !== undefined && opts.positions !== 'learned' && opts.positions !== 'sinusoidal') {
      throw mismatch('ERR_ARGUMENT', where, 'options.positions', "'learned' or 'sinusoidal'", describe(opts.positions));
    }
    this.positions = (opts.positions as 'learned' | 'sinusoidal' | undefined) ?? 'learned';
    this.embedScale =
      opts.embedScale === undefined ? (this.positions === 'sinusoidal' ? Math.sqrt(d) : 1) : checkFinite(where, 'options.embedScale', opts.embedScale);
    const share = opts.shareInputOutputEmbed === undefined ? true : checkBoolean(where, 'options.shareInputOutputEmbed', opts.shareInputOutputEmbed);
    const normalizeBefore = opts.normalizeBefore === undefined ? false : checkBoolean(where, 'options.normalizeBefore', opts.normalizeBefore);
    const dropout = checkProbability(where, 'options.dropout', opts.dropout, 0);
    const common = { dtype: resolved.dtype, device: resolved.device };
    const rng = resolved.rng;

    if (opts.embedTokens !== undefined) {
      const e = opts.embedTokens;
      if (!(e instanceof Embedding) || e.numEmbeddings !== this.vocabSize || e.embeddingDim !== d || e.dtype !== resolved.dtype) {
        throw mismatch('ERR_ARGUMENT', where, 'options.embedTokens', `an nn.Embedding [${this.vocabSize}, ${d}] of ${resolved.dtype}`, describe(e));
      }
      this.embed_tokens = e;
    } else {
      this.embed_tokens = this.registerModule(
        'embed_tokens',
        new Embedding({ numEmbeddings: this.vocabSize, embeddingDim: d, paddingIdx, ...common, seed: rng.nextUint32() }),
      );
    }
    const positionSeed = rng.nextUint32();
    this.embed_positions =
      this.positions === 'learned'
        ? this.registerModule('embed_positions', new Embedding({ numEmbeddings: this.maxPositions, embeddingDim: d, ...common, seed: positionSeed }))
        : null;
    this.emb_layer_norm = this.registerModule('emb_layer_norm', new LayerNorm({ normalizedShape: d, ...common }));
    this.layers = [];
    for (let i = 0; i < numLayers; i++) {
      this.layers.push(
        this.registerModule(
          `layers.${i}`,
          new LunaDecoderLayer({
            embedDim: d,
            numHeads: opts.numHeads as number,
            ffnDim: opts.ffnDim as number,
            ...(opts.numPackHeads === undefined ? {} : { numPackHeads: opts.numPackHeads as number }),
            ...(opts.tieKV === undefined ? {} : { tieKV: opts.tieKV as boolean }),
            normalizeBefore,
            ...(opts.activation === undefined ? {} : { activation: opts.activation as 'gelu' | 'relu' }),
            ...(opts.causalActivation === undefined ? {} : { causalActivation: opts.causalActivation as 'softplus' | 'elu' }),
            dropout,
            attentionDropout: checkProbability(where, 'options.attentionDropout', opts.attentionDropout, 0),
            activationDropout: checkProbability(where, 'options.activationDropout', opts.activationDropout, 0),
            ...common,
            seed: rng.nextUint32(),
          }),
        ),
      );
    }
    this.layer_norm = normalizeBefore ? this.registerModule('layer_norm', new LayerNorm({ normalizedShape: d, ...common })) : null;
    this.output_projection = share
      ? null
      : this.registerModule(
          'output_projection',
          new Linear({ inFeatures: d, outFeatures: this.vocabSize, bias: false, ...common, seed: rng.nextUint32() }),
        );
    this.dropoutModule = this.registerModule('dropout_module', new Dropout({ p: dropout, ...common }));
  }

  private checkTokens(where: string, tokens: unknown, start: number): Tensor {
    const t = checkTensor(where, 'tokens', tokens);
    if (t.dtype !== 'int32') throw mismatch('ERR_DTYPE', where, 'tokens.dtype', 'int32', t.dtype);
    if (t.rank !== 2 || t.shape[0] === 0 || t.shape[1] === 0) throw mismatch('ERR_SHAPE', where, 'tokens.shape', '[B,n] with B, n >= 1', `[${t.shape.join(',')}]`);
    if (start + t.shape[1] > this.maxPositions) {
      throw mismatch('ERR_SHAPE', where, 'target length', `at most maxPositions (${this.maxPositions})`, String(start + t.shape[1]));
    }
    return t;
  }

  /** x0 [B,n,d] of target tokens at positions start..start+n-1. */
  private embed(tokens: Tensor, start: number): Tensor {
    const [B, n] = tokens.shape;
    let tok = this.embed_tokens.forward(tokens);
    if (this.embedScale !== 1) tok = consume(tok, (t) => ops.scale(t, this.embedScale));
    let pos: Tensor;
    if (this.embed_positions !== null) {
      const ids = new Int32Array(B * n);
      for (let b = 0; b < B; b++) for (let i = 0; i < n; i++) ids[b * n + i] = start + i;
      const posIds = makeTensor(ids, [B, n], 'int32', this.device);
      pos = this.embed_positions.forward(posIds);
      posIds.dispose();
    } else {
      pos = sinusoidalPositions(start, n, this.embedDim, this.dtype, this.device);
    }
    const x = consume(consume(ops.add(tok, pos), (t) => this.emb_layer_norm.forward(t)), (t) => this.dropoutModule.forward(t));
    tok.dispose();
    pos.dispose();
    return x;
  }

  /** x [B,n,d] after the last layer -> logits [B,n,vocabSize]. */
  private project(x: Tensor): Tensor {
    const xn = this.layer_norm === null ? x : consume(x, (t) => (this.layer_norm as LayerNorm).forward(t));
    return consume(xn, (t) => (this.output_projection === null ? ops.linear(t, this.embed_tokens.weight) : this.output_projection.forward(t)));
  }

  /** Teacher-forced pass: prevTokens int32 [B,n] (the target shifted right) -> logits [B,n,vocabSize]. */
  forward(prevTokens: Tensor, encoder: EncoderContext): Tensor {
    return this.callForward([prevTokens, encoder], (t: Tensor, enc: EncoderContext) => this.compute(t, enc));
  }

  private compute(tokensIn: Tensor, enc: EncoderContext): Tensor {
    const tokens = this.checkTokens('LunaDecoder.forward', tokensIn, 0);
    let x = this.embed(tokens, 0);
    let p = enc.p;
    const inputs = { encoderOut: enc.x, encoderPaddingMask: enc.paddingMask, packPaddingMask: enc.packPaddingMask };
    for (const layer of this.layers) {
      const out = layer.forward(x, p, inputs);
      x.dispose();
      if (p !== enc.p) p.dispose();
      x = out.x;
      p = out.p;
    }
    if (p !== enc.p) p.dispose();
    return this.project(x);
  }

  /** Starts incremental decoding from the encoder's output (inference only). */
  startDecoding(encoder: EncoderContext): LunaDecoderState {
    return noGrad(() => {
      const inputs = { encoderOut: encoder.x, encoderPaddingMask: encoder.paddingMask, packPaddingMask: encoder.packPaddingMask };
      const caches: DecoderLayerCache[] = [];
      let p = encoder.p;
      for (const layer of this.layers) {
        const { cache, p: next } = layer.startDecoding(p, inputs);
        if (p !== encoder.p) p.dispose();
        caches.push(cache);
        p = next;
      }
      if (p !== encoder.p) p.dispose();
      const mask = encoder.packPaddingMask === null ? null : selectRows(encoder.packPaddingMask, [...Array(encoder.packPaddingMask.shape[0]).keys()]);
      return new LunaDecoderState(caches, mask);
    });
  }

  /** The logits [B,s,vocabSize] of the next s target tokens [B,s] (int32), advancing `state`. */
  step(tokens: Tensor, state: LunaDecoderState): Tensor {
    state.check('LunaDecoder.step');
    const t = this.checkTokens('LunaDecoder.step', tokens, state.steps);
    return noGrad(() => {
      let x = this.embed(t, state.steps);
      this.layers.forEach((layer, i) => {
        x = consume(x, (u) => layer.step(u, state.caches[i], state.packPaddingMask));
      });
      state.advance(t.shape[1]);
      return this.project(x);
    });
  }
}

/** Options of {@link LunaSeq2Seq}. */
export interface LunaSeq2SeqOptions extends ModuleOptions {
  /** One vocabulary for source and target. */
  vocabSize: number;
  /** Longest source and target. */
  maxPositions: number;
  embedDim: number;
  encoderLayers: number;
  decoderLayers: number;
  numHeads: number;
  ffnDim: number;
  /** l, the rows of P. */
  projectionLength: number;
  numPackHeads?: number;
  tieKV?: boolean;
  normalizeBefore?: boolean;
  activation?: 'gelu' | 'relu';
  causalActivation?: 'softplus' | 'elu';
  dropout?: number;
  attentionDropout?: number;
  activationDropout?: number;
  paddingIdx?: number;
  positions?: 'learned' | 'sinusoidal';
  embedScale?: number;
  dynamicProjection?: boolean;
  /** One token table for the encoder, the decoder and the output projection (default true). */
  shareEmbeddings?: boolean;
}

const SEQ2SEQ_KEYS = [
  'vocabSize', 'maxPositions', 'embedDim', 'encoderLayers', 'decoderLayers', 'numHeads', 'ffnDim',
  'projectionLength', 'numPackHeads', 'tieKV', 'normalizeBefore', 'activation', 'causalActivation', 'dropout',
  'attentionDropout', 'activationDropout', 'paddingIdx', 'positions', 'embedScale', 'dynamicProjection', 'shareEmbeddings',
] as const;

/** Luna encoder-decoder: `encoder` (LunaEncoder) and `decoder` (LunaDecoder). */
export class LunaSeq2Seq extends Module {
  readonly encoder: LunaEncoder;
  readonly decoder: LunaDecoder;
  readonly paddingIdx: number;

  /** Creates the encoder and the decoder; see {@link LunaSeq2SeqOptions}. */
  constructor(options: LunaSeq2SeqOptions) {
    const where = 'nn.LunaSeq2Seq';
    const { opts, resolved } = moduleOptions(where, options, SEQ2SEQ_KEYS);
    super(resolved);
    const common = { dtype: resolved.dtype, device: resolved.device };
    const pick = (keys: readonly string[]): Record<string, unknown> => {
      const out: Record<string, unknown> = {};
      for (const k of keys) if (opts[k] !== undefined) out[k] = opts[k];
      return out;
    };
    const shared = [
      'vocabSize', 'maxPositions', 'embedDim', 'numHeads', 'ffnDim', 'numPackHeads', 'tieKV', 'normalizeBefore',
      'activation', 'dropout', 'attentionDropout', 'activationDropout', 'paddingIdx', 'positions', 'embedScale',
    ];
    const rng = resolved.rng;
    this.encoder = this.registerModule(
      'encoder',
      new LunaEncoder({
        ...(pick([...shared, 'projectionLength', 'dynamicProjection']) as unknown as LunaEncoderOptions),
        numLayers: checkNonNegativeInt(where, 'options.encoderLayers', opts.encoderLayers),
        ...common,
        seed: rng.nextUint32(),
      }),
    );
    this.paddingIdx = this.encoder.paddingIdx;
    const shareEmbeddings = opts.shareEmbeddings === undefined ? true : checkBoolean(where, 'options.shareEmbeddings', opts.shareEmbeddings);
    this.decoder = this.registerModule(
      'decoder',
      new LunaDecoder({
        ...(pick([...shared, 'causalActivation']) as unknown as LunaDecoderOptions),
        numLayers: checkNonNegativeInt(where, 'options.decoderLayers', opts.decoderLayers),
        ...(shareEmbeddings ? { embedTokens: this.encoder.embed_tokens } : {}),
        ...common,
        seed: rng.nextUint32(),
      }),
    );
  }

  /**
   * Runs the encoder: src int32 [B,m] -> its output, the decoder's context. Dispose it with
   * {@link disposeContext}. `positionOffset`: see LunaEncoder.forward.
   */
  encode(src: Tensor, inputs: LunaEncoderInputs = {}): EncoderContext {
    const e = this.encoder.forward(src, inputs);
    return { x: e.x, p: e.p, paddingMask: e.paddingMask, packPaddingMask: e.packPaddingMask };
  }

  /** Teacher-forced pass: src [B,m], prevTokens [B,n] (int32) -> logits [B,n,vocabSize]. */
  forward(src: Tensor, prevTokens: Tensor, inputs: LunaEncoderInputs = {}): Tensor {
    return this.callForward([src, prevTokens, inputs], (s: Tensor, t: Tensor, opts: LunaEncoderInputs) => {
      const enc = this.encode(s, opts);
      const logits = this.decoder.forward(t, enc);
      disposeContext(enc);
      return logits;
    });
  }
}

/** Frees an encoder context's tensors. */
export function disposeContext(enc: EncoderContext): void {
  enc.x.dispose();
  enc.p.dispose();
  enc.paddingMask?.dispose();
  enc.packPaddingMask?.dispose();
}
