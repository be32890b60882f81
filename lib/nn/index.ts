/**
 * The `nn` namespace: modules with the reference's parameter names.
 *
 * @packageDocumentation
 */
import { Module } from './module';
import { Dropout, Embedding, LayerNorm, Linear } from './layers';
import { LunaAttention, LunaEncoderLayer } from './luna';
import { LunaClassifier, LunaEncoder } from './encoder';
import { LunaCausalAttention } from './causal';
import { LunaDecoderLayer } from './decoder';
import { LunaDecoder, LunaDecoderState, LunaSeq2Seq } from './seq2seq';
import { generate } from './generate';

export type { ModuleOptions, ForwardHook, ForwardPreHook } from './module';
export type { LinearOptions, LayerNormOptions, EmbeddingOptions, DropoutOptions } from './layers';
export type { LunaAttentionOptions, LunaAttentionInputs, LunaEncoderLayerOptions, LunaEncoderLayerInputs } from './luna';
export type { LunaEncoderOptions, LunaEncoderInputs, LunaEncoderOutput, LunaClassifierOptions, Pooling } from './encoder';
export type { LunaCausalAttentionOptions, LunaCausalAttentionInputs } from './causal';
export type { LunaDecoderLayerOptions, LunaDecoderLayerInputs, DecoderLayerCache } from './decoder';
export type { LunaDecoderOptions, LunaSeq2SeqOptions, EncoderContext } from './seq2seq';
export type { GenerateOptions } from './generate';

/** The layers. Every module takes `{ dtype?, device?, seed? }` besides its own options. */
export const nn = Object.freeze({
  Module,
  Linear,
  LayerNorm,
  Embedding,
  Dropout,
  LunaAttention,
  LunaEncoderLayer,
  LunaEncoder,
  LunaClassifier,
  LunaCausalAttention,
  LunaDecoderLayer,
  LunaDecoder,
  LunaDecoderState,
  LunaSeq2Seq,
  /** Greedy or beam-search generation with a LunaSeq2Seq model (incremental decoding). */
  generate,
});
export {
  Module, Linear, LayerNorm, Embedding, Dropout, LunaAttention, LunaEncoderLayer, LunaEncoder, LunaClassifier,
  LunaCausalAttention, LunaDecoderLayer, LunaDecoder, LunaDecoderState, LunaSeq2Seq, generate,
};
