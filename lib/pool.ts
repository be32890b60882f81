/**
 * A size-bucketed pool of the large buffers that op outputs and gradients live in.
 *
 * Why: a fresh `new Float32Array(n)` of a few megabytes is zero-filled by V8 and backed by
 * freshly mapped pages, and touching them for the first time costs page faults: about 25 ms
 * per 16 MB on the 2-core dev machine, more than the kernel that fills the buffer. A training
 * step allocates the same sizes step after step, so handing back the buffers of released
 * storages and reusing them removes that cost entirely.
 *
 * Only buffers born here are recycled (a user's own typed array never is), only once the last
 * reference to their storage is released (`dispose()`, or a graph node freeing what it saved),
 * and only up to a byte budget: `LUNA_POOL_MB` (default 1024). Buffers the garbage collector
 * takes instead are simply not reused.
 *
 * @packageDocumentation
 */
import { LunaError } from './errors';
import type { AnyTypedArray, DType } from './dtype';

/** Buffers smaller than this are cheap to allocate; pooling them would only cost bookkeeping. */
const MIN_POOLED_BYTES = 64 * 1024;

function budgetFromEnv(): number {
  const raw = process.env.LUNA_POOL_MB;
  const mb = raw === undefined || raw === '' ? 1024 : Number(raw);
  return Number.isFinite(mb) && mb >= 0 ? mb * 1024 * 1024 : 1024 * 1024 * 1024;
}

const budgetBytes = budgetFromEnv();
const free = new Map<string, AnyTypedArray[]>();
/** Buffers that came from this pool: the only ones it takes back. */
const born = new WeakSet<ArrayBuffer>();
let freeBytes = 0;
let reused = 0;
let created = 0;

function key(dtype: DType, size: number): string {
  return `${dtype}:${size}`;
}

function fresh(dtype: DType, size: number): AnyTypedArray {
  return dtype === 'float32'
    ? new Float32Array(size)
    : dtype === 'float64'
      ? new Float64Array(size)
      : dtype === 'int32'
        ? new Int32Array(size)
        : new Uint8Array(size);
}

/**
 * A buffer of `size` elements of `dtype`. With `zero` it is zero-filled; without, its content
 * is whatever the previous owner left (callers that overwrite every element use that).
 */
export function takeBuffer(where: string, dtype: DType, size: number, zero: boolean): AnyTypedArray {
  const bucket = free.get(key(dtype, size));
  if (bucket !== undefined && bucket.length > 0) {
    const buf = bucket.pop() as AnyTypedArray;
    freeBytes -= buf.byteLength;
    reused++;
    if (zero) buf.fill(0);
    return buf;
  }
  let buf: AnyTypedArray;
  try {
    buf = fresh(dtype, size);
  } catch (err) {
    throw new LunaError(
      'ERR_ARGUMENT',
      `${where}: could not allocate ${size} ${dtype} elements: ${err instanceof Error ? err.message : String(err)}`,
      { cause: err },
    );
  }
  created++;
  if (buf.byteLength >= MIN_POOLED_BYTES) born.add(buf.buffer as ArrayBuffer);
  return buf;
}

/** Takes `buf` back for reuse if it came from the pool and the budget allows; otherwise drops it. */
export function giveBack(buf: AnyTypedArray): void {
  const ab = buf.buffer as ArrayBuffer;
  if (!born.has(ab)) return;
  if (freeBytes + buf.byteLength > budgetBytes) return;
  const dtype: DType =
    buf instanceof Float32Array
      ? 'float32'
      : buf instanceof Float64Array
        ? 'float64'
        : buf instanceof Int32Array
          ? 'int32'
          : 'bool';
  const k = key(dtype, buf.length);
  let bucket = free.get(k);
  if (bucket === undefined) {
    bucket = [];
    free.set(k, bucket);
  }
  bucket.push(buf);
  freeBytes += buf.byteLength;
}

/** What the pool holds and how often it helped. */
export interface PoolStats {
  /** bytes held for reuse right now */
  freeBytes: number;
  /** the most it may hold (LUNA_POOL_MB) */
  budgetBytes: number;
  /** buffers handed out again instead of allocated */
  reused: number;
  /** buffers allocated fresh */
  created: number;
}

/** Counters of the buffer pool (for tests and the memory report). */
export function poolStats(): PoolStats {
  return { freeBytes, budgetBytes, reused, created };
}

/** Drops every buffer the pool holds, so the garbage collector can return the memory. */
export function emptyPool(): void {
  free.clear();
  freeBytes = 0;
}
