/**
 * What the native backend offers, and its CPU thread count.
 *
 * @packageDocumentation
 */
import { LunaError, checkPositiveInt } from './errors';
import { loadNative } from './native';

/** The CPU side of {@link backendInfo}. */
export interface CpuBackendInfo {
  /** The widest instruction set the kernels use on this machine. */
  isa: 'avx512' | 'avx2' | 'generic';
  /** Threads the CPU kernels use (see {@link setNumThreads}). */
  threads: number;
  avx2: boolean;
  avx512f: boolean;
  fma: boolean;
}

/** The CUDA side of {@link backendInfo}. */
export interface CudaBackendInfo {
  /** The addon was built with the CUDA kernels. */
  compiled: boolean;
  /** A usable device was found at run time. */
  available: boolean;
  deviceCount: number;
  /** Why CUDA is unavailable; empty when it is available. */
  reason: string;
  /** The device, when available: its name, compute capability, SM count and memory. */
  device: { name: string; computeCapability: string; multiprocessors: number; totalMemory: number; emulated: boolean } | null;
}

/** The result of {@link backendInfo}. */
export interface BackendInfo {
  cpu: CpuBackendInfo;
  cuda: CudaBackendInfo;
}

/** An upper bound that keeps a typo (setNumThreads(1e6)) from spawning a million threads. */
const MAX_THREADS = 1024;

/**
 * Describes the loaded native backend: the CPU's instruction set and thread count, and whether
 * CUDA was compiled in and a device found. Loads the addon (throws ERR_NATIVE_LOAD if it cannot).
 */
export function backendInfo(): BackendInfo {
  const addon = loadNative();
  const cpu = addon.cpuInfo();
  const cuda = addon.cudaInfo();
  return {
    cpu: {
      isa: cpu.isa,
      threads: addon.getNumThreads(),
      avx2: Boolean(cpu.avx2),
      avx512f: Boolean(cpu.avx512f),
      fma: Boolean(cpu.fma),
    },
    cuda: {
      compiled: Boolean(cuda.compiled),
      available: Boolean(cuda.available),
      deviceCount: Number(cuda.deviceCount) || 0,
      reason: String(cuda.reason ?? ''),
      device: cuda.available && typeof addon.cudaDeviceInfo === 'function' ? addon.cudaDeviceInfo() : null,
    },
  };
}

/**
 * Sets how many threads the CPU kernels use (a positive integer, at most 1024). The default is
 * the LUNA_NUM_THREADS environment variable, or all cores.
 */
export function setNumThreads(n: number): void {
  checkPositiveInt('setNumThreads', 'n', n, MAX_THREADS);
  const addon = loadNative();
  try {
    addon.setNumThreads(n);
  } catch (err) {
    throw new LunaError(
      'ERR_ARGUMENT',
      `setNumThreads: the native backend refused ${n} threads: ${err instanceof Error ? err.message : String(err)}`,
      { cause: err },
    );
  }
}

/** The number of threads the CPU kernels use. */
export function getNumThreads(): number {
  return loadNative().getNumThreads();
}
