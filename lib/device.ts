/**
 * Devices: which one a tensor lives on, whether CUDA is usable here (and why not), the default
 * device (`LUNA_DEVICE`), and device memory (allocation, copies, the caching allocator's report).
 *
 * One binary serves machines with and without a GPU: the CUDA runtime is linked statically and
 * probed lazily, the first time anything asks about CUDA. Where it is unusable, asking for
 * `'cuda'` throws ERR_DEVICE_UNAVAILABLE with the probe's reason (no driver, no device, a build
 * without CUDA); nothing falls back to the CPU silently.
 *
 * @packageDocumentation
 */
import { LunaError, describe, mismatch } from './errors';
import { DeviceArray, NativeCudaMemory, loadNative, tryLoadNative } from './native';
import type { AnyTypedArray, DType } from './dtype';

/** Where a tensor lives. */
export type Device = 'cpu' | 'cuda';

/** All device names, in the order messages list them. */
export const DEVICES: readonly Device[] = ['cpu', 'cuda'];

/** What the CUDA probe found: `available` with a device, else the reason in words. */
export function cudaStatus(): { compiled: boolean; available: boolean; reason: string } {
  const addon = tryLoadNative();
  if (addon === null) return { compiled: false, available: false, reason: 'the native addon could not be loaded, so CUDA cannot be probed' };
  try {
    const info = addon.cudaInfo();
    return { compiled: Boolean(info.compiled), available: Boolean(info.available), reason: String(info.reason ?? '') };
  } catch (err) {
    return { compiled: false, available: false, reason: `the CUDA probe failed: ${err instanceof Error ? err.message : String(err)}` };
  }
}

function unavailable(where: string, what: string): LunaError {
  const { reason } = cudaStatus();
  return new LunaError('ERR_DEVICE_UNAVAILABLE', `${where}: ${what} "cuda" is not available: ${reason || 'no usable CUDA device'}`);
}

/**
 * Throws unless `value` names a usable device: an unknown name is ERR_DEVICE, `'cuda'` where
 * CUDA is unusable is ERR_DEVICE_UNAVAILABLE (with the reason).
 */
export function checkDevice(where: string, arg: string, value: unknown): Device {
  if (typeof value !== 'string') {
    throw mismatch('ERR_ARGUMENT', where, arg, `one of ${DEVICES.join(', ')}`, describe(value));
  }
  if (value === 'cpu') return 'cpu';
  if (value === 'cuda') {
    if (!cudaStatus().available) throw unavailable(where, arg);
    return 'cuda';
  }
  throw mismatch('ERR_DEVICE', where, arg, `one of ${DEVICES.join(', ')}`, describe(value));
}

/**
 * The device used when a creation function or module is given none: `LUNA_DEVICE` (`cpu`,
 * `cuda` or `auto`; unset means `cpu`). `auto` picks CUDA when it is usable and the CPU
 * otherwise; `cuda` where CUDA is unusable throws ERR_DEVICE_UNAVAILABLE.
 */
export function defaultDevice(): Device {
  const raw = process.env.LUNA_DEVICE;
  if (raw === undefined || raw === '' || raw === 'cpu') return 'cpu';
  if (raw === 'auto') return cudaStatus().available ? 'cuda' : 'cpu';
  if (raw === 'cuda') {
    if (!cudaStatus().available) throw unavailable('LUNA_DEVICE', 'the default device');
    return 'cuda';
  }
  throw mismatch('ERR_ARGUMENT', 'LUNA_DEVICE', 'the environment variable', 'cpu, cuda or auto', JSON.stringify(raw));
}

/** The device of an options object: `device` when given (checked), else {@link defaultDevice}. */
export function resolveDevice(where: string, arg: string, value: unknown): Device {
  return value === undefined ? defaultDevice() : checkDevice(where, arg, value);
}

/** Turns an error thrown by the addon's CUDA side into LunaError ERR_CUDA (keeping the runtime's name). */
export function cudaError(where: string, err: unknown): LunaError {
  if (err instanceof LunaError) return err;
  const e = err as { message?: string; cudaError?: string };
  const name = typeof e?.cudaError === 'string' ? e.cudaError : 'cudaErrorUnknown';
  const message = typeof e?.message === 'string' ? e.message : String(err);
  const out = new LunaError('ERR_CUDA', `${where}: ${message}`, { cause: err });
  (out as LunaError & { cudaError?: string }).cudaError = name;
  return out;
}

/** True when `data` is device memory rather than a typed array. */
export function isDeviceArray(data: unknown): data is DeviceArray {
  return typeof data === 'object' && data !== null && !ArrayBuffer.isView(data) && 'released' in data;
}

function deviceType(where: string, dtype: DType): 'float32' | 'uint8' | 'int32' {
  if (dtype === 'float32') return 'float32';
  if (dtype === 'bool') return 'uint8';
  if (dtype === 'int32') return 'int32';
  throw mismatch('ERR_DTYPE', where, 'dtype', 'float32 or bool on cuda (float64 tensors live on the CPU)', dtype);
}

/** Device memory for `size` elements of `dtype` (zero-filled when `zero`). */
export function deviceAlloc(where: string, dtype: DType, size: number, zero: boolean): DeviceArray {
  const type = deviceType(where, dtype);
  const addon = loadNative();
  try {
    const d = new addon.DeviceArray(type, size);
    if (zero) addon.cudaZero(d);
    return d;
  } catch (err) {
    throw cudaError(where, err);
  }
}

/** A device copy of a host buffer of `dtype`. */
export function upload(where: string, data: AnyTypedArray, dtype: DType): DeviceArray {
  deviceType(where, dtype);
  try {
    return loadNative().cudaUpload(data as Float32Array | Uint8Array | Int32Array);
  } catch (err) {
    throw cudaError(where, err);
  }
}

function hostArrayFor(dtype: DType, length: number): Float32Array | Uint8Array | Int32Array {
  return dtype === 'bool' ? new Uint8Array(length) : dtype === 'int32' ? new Int32Array(length) : new Float32Array(length);
}

/** A host copy of device memory (waits for the queued work). */
export function download(where: string, data: DeviceArray, dtype: DType): AnyTypedArray {
  const out = hostArrayFor(dtype, data.length);
  try {
    loadNative().cudaDownload(data, out);
  } catch (err) {
    throw cudaError(where, err);
  }
  return out;
}

/** The asynchronous form of {@link download}: the copy is queued now, the wait is off the event loop. */
export async function downloadAsync(where: string, data: DeviceArray, dtype: DType): Promise<AnyTypedArray> {
  const out = hostArrayFor(dtype, data.length);
  let pending: Promise<void>;
  try {
    pending = loadNative().cudaDownloadAsync(data, out);
  } catch (err) {
    throw cudaError(where, err);
  }
  try {
    await pending;
  } catch (err) {
    throw cudaError(where, err);
  }
  return out;
}

/** A device-to-device copy of `src` into new device memory. */
export function deviceClone(where: string, src: DeviceArray, dtype: DType): DeviceArray {
  const out = deviceAlloc(where, dtype, src.length, false);
  try {
    loadNative().cudaCopy(out, src);
  } catch (err) {
    out.release();
    throw cudaError(where, err);
  }
  return out;
}

/** The CUDA caching allocator's report (zeros where CUDA is not compiled in). */
export interface CudaMemoryStats extends NativeCudaMemory {}

/** The CUDA allocator's counters: bytes handed out, held from the driver, peak, cached blocks. */
export function cudaMemoryStats(): CudaMemoryStats {
  const addon = tryLoadNative();
  if (addon === null || typeof addon.cudaMemoryStats !== 'function') return { allocatedBytes: 0, reservedBytes: 0, peakAllocatedBytes: 0, cachedBlocks: 0, deviceMallocs: 0, deviceFrees: 0 };
  return addon.cudaMemoryStats();
}

/** Starts a new CUDA peak (memoryStats().cuda.peakAllocatedBytes), as resetPeakBytes does for the host. */
export function resetCudaPeak(): void {
  const addon = tryLoadNative();
  if (addon !== null && typeof addon.cudaResetPeak === 'function') addon.cudaResetPeak();
}

/**
 * Gives the CUDA allocator's cached blocks back to the driver (what `torch.cuda.empty_cache()`
 * does). Memory of live tensors stays; the next allocations pay for cudaMalloc again.
 */
export function emptyCache(): void {
  const addon = tryLoadNative();
  if (addon === null) return;
  try {
    addon.cudaEmptyCache();
  } catch (err) {
    throw cudaError('emptyCache', err);
  }
}

/** Waits until every queued GPU kernel and copy has finished (for timing; data() waits by itself). */
export function synchronize(): void {
  if (!cudaStatus().available) return;
  try {
    loadNative().cudaSynchronize();
  } catch (err) {
    throw cudaError('synchronize', err);
  }
}
