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
 * reference to their storage is released (`dispose()`, a graph node freeing what it saved, or
 * the garbage collector taking a tensor nobody disposed: see lib/memory.ts), and only up to a
 * byte budget: `LUNA_POOL_MB` (default 1024).
 *
 * Every allocation is also checked against what can exist (2^31 - 1 elements, and the memory
 * of the machine or `LUNA_MAX_ALLOC_MB`) before it is made; see {@link setAllocationLimit}.
 *
 * @packageDocumentation
 */
import fs from 'node:fs';
import os from 'node:os';
import { LunaError, mismatch } from './errors';
import type { AnyTypedArray, DType } from './dtype';

/** Buffers smaller than this are cheap to allocate; pooling them would only cost bookkeeping. */
const MIN_POOLED_BYTES = 64 * 1024;

function budgetFromEnv(): number {
  const raw = process.env.LUNA_POOL_MB;
  const mb = raw === undefined || raw === '' ? 1024 : Number(raw);
  return Number.isFinite(mb) && mb >= 0 ? mb * 1024 * 1024 : 1024 * 1024 * 1024;
}

const budgetBytes = budgetFromEnv();

/** The element limit of every tensor (dtype.ts's MAX_ELEMENTS; repeated here to keep the imports one-way). */
const MAX_ELEMENTS = 2 ** 31 - 1;

/**
 * The memory of this machine as the process may use it: the physical memory, or the cgroup
 * (container) limit when that is lower.
 */
function machineMemoryBytes(): number {
  let limit = os.totalmem();
  for (const file of ['/sys/fs/cgroup/memory.max', '/sys/fs/cgroup/memory/memory.limit_in_bytes']) {
    try {
      const n = Number(fs.readFileSync(file, 'utf8').trim());
      // "max" (no limit) reads as NaN; cgroup v1 spells "no limit" as a huge number.
      if (Number.isFinite(n) && n > 0 && n < limit) limit = n;
    } catch {
      // Not Linux, or no cgroup file: the physical memory it is.
    }
  }
  return limit;
}

/**
 * The largest single buffer we try to allocate: `LUNA_MAX_ALLOC_MB` when set, else the
 * machine's memory. Why a limit at all: V8 hands out a huge zero-filled ArrayBuffer lazily,
 * so an impossible request (a typo in a shape, a broadcast that multiplies two long dims)
 * "succeeds", and the process is killed by the system's OOM killer later, when an op first
 * writes the pages. Refusing up front turns that into an error the caller can catch.
 */
function allocationLimitFromEnv(): number {
  const raw = process.env.LUNA_MAX_ALLOC_MB;
  const mb = raw === undefined || raw === '' ? NaN : Number(raw);
  return Number.isFinite(mb) && mb > 0 ? mb * 1024 * 1024 : machineMemoryBytes();
}

let allocationLimit = allocationLimitFromEnv();

/**
 * Internal (tests): sets the largest buffer in bytes that may be allocated; null restores the
 * default (LUNA_MAX_ALLOC_MB or the machine's memory). Returns the previous limit.
 */
export function setAllocationLimit(bytes: number | null): number {
  const previous = allocationLimit;
  allocationLimit = bytes === null ? allocationLimitFromEnv() : bytes;
  return previous;
}

function formatBytes(n: number): string {
  if (n >= 2 ** 30) return `${(n / 2 ** 30).toFixed(1)} GiB`;
  if (n >= 2 ** 20) return `${(n / 2 ** 20).toFixed(1)} MiB`;
  return `${n} bytes`;
}

function bytesPerElement(dtype: DType): number {
  return dtype === 'float64' ? 8 : dtype === 'bool' ? 1 : 4;
}

/**
 * Refuses a buffer that cannot exist before anything is allocated: more than 2^31 - 1
 * elements, or more bytes than the allocation limit.
 */
function checkAllocation(where: string, dtype: DType, size: number): void {
  if (!Number.isSafeInteger(size) || size < 0 || size > MAX_ELEMENTS) {
    throw mismatch(
      'ERR_ARGUMENT',
      where,
      'the element count of the result',
      `at most ${MAX_ELEMENTS} (2^31 - 1)`,
      String(size),
    );
  }
  const bytes = size * bytesPerElement(dtype);
  if (bytes > allocationLimit) {
    throw mismatch(
      'ERR_ARGUMENT',
      where,
      'the memory of the result',
      `at most ${formatBytes(allocationLimit)} (the memory this process may use; LUNA_MAX_ALLOC_MB sets it)`,
      `${size} ${dtype} elements = ${formatBytes(bytes)}`,
    );
  }
}
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
  checkAllocation(where, dtype, size);
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

/** True for a buffer the pool would take back (one it allocated, large enough to be worth it). */
export function isRecyclable(buf: AnyTypedArray): boolean {
  return born.has(buf.buffer as ArrayBuffer);
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
