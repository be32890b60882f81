/**
 * The basic layers: Linear, LayerNorm, Embedding, Dropout. Parameter names and layouts follow
 * PyTorch (`weight` [out, in], `bias` [out]), so their state dicts move to and from torch as is.
 *
 * @packageDocumentation
 */
import { checkBoolean, checkFinite, checkPositiveInt, checkNonNegativeInt, describe, mismatch } from '../errors';
import { Tensor } from '../tensor';
import { ops } from '../ops';
import { Module, ModuleOptions, constantFill, moduleOptions, normalFill, parameterTensor, uniformFill } from './module';

/** Checks a probability option in [0, 1). */
export function checkProbability(where: string, arg: string, value: unknown, fallback: number): number {
  if (value === undefined) return fallback;
  const p = checkFinite(where, arg, value);
  if (p < 0 || p >= 1) throw mismatch('ERR_ARGUMENT', where, arg, 'a probability in [0, 1)', describe(value));
  return p;
}

/** Options of {@link Linear}. */
export interface LinearOptions extends ModuleOptions {
  inFeatures: number;
  outFeatures: number;
  /** Whether the layer has a bias (default true). */
  bias?: boolean;
  /** Weight init: PyTorch's default U(-1/sqrt(in), 1/sqrt(in)), or xavier-uniform with this gain. */
  xavierGain?: number;
  /** Bias init: PyTorch's default U(-1/sqrt(in), 1/sqrt(in)), or this constant. */
  biasValue?: number;
}

/** y = x W^T + b over the last dimension. Parameters `weight` [out, in] and `bias` [out]. */
export class Linear extends Module {
  readonly inFeatures: number;
  readonly outFeatures: number;
  readonly weight: Tensor;
  readonly bias: Tensor | null;

  /** Creates the weight and bias (PyTorch's initialisation unless the options say otherwise); see {@link LinearOptions}. */
  constructor(options: LinearOptions) {
    const where = 'nn.Linear';
    const { opts, resolved } = moduleOptions(where, options, ['inFeatures', 'outFeatures', 'bias', 'xavierGain', 'biasValue']);
    super(resolved);
    this.inFeatures = checkPositiveInt(where, 'options.inFeatures', opts.inFeatures);
    this.outFeatures = checkPositiveInt(where, 'options.outFeatures', opts.outFeatures);
    const hasBias = opts.bias === undefined ? true : checkBoolean(where, 'options.bias', opts.bias);
    const fanBound = 1 / Math.sqrt(this.inFeatures);
    const weightFill =
      opts.xavierGain === undefined
        ? uniformFill(fanBound)
        : uniformFill(checkFinite(where, 'options.xavierGain', opts.xavierGain) * Math.sqrt(6 / (this.inFeatures + this.outFeatures)));
    this.weight = this.registerParameter(
      'weight',
      parameterTensor(where, [this.outFeatures, this.inFeatures], resolved, weightFill),
    );
    this.bias = hasBias
      ? this.registerParameter(
          'bias',
          parameterTensor(
            where,
            [this.outFeatures],
            resolved,
            opts.biasValue === undefined ? uniformFill(fanBound) : constantFill(checkFinite(where, 'options.biasValue', opts.biasValue)),
          ),
        )
      : null;
  }

  /** x [..., in] -> [..., out]. */
  forward(x: Tensor): Tensor {
    return this.callForward([x], (input: Tensor) => ops.linear(input, this.weight, this.bias));
  }
}

/** Options of {@link LayerNorm}. */
export interface LayerNormOptions extends ModuleOptions {
  normalizedShape: number;
  /** Default 1e-5 (as the reference). */
  eps?: number;
  /** Learnable weight and bias (default true). */
  elementwiseAffine?: boolean;
}

/** Layer normalisation over the last dimension; parameters `weight` (ones) and `bias` (zeros). */
export class LayerNorm extends Module {
  readonly normalizedShape: number;
  readonly eps: number;
  readonly weight: Tensor | null;
  readonly bias: Tensor | null;

  /** Creates weight = 1 and bias = 0 (unless disabled); see {@link LayerNormOptions}. */
  constructor(options: LayerNormOptions) {
    const where = 'nn.LayerNorm';
    const { opts, resolved } = moduleOptions(where, options, ['normalizedShape', 'eps', 'elementwiseAffine']);
    super(resolved);
    this.normalizedShape = checkPositiveInt(where, 'options.normalizedShape', opts.normalizedShape);
    this.eps = opts.eps === undefined ? 1e-5 : checkFinite(where, 'options.eps', opts.eps);
    if (this.eps <= 0) throw mismatch('ERR_ARGUMENT', where, 'options.eps', 'a positive number', String(this.eps));
    const affine = opts.elementwiseAffine === undefined ? true : checkBoolean(where, 'options.elementwiseAffine', opts.elementwiseAffine);
    this.weight = affine ? this.registerParameter('weight', parameterTensor(where, [this.normalizedShape], resolved, constantFill(1))) : null;
    this.bias = affine ? this.registerParameter('bias', parameterTensor(where, [this.normalizedShape], resolved, constantFill(0))) : null;
  }

  /** x [..., d] -> normalised [..., d]. */
  forward(x: Tensor): Tensor {
    return this.callForward([x], (input: Tensor) => ops.layerNorm(input, this.weight, this.bias, { eps: this.eps }));
  }
}

/** Options of {@link Embedding}. */
export interface EmbeddingOptions extends ModuleOptions {
  numEmbeddings: number;
  embeddingDim: number;
  /** A row that gets zero gradient (and starts at zero). */
  paddingIdx?: number;
  /** Init std of N(0, std): default embeddingDim^-1/2 (fairseq's). */
  std?: number;
}

/** A lookup table `weight` [numEmbeddings, embeddingDim] indexed by int32 ids. */
export class Embedding extends Module {
  readonly numEmbeddings: number;
  readonly embeddingDim: number;
  readonly paddingIdx: number | undefined;
  readonly weight: Tensor;

  /** Creates the table from N(0, std) (the padding row zeroed); see {@link EmbeddingOptions}. */
  constructor(options: EmbeddingOptions) {
    const where = 'nn.Embedding';
    const { opts, resolved } = moduleOptions(where, options, ['numEmbeddings', 'embeddingDim', 'paddingIdx', 'std']);
    super(resolved);
    this.numEmbeddings = checkPositiveInt(where, 'options.numEmbeddings', opts.numEmbeddings);
    this.embeddingDim = checkPositiveInt(where, 'options.embeddingDim', opts.embeddingDim);
    this.paddingIdx = opts.paddingIdx === undefined ? undefined : checkNonNegativeInt(where, 'options.paddingIdx', opts.paddingIdx);
    if (this.paddingIdx !== undefined && this.paddingIdx >= this.numEmbeddings) {
      throw mismatch('ERR_ARGUMENT', where, 'options.paddingIdx', `an id below numEmbeddings (${this.numEmbeddings})`, String(this.paddingIdx));
    }
    const std = opts.std === undefined ? this.embeddingDim ** -0.5 : checkFinite(where, 'options.std', opts.std);
    const d = this.embeddingDim;
    const pad = this.paddingIdx;
    this.weight = this.registerParameter(
      'weight',
      parameterTensor(where, [this.numEmbeddings, d], resolved, (data, rng) => {
        normalFill(std)(data, rng);
        if (pad !== undefined) data.fill(0, pad * d, (pad + 1) * d);
      }),
    );
  }

  /** ids int32 [...] -> [..., embeddingDim]. */
  forward(ids: Tensor): Tensor {
    return this.callForward([ids], (input: Tensor) =>
      ops.embedding(input, this.weight, this.paddingIdx === undefined ? {} : { paddingIdx: this.paddingIdx }),
    );
  }
}

/** Options of {@link Dropout}. */
export interface DropoutOptions extends ModuleOptions {
  /** Drop probability in [0, 1). */
  p?: number;
}

/** Inverted dropout in training mode, identity in eval mode. */
export class Dropout extends Module {
  readonly p: number;

  /** A dropout layer with probability `options.p`; see {@link DropoutOptions}. */
  constructor(options: DropoutOptions = {}) {
    const where = 'nn.Dropout';
    const { opts, resolved } = moduleOptions(where, options, ['p']);
    super(resolved);
    this.p = checkProbability(where, 'options.p', opts.p, 0.5);
  }

  /** x -> x with elements zeroed with probability p and the rest scaled by 1/(1-p) (training only). */
  forward(x: Tensor): Tensor {
    return this.callForward([x], (input: Tensor) =>
      this.training && this.p > 0 ? ops.dropout(input, this.p, { training: true }) : input,
    );
  }
}
