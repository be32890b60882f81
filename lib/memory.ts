/**
 * Memory management beyond `dispose()`: `tidy` scopes, `keep`, the live-tensor counters behind
 * `memoryStats`, and the safety net that frees tensors nobody disposed.
 *
 * Where memory lives:
 * - Every tensor's data is a JS typed array (an ArrayBuffer), so V8 already counts it as
 *   external memory and its garbage collector feels the pressure of it. Large buffers are
 *   recycled through the pool (lib/pool.ts) once their last reference is released.
 * - The native kernels allocate only short-lived scratch space (std::vector inside one call),
 *   plus bounded per-thread caches in the GEMM: its packing buffers, and the packed right-hand
 *   operand, which is kept between calls only while it has at most 2^24 elements (64 MiB in
 *   float32) and freed when its thread ends. Nothing else native outlives a call, so the addon
 *   reports nothing through napi_adjust_external_memory; a future long-lived native allocation
 *   must be reported there.
 *
 * The safety net, and its limit. A FinalizationRegistry keeps the counters honest when tensors
 * are garbage collected without `dispose()`, and releases a forgotten tensor's reference to its
 * storage so that a pooled buffer returns to the pool. But a registry holds its "held values"
 * strongly until its cleanup callback runs, and that callback runs only when the event loop
 * gets control: never during a synchronous training loop. Holding every forgotten tensor's
 * buffer until then would turn "forgot to dispose" from "the garbage collector frees it" into
 * unbounded growth inside such a loop. So only pooled buffers are held for the pool, and only
 * up to a fixed number of bytes ({@link HOLD_LIMIT_BYTES}); beyond it (and for small buffers)
 * a forgotten tensor's buffer is left to the garbage collector, as before. (A WeakRef would not
 * help: V8 keeps a WeakRef's target alive until the current job ends, which in a synchronous
 * loop is never.) Each tensor's reference is released at most once: `dispose()` unregisters it.
 * Collection is not prompt in any case: call `dispose()` or use `tidy()` where memory matters.
 *
 * @packageDocumentation
 */
import { LunaError, checkFunction, describe, mismatch } from './errors';
import { CudaMemoryStats, cudaMemoryStats, resetCudaPeak } from './device';
import { isRecyclable, poolStats, type PoolStats } from './pool';
import type { AnyTypedArray } from './dtype';
import type { Tensor } from './tensor';

/** Anything whose one reference can be released: a tensor's storage. */
interface Releasable {
  release(): void;
}

/** A graph node as this module sees it (see lib/autograd.ts). */
interface NodeLike {
  released: boolean;
  readonly inputs: readonly TensorLike[];
  release(): void;
}

/** A tensor as this module sees it (a runtime import of Tensor would make a cycle with tensor.ts). */
interface TensorLike {
  _node: NodeLike | null;
  dispose(): void;
}

/** What memoryStats() reports. */
export interface MemoryStats {
  /** Tensors created and neither disposed nor garbage collected yet. */
  liveTensors: number;
  /** Buffers still referenced by a tensor, a detached view or a graph node. */
  liveStorages: number;
  /** The bytes of those buffers in host memory (device memory is counted in `cuda`). */
  liveBytes: number;
  /** The most `liveBytes` has been since the start or the last {@link resetPeakBytes}. */
  peakBytes: number;
  /**
   * The CUDA caching allocator: bytes in device blocks handed to tensors (`allocatedBytes`), held
   * from the driver including cached free blocks (`reservedBytes`), the peak, the cached blocks
   * and how many cudaMalloc/cudaFree calls were made. All zero where CUDA is not used.
   */
  cuda: CudaMemoryStats;
  /** How many `tidy` scopes are open right now. */
  tidyDepth: number;
  /** The buffer pool's counters (see poolStats). */
  pool: PoolStats;
}

let liveTensors = 0;
let liveStorages = 0;
let liveBytes = 0;
let peakBytes = 0;

/**
 * The most bytes of pooled buffers that registrations may hold for the pool on behalf of
 * tensors not yet disposed (see the module comment). Live tensors count too, so in a program
 * with more live pooled data than this, forgotten tensors simply go to the garbage collector.
 */
export const HOLD_LIMIT_BYTES = 256 * 1024 * 1024;
let heldBytes = 0;

/**
 * What the registry keeps for one tensor: its storage, when its buffer is worth returning to
 * the pool (and the hold limit allows), else nothing.
 */
export interface Ticket {
  storage: Releasable | null;
  bytes: number;
}
const NO_HOLD: Ticket = Object.freeze({ storage: null, bytes: 0 }) as Ticket;

/** Every tensor object ever created (weakly): a brand check that needs no import of Tensor. */
const tensors = new WeakSet<object>();
/** Tensors that no tidy scope may dispose: parameters, gradients, what keep() was given. */
const kept = new WeakSet<object>();

/** One open tidy scope: the tensors created while it was the innermost one. */
interface Scope {
  tracked: Set<TensorLike>;
}
const scopes: Scope[] = [];

// A tensor collected without dispose(): count it gone, and release the reference it held when
// the ticket kept its storage.
const tensorRegistry = new FinalizationRegistry<Ticket>((ticket) => {
  liveTensors--;
  if (ticket.storage !== null) {
    heldBytes -= ticket.bytes;
    ticket.storage.release();
  }
});

// A storage collected while still referenced (by forgotten tensors or graph nodes that never
// ran): its buffer went with it, so stop counting it. The held value is a number, never the
// storage, so this registry keeps nothing alive.
const storageRegistry = new FinalizationRegistry<number>((bytes) => {
  liveStorages--;
  liveBytes -= bytes;
});

/**
 * Internal (tensor.ts): a tensor was created over `storage`, holding one reference to its
 * buffer `data`. Returns the ticket to hand back to {@link noteTensorDisposed}.
 */
export function noteTensorCreated(t: TensorLike, storage: Releasable, data: AnyTypedArray | object): Ticket {
  liveTensors++;
  tensors.add(t);
  let ticket = NO_HOLD;
  // Device memory is not held here: its JS object's finalizer gives the block back.
  if (ArrayBuffer.isView(data) && isRecyclable(data as AnyTypedArray) && heldBytes + data.byteLength <= HOLD_LIMIT_BYTES) {
    ticket = { storage, bytes: data.byteLength };
    heldBytes += data.byteLength;
  }
  tensorRegistry.register(t, ticket, t);
  if (scopes.length > 0) scopes[scopes.length - 1].tracked.add(t);
  return ticket;
}

/** Internal (tensor.ts): `t` was disposed; the caller releases its reference, not the registry. */
export function noteTensorDisposed(t: TensorLike, ticket: Ticket): void {
  liveTensors--;
  heldBytes -= ticket.bytes;
  tensorRegistry.unregister(t);
  // An open scope need not remember a tensor that is gone, unless its graph node still holds
  // data the scope may have to free (see release()). Keeps a long scope from collecting every
  // tensor object it ever saw.
  if (scopes.length > 0 && (t._node === null || t._node.released)) {
    for (const scope of scopes) scope.tracked.delete(t);
  }
}

/** Internal (tensor.ts): a storage of `bytes` was created. */
export function noteStorageCreated(storage: object, bytes: number): void {
  liveStorages++;
  liveBytes += bytes;
  if (liveBytes > peakBytes) peakBytes = liveBytes;
  storageRegistry.register(storage, bytes, storage);
}

/** Internal (tensor.ts): the last reference to a storage of `bytes` was released. */
export function noteStorageReleased(storage: object, bytes: number): void {
  liveStorages--;
  liveBytes -= bytes;
  storageRegistry.unregister(storage);
}

/**
 * Internal: marks `t` as owned by something longer-lived than any tidy scope (a module's
 * parameter, a leaf's gradient), so that no scope disposes it.
 */
export function markKept(t: object): void {
  kept.add(t);
}

/**
 * Exempts `t` from every `tidy` scope: it will not be disposed when the scope that created it
 * ends (dispose it yourself when done). Returns `t`.
 *
 * Parameters of modules and the gradients that `backward()` leaves in leaves' `.grad` are kept
 * automatically.
 */
export function keep<T extends Tensor>(t: T): T {
  if (typeof t !== 'object' || t === null || !tensors.has(t)) {
    throw mismatch('ERR_ARGUMENT', 'keep', 't', 'a Tensor', describe(t));
  }
  kept.add(t);
  return t;
}

/** The tensors of this scope that appear in `value` (itself, or inside arrays, plain objects, Maps and Sets). */
function returnedTensors(value: unknown, scope: Scope): Set<TensorLike> {
  const found = new Set<TensorLike>();
  const seen = new Set<object>();
  const stack: unknown[] = [value];
  while (stack.length > 0) {
    const v = stack.pop();
    if (typeof v !== 'object' || v === null || seen.has(v)) continue;
    seen.add(v);
    if (tensors.has(v)) {
      if (scope.tracked.has(v as TensorLike)) found.add(v as TensorLike);
      continue;
    }
    if (Array.isArray(v)) {
      for (const x of v) stack.push(x);
    } else if (v instanceof Map) {
      for (const x of v.values()) stack.push(x);
    } else if (v instanceof Set) {
      for (const x of v) stack.push(x);
    } else {
      const proto = Object.getPrototypeOf(v) as unknown;
      // Only plain objects: a class instance (a Module, say) owns its tensors by other rules.
      if (proto === Object.prototype || proto === null) {
        for (const x of Object.values(v)) stack.push(x);
      }
    }
  }
  return found;
}

/**
 * Disposes what `scope` tracked, except the returned and the kept tensors, and frees the graph
 * nodes that nothing surviving the scope can reach. Why the nodes: a node keeps the data its
 * backward needs until the backward runs, and a branch that no loss depends on (Luna's updated
 * P when only X feeds the loss) never runs it; without this its data would wait for the garbage
 * collector instead of returning to the pool now. Graph edges point from an output to its
 * inputs, so what survives (returned or kept tensors) can only need the nodes it reaches.
 */
function release(scope: Scope, spared: Set<TensorLike>): void {
  const reachable = new Set<TensorLike>();
  const stack: TensorLike[] = [];
  for (const t of scope.tracked) if (spared.has(t) || kept.has(t)) stack.push(t);
  while (stack.length > 0) {
    const t = stack.pop() as TensorLike;
    if (reachable.has(t)) continue;
    reachable.add(t);
    const node = t._node;
    if (node === null || node.released) continue;
    // Tensors created before the scope cannot lead back into it; only this scope's matter.
    for (const input of node.inputs) if (scope.tracked.has(input)) stack.push(input);
  }
  for (const t of scope.tracked) {
    if (spared.has(t) || kept.has(t)) continue;
    t.dispose();
    // An intermediate that a survivor's graph passes through keeps its node (the survivor's
    // backward needs it); only the unreachable ones are freed here.
    const node = t._node;
    if (node !== null && !node.released && !reachable.has(t)) node.release();
  }
}

function isThenable(v: unknown): boolean {
  return (
    (typeof v === 'object' || typeof v === 'function') &&
    v !== null &&
    typeof (v as { then?: unknown }).then === 'function'
  );
}

/**
 * Runs `fn` and disposes every tensor created during the call, except the tensors in its
 * return value (a tensor, or tensors inside returned arrays, plain objects, Maps and Sets) and
 * the kept ones: parameters of modules built inside, gradients that `backward()` stored in
 * leaves' `.grad`, and anything passed to {@link keep}.
 *
 * Scopes nest: what an inner scope returns belongs to the enclosing scope afterwards. If `fn`
 * throws, everything it created is disposed and the error propagates. Only synchronous work is
 * covered: `fn` must not return a Promise (that is refused with ERR_ARGUMENT).
 *
 * Tensors disposed by a scope stay usable in any graph they belong to: a returned loss can
 * still be `backward()`-ed after its intermediates were freed, because the graph holds its own
 * references to the data it needs.
 *
 * @example
 * const loss = tidy(() => ops.crossEntropy(model.forward(tokens), targets));
 * loss.backward();
 * loss.dispose();
 */
export function tidy<T>(fn: () => T): T {
  checkFunction('tidy', 'fn', fn);
  const scope: Scope = { tracked: new Set() };
  scopes.push(scope);
  let result: T;
  try {
    result = fn();
  } catch (err) {
    closeScope(scope);
    moveKept(scope);
    release(scope, new Set());
    throw err;
  }
  closeScope(scope);
  if (isThenable(result)) {
    moveKept(scope);
    release(scope, new Set());
    throw new LunaError(
      'ERR_ARGUMENT',
      'tidy: fn returned a Promise; tidy covers synchronous work only (tensors used after an ' +
        'await would already be disposed). Call tidy inside the async function instead.',
    );
  }
  const spared = returnedTensors(result, scope);
  const outer = scopes.length > 0 ? scopes[scopes.length - 1] : null;
  if (outer !== null) {
    // What this scope returns is now the enclosing scope's to free (unless that returns it
    // too). Kept tensors move up as well, not to be freed but so that the enclosing scope
    // still sees them as roots when it decides which graph nodes are unreachable.
    for (const t of scope.tracked) if (spared.has(t) || kept.has(t)) outer.tracked.add(t);
  }
  release(scope, spared);
  return result;
}

/** Hands the kept tensors of a failed scope to the enclosing one (see the end of tidy). */
function moveKept(scope: Scope): void {
  const outer = scopes.length > 0 ? scopes[scopes.length - 1] : null;
  if (outer !== null) for (const t of scope.tracked) if (kept.has(t)) outer.tracked.add(t);
}

function closeScope(scope: Scope): void {
  const i = scopes.lastIndexOf(scope);
  // Inner scopes always close first (tidy is synchronous), so this is the top of the stack.
  if (i >= 0) scopes.splice(i, 1);
}

/**
 * Counters of the memory the library holds: live tensors, the buffers behind them, open tidy
 * scopes and the buffer pool. A steadily growing `liveTensors` in a loop means tensors that
 * are neither disposed nor returned from a tidy scope.
 */
export function memoryStats(): MemoryStats {
  return { liveTensors, liveStorages, liveBytes, peakBytes, cuda: cudaMemoryStats(), tidyDepth: scopes.length, pool: poolStats() };
}

/**
 * Starts a new peak: `memoryStats().peakBytes` becomes the bytes live now, and from then on
 * records the most held until the next reset (e.g. the peak of one training step).
 */
export function resetPeakBytes(): void {
  peakBytes = liveBytes;
  resetCudaPeak();
}
