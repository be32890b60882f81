/**
 * Types of the addon functions behind the dense ops (linear algebra, elementwise, nn
 * building blocks). Each family owns its interface; lib/native.ts merges them into NativeAddon.
 *
 * @packageDocumentation
 */

/** GEMM family (native/bindings/gemm_binding.cc). */
// eslint-disable-next-line @typescript-eslint/no-empty-interface
export interface GemmNative {}

/** Elementwise, reduction and layout family (native/bindings/elementwise_binding.cc). */
// eslint-disable-next-line @typescript-eslint/no-empty-interface
export interface ElementwiseNative {}

/** nn building blocks (native/bindings/nn_binding.cc). */
// eslint-disable-next-line @typescript-eslint/no-empty-interface
export interface NnNative {}
