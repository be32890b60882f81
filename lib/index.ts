/**
 * luna-attention: fused Luna (linear unified nested attention) kernels with autograd for
 * Node.js. This module is the package's public API; everything not exported here is internal.
 *
 * @packageDocumentation
 */
export { LunaError } from './errors';
export type { LunaErrorCode } from './errors';
export type { DType, FloatDType, Device } from './dtype';
export { Tensor } from './tensor';
export type { GradHook } from './tensor';
export { tensor, zeros, ones, randn } from './creation';
export type { TensorData, NestedArray, TensorOptions, CreationOptions, RandnOptions } from './creation';
export { noGrad } from './autograd';
export { ops } from './ops';
export type { Ops, AttentionOptions, SoftmaxAttentionOptions } from './ops';
export { CausalLunaState } from './ops/causal';
export type { CausalLunaOptions, CausalLunaStateOptions, CausalActivation } from './ops/causal';
export { gradcheck } from './gradcheck';
export type { GradcheckOptions, GradcheckFn } from './gradcheck';
export { backendInfo, setNumThreads, getNumThreads } from './backend';
export type { BackendInfo, CpuBackendInfo, CudaBackendInfo } from './backend';
export {
  saveSafetensors,
  loadSafetensors,
  serializeSafetensors,
  deserializeSafetensors,
  readSafetensorsHeader,
} from './safetensors';
export type { SaveSafetensorsOptions, LoadSafetensorsOptions, SafetensorsHeader } from './safetensors';
export { optim } from './optim';
export type {
  Optim,
  Optimizer,
  SGD,
  Adam,
  AdamW,
  Schedule,
  LinearWarmupInverseSqrt,
  LinearDecay,
  ParamState,
  SGDOptions,
  AdamOptions,
  ClipGradNormOptions,
  LinearWarmupInverseSqrtOptions,
  LinearDecayOptions,
} from './optim';
export { nn } from './nn';
export type * from './nn';
export { manualSeed } from './seed';
export { poolStats, emptyPool } from './pool';
export type { PoolStats } from './pool';
export { tidy, keep, memoryStats, resetPeakBytes } from './memory';
export { emptyCache, synchronize, defaultDevice } from './device';
export type { CudaMemoryStats } from './device';
export type { MemoryStats } from './memory';
