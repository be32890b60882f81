/**
 * The differentiable ops, gathered into the `ops` namespace object of the public API.
 *
 * @packageDocumentation
 */
import { packAttention, unpackAttention } from './attention';
import { linearOps } from './linear';
import { elementwiseOps } from './elementwise';
import { shapeOps } from './shape';
import { nnOps } from './nn-functional';
import { causalOps } from './causal';
import { softmaxOps } from './softmax-attention';

export type { AttentionOptions } from './attention';
export type { SoftmaxAttentionOptions } from './softmax-attention';

/**
 * The differentiable ops. Each validates its arguments, runs the addon's kernel for the
 * tensors' device, and records its backward when an input requires grad.
 *
 * @namespace
 */
export const ops = Object.freeze({
  /** Pack attention: q [B,h,l,dh], k,v [B,h,m,dh] -> [B,h,l,dh]. See {@link packAttention}. */
  packAttention,
  /** Unpack attention: q [B,h,n,dh], k,v [B,h,l,dh] -> [B,h,n,dh]. See {@link unpackAttention}. */
  unpackAttention,
  ...linearOps,
  ...elementwiseOps,
  ...shapeOps,
  ...nnOps,
  ...causalOps,
  ...softmaxOps,
});

/** The type of the `ops` namespace object. */
export type Ops = typeof ops;
