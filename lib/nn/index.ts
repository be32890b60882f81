/**
 * The `nn` namespace: modules with the reference's parameter names.
 *
 * @packageDocumentation
 */
import { Module } from './module';
import { Dropout, Embedding, LayerNorm, Linear } from './layers';
import { LunaAttention, LunaEncoderLayer } from './luna';
import { LunaClassifier, LunaEncoder } from './encoder';

export type { ModuleOptions, ForwardHook, ForwardPreHook } from './module';
export type { LinearOptions, LayerNormOptions, EmbeddingOptions, DropoutOptions } from './layers';
export type { LunaAttentionOptions, LunaAttentionInputs, LunaEncoderLayerOptions, LunaEncoderLayerInputs } from './luna';
export type { LunaEncoderOptions, LunaEncoderOutput, LunaClassifierOptions, Pooling } from './encoder';

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
});
export { Module, Linear, LayerNorm, Embedding, Dropout, LunaAttention, LunaEncoderLayer, LunaEncoder, LunaClassifier };
