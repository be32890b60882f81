/**
 * Locates and loads the C++ addon, and types its functions (see native/INTERFACE.md).
 *
 * Loading is lazy: importing the package never touches the addon, so `LunaError` and the
 * validation paths work (and report a useful ERR_NATIVE_LOAD) even where no binary fits.
 *
 * @packageDocumentation
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { createRequire } from 'node:module';
import { LunaError } from './errors';
import type { CausalNative, ElementwiseNative, GemmNative, NnNative, SoftmaxNative } from './native-ops';

/** A float buffer as the kernels take it; all float arrays of one call share one type. */
export type FloatArray = Float32Array | Float64Array;

/**
 * A block of device memory owned by a JS object (native/bindings/cuda_binding.cc). Kernels take
 * it wherever they take a typed array, and then run on the GPU. `release()` gives the block back
 * to the caching allocator at once; the garbage collector does it otherwise.
 */
export interface DeviceArray {
  readonly length: number;
  readonly byteLength: number;
  readonly type: 'float32' | 'uint8' | 'int32';
  readonly released: boolean;
  release(): void;
}

/** The CUDA caching allocator's counters. */
export interface NativeCudaMemory {
  allocatedBytes: number;
  reservedBytes: number;
  peakAllocatedBytes: number;
  cachedBlocks: number;
  deviceMallocs: number;
  deviceFrees: number;
}

/** Device memory and copies (native/bindings/cuda_binding.cc). */
export interface CudaNative {
  DeviceArray: new (type: 'float32' | 'uint8' | 'int32', length: number) => DeviceArray;
  cudaUpload(data: Float32Array | Uint8Array | Int32Array): DeviceArray;
  cudaDownload(src: DeviceArray, dst: Float32Array | Uint8Array | Int32Array): void;
  cudaDownloadAsync(src: DeviceArray, dst: Float32Array | Uint8Array | Int32Array): Promise<void>;
  cudaCopy(dst: DeviceArray, src: DeviceArray): void;
  cudaZero(dst: DeviceArray): void;
  cudaSynchronize(): void;
  cudaMemoryStats(): NativeCudaMemory;
  cudaEmptyCache(): void;
  cudaResetPeak(): void;
  cudaDeviceInfo(): { name: string; computeCapability: string; multiprocessors: number; totalMemory: number; emulated: boolean };
}

/** Arguments of the four forward kernels and of `referenceForward`. */
export interface AttentionForwardArgs {
  /** [B,h,lq,dh] */
  q: FloatArray;
  /** [B,h,lk,dh] */
  k: FloatArray;
  /** [B,h,lk,dh]; the same array as `k` for tied key/value */
  v: FloatArray;
  /** [B,lk], 1 = padding, or null for no mask */
  mask: Uint8Array | null;
  /** [B,h,lq,dh], overwritten */
  out: FloatArray;
  /** [B,h,lq], overwritten; -Infinity for a fully masked row */
  lse: FloatArray;
  B: number;
  h: number;
  lq: number;
  lk: number;
  dh: number;
  /** multiplies the logits */
  scale: number;
  /** dropout probability on the attention probabilities, [0, 1); omitted = none */
  dropout?: number;
  /** seed of the dropout mask (non-negative safe integer); required with dropout */
  seed?: number;
}

/** Arguments of the backward kernels: the forward's plus the upstream and output gradients. */
export interface AttentionBackwardArgs extends AttentionForwardArgs {
  /** [B,h,lq,dh] */
  dout: FloatArray;
  /** [B,h,lq,dh], overwritten */
  dq: FloatArray;
  /** [B,h,lk,dh], overwritten; for tied k/v the same array as `dv`, receiving dk + dv */
  dk: FloatArray;
  /** [B,h,lk,dh], overwritten */
  dv: FloatArray;
}

/** What the addon reports about the CPU it runs on. */
export interface NativeCpuInfo {
  isa: 'avx512' | 'avx2' | 'generic';
  avx2: boolean;
  avx512f: boolean;
  fma: boolean;
}

/** What the addon reports about CUDA. */
export interface NativeCudaInfo {
  /** true when the addon was built with the CUDA kernels */
  compiled: boolean;
  /** true when a usable device was found at run time */
  available: boolean;
  deviceCount: number;
  /** why CUDA is not available (empty when it is) */
  reason: string;
}

/** The functions the addon exports (native/INTERFACE.md). All are synchronous. */
export interface NativeAddon extends CudaNative, GemmNative, ElementwiseNative, NnNative, CausalNative, SoftmaxNative {
  packForward(args: AttentionForwardArgs): void;
  unpackForward(args: AttentionForwardArgs): void;
  packBackward(args: AttentionBackwardArgs): void;
  unpackBackward(args: AttentionBackwardArgs): void;
  /** Plain-loop float64 truth for tests; same arguments as the fast kernels. */
  referenceForward(args: AttentionForwardArgs): void;
  referenceBackward(args: AttentionBackwardArgs): void;
  setNumThreads(n: number): void;
  getNumThreads(): number;
  cpuInfo(): NativeCpuInfo;
  cudaInfo(): NativeCudaInfo;
}

/** The functions lib/ itself calls; a binary missing one of them is treated as stale. */
const REQUIRED_FUNCTIONS: readonly (keyof NativeAddon | 'adamStep' | 'sgdStep' | 'normReduce' | 'sumOfSquares' | 'scaleInPlace')[] = [
  'packForward',
  'unpackForward',
  'packBackward',
  'unpackBackward',
  'setNumThreads',
  'getNumThreads',
  'cpuInfo',
  'cudaInfo',
  'gemm',
  'biasAdd',
  'columnSum',
  'elementwiseBinary',
  'stridedCopy',
  'reduceSum',
  'scaleShift',
  'copyBlocks',
  'layerNormForward',
  'layerNormBackward',
  'geluForward',
  'geluBackward',
  'reluForward',
  'reluBackward',
  'dropoutForward',
  'dropoutBackward',
  'embeddingForward',
  'embeddingBackward',
  'crossEntropyForward',
  'crossEntropyBackward',
  // ---- causal (issue 5): causal helper's lines ----
  'causalForward',
  'causalBackward',
  'causalStep',
  // ---- softmax attention (issue 7): softmax helper's lines ----
  'softmaxForward',
  'softmaxBackward',
  // ---- optimizer updates (issue 4) ----
  'adamStep',
  'sgdStep',
  'normReduce',
  'sumOfSquares',
  'scaleInPlace',
  // ---- device memory (issue 4) ----
  'DeviceArray',
  'cudaUpload',
  'cudaDownload',
  'cudaDownloadAsync',
  'cudaCopy',
  'cudaZero',
  'cudaMemoryStats',
  'cudaEmptyCache',
];

/**
 * The oldest Node-API version the addon is built against (binding.gyp and CMakeLists.txt define
 * NAPI_VERSION=8; Node 20 ships 9). The loader refuses an older runtime before trying the binary.
 */
export const MIN_NAPI_VERSION = 8;
const PACKAGE_NAME = 'luna-attention';

let cachedAddon: NativeAddon | null = null;
let cachedError: LunaError | null = null;
let cachedRoot: string | null = null;
let cachedPath: string | null = null;

/** Is `dir` the root of this package (a package.json whose name is luna-attention)? */
function isPackageRoot(dir: string): boolean {
  try {
    const text = fs.readFileSync(path.join(dir, 'package.json'), 'utf8');
    return (JSON.parse(text) as { name?: unknown }).name === PACKAGE_NAME;
  } catch {
    return false;
  }
}

function findUp(start: string): string | null {
  let dir = path.resolve(start);
  for (;;) {
    if (isPackageRoot(dir)) return dir;
    const parent = path.dirname(dir);
    if (parent === dir) return null;
    dir = parent;
  }
}

/**
 * The package root: the nearest directory above this file (lib/ when run from source, dist/cjs/
 * when built) whose package.json is named luna-attention. Where `__dirname` does not exist (an
 * ESM-style transform), walk up from the working directory instead.
 */
export function packageRoot(): string {
  if (cachedRoot !== null) return cachedRoot;
  const here = typeof __dirname === 'string' ? __dirname : undefined;
  const found =
    (here !== undefined ? findUp(here) : null) ??
    findUp(process.cwd()) ??
    (here !== undefined ? path.resolve(here, '..') : process.cwd());
  cachedRoot = found;
  return found;
}

function loadError(summary: string, root: string, cause?: unknown): LunaError {
  const tried = [
    path.join(root, 'build', 'Release'),
    path.join(root, 'build', 'Debug'),
    path.join(root, 'prebuilds', `${process.platform}-${process.arch}`),
  ];
  const causeText =
    cause === undefined ? '' : `\nOriginal error: ${cause instanceof Error ? cause.message : String(cause)}`;
  const message =
    `luna-attention: could not load the native addon: ${summary}\n` +
    `Looked in (through node-gyp-build): ${tried.join(', ')}.${causeText}\n` +
    'A prebuilt binary ships for linux-x64 with glibc 2.34+ and libstdc++ from GCC 12+ (Debian 12, ' +
    'Ubuntu 22.04 or newer). Elsewhere, or if that one does not load, run `npm rebuild ' +
    'luna-attention` (compiles the addon with node-gyp; needs a C++17 toolchain and Python, e.g. ' +
    '`apt-get install build-essential python3`). Use Node.js >= 20 (Node-API ' +
    `${MIN_NAPI_VERSION} or newer). \`npx luna-attention doctor\` shows what was found.`;
  return new LunaError('ERR_NATIVE_LOAD', message, cause === undefined ? undefined : { cause });
}

function tryLoad(): NativeAddon {
  const root = packageRoot();
  const napi = Number(process.versions.napi ?? '0');
  if (!(napi >= MIN_NAPI_VERSION)) {
    throw loadError(
      `this Node.js (${process.version}) offers Node-API ${process.versions.napi ?? 'none'}, ` +
        `but version ${MIN_NAPI_VERSION} or newer is needed`,
      root,
    );
  }
  // Resolve node-gyp-build from the package root rather than from this file, so the same code
  // works from lib/ (tests) and from dist/cjs/ (the published build).
  const requireFromRoot = createRequire(path.join(root, 'package.json'));
  let nodeGypBuild: { resolve(dir: string): string };
  try {
    nodeGypBuild = requireFromRoot('node-gyp-build') as { resolve(dir: string): string };
  } catch (err) {
    throw loadError('the node-gyp-build package is missing (run `npm install`)', root, err);
  }
  // Resolve first and load second (what node-gyp-build itself does in one step), so the path of
  // the binary in use can be reported by `nativeBinaryPath()` and `luna-attention doctor`.
  // LUNA_ADDON names a binary to load instead (another build of the addon: the tests load the
  // CUDA-emulator build this way).
  let file: string;
  const override = process.env.LUNA_ADDON;
  try {
    file = override ? path.resolve(override) : nodeGypBuild.resolve(root);
  } catch (err) {
    throw loadError('no compatible binary was found', root, err);
  }
  let addon: unknown;
  try {
    addon = requireFromRoot(file);
  } catch (err) {
    throw loadError(`the binary ${file} failed to load`, root, err);
  }
  if (addon === null || (typeof addon !== 'object' && typeof addon !== 'function')) {
    throw loadError('the binary loaded but exports nothing', root);
  }
  const missing = REQUIRED_FUNCTIONS.filter(
    (name) => typeof (addon as Record<string, unknown>)[name] !== 'function',
  );
  if (missing.length > 0) {
    throw loadError(
      `the binary lacks ${missing.join(', ')} (it is probably stale, built from older sources)`,
      root,
    );
  }
  cachedPath = file;
  return addon as NativeAddon;
}

/**
 * Returns the addon, loading it on first use. Throws ERR_NATIVE_LOAD (the same error on every
 * later call, so a missing binary does not cost a file-system search per op) when it cannot be
 * loaded.
 */
export function loadNative(): NativeAddon {
  if (cachedAddon !== null) return cachedAddon;
  if (cachedError !== null) throw cachedError;
  try {
    cachedAddon = tryLoad();
    return cachedAddon;
  } catch (err) {
    cachedError =
      err instanceof LunaError
        ? err
        : loadError('unexpected failure', packageRoot(), err);
    throw cachedError;
  }
}

/** Returns the addon, or null where it cannot be loaded (never throws). */
export function tryLoadNative(): NativeAddon | null {
  try {
    return loadNative();
  } catch {
    return null;
  }
}

/** The load error, or null when the addon loaded (or was not tried yet and loads now). */
export function nativeLoadError(): LunaError | null {
  return tryLoadNative() === null ? cachedError : null;
}

/**
 * The absolute path of the binary the loader uses: `prebuilds/<platform>-<arch>/*.node` for a
 * prebuilt binary, `build/Release/luna_attention.node` for one compiled at install time. Loads
 * the addon if needed; null when it cannot be loaded (see {@link nativeLoadError}).
 */
export function nativeBinaryPath(): string | null {
  return tryLoadNative() === null ? null : cachedPath;
}
