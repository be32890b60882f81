/**
 * The Tensor class and the internal accessors ops use to reach a tensor's buffer.
 *
 * A tensor is a view of a reference-counted {@link Storage}: `detach()` shares the storage,
 * autograd nodes retain the storages they save, and `dispose()` drops this tensor's reference.
 * When the last reference goes, a pooled buffer returns to the pool (lib/pool.ts) for the next
 * op, and a device block returns to the CUDA caching allocator (lib/device.ts). `tidy()` scopes dispose what they created; a tensor that is garbage collected
 * without `dispose()` is counted gone and, within limits, has its reference released for it
 * (lib/memory.ts explains the limits).
 *
 * @packageDocumentation
 */
import {
  LunaError,
  checkBoolean,
  checkFunction,
  describe,
  formatShape,
  mismatch,
} from './errors';
import {
  AnyTypedArray,
  DType,
  Device,
  checkDevice,
  isFloatDType,
  sameShape,
  shapeSize,
} from './dtype';
import { inspect } from 'node:util';
import type { GradNode } from './autograd';
import { attachNode, runBackward, shouldRecord } from './autograd';
import { DeviceArray } from './native';
import { download, downloadAsync, isDeviceArray, upload } from './device';
import { giveBack } from './pool';
import { markKept, noteStorageCreated, noteStorageReleased, noteTensorCreated, noteTensorDisposed } from './memory';
import type { Ticket } from './memory';

// Node 20.4+ defines Symbol.dispose; older runtimes (and some bundlers' shims) do not. Define it
// as the registered symbol Node itself uses, so `using` and Node's own code agree with us. This
// must run before the Tensor class below evaluates its `[Symbol.dispose]` key.
if (typeof (Symbol as { dispose?: unknown }).dispose !== 'symbol') {
  Object.defineProperty(Symbol, 'dispose', {
    value: Symbol.for('nodejs.dispose'),
    writable: false,
    enumerable: false,
    configurable: false,
  });
}

/**
 * A gradient hook: receives the complete gradient of a tensor during `backward()` and may
 * return a replacement (same shape, dtype and device). Returning nothing keeps the gradient.
 */
export type GradHook = (grad: Tensor) => Tensor | void | undefined | null;

/** What a storage holds: host memory (a typed array) or device memory (lib/device.ts). */
export type TensorBuffer = AnyTypedArray | DeviceArray;

/** A reference-counted buffer shared by a tensor, its detached views and saved-for-backward copies. */
export class Storage {
  private buffer: TensorBuffer | null;
  private refs = 1;

  /** @param data - the buffer; the storage takes ownership of it */
  constructor(data: TensorBuffer) {
    this.buffer = data;
    // liveBytes and peakBytes count host memory; the CUDA allocator keeps its own counters.
    noteStorageCreated(this, isDeviceArray(data) ? 0 : data.byteLength);
  }

  /** The buffer, or null once every reference has been released. */
  get data(): TensorBuffer | null {
    return this.buffer;
  }

  /** Adds a reference (a detached view, a saved tensor) and returns this storage. */
  retain(): this {
    if (this.buffer === null) {
      throw new LunaError('ERR_DISPOSED', 'internal: retain() on a released storage');
    }
    this.refs++;
    return this;
  }

  /** Drops a reference; the last one frees the buffer. Extra calls are ignored. */
  release(): void {
    if (this.refs === 0) return;
    this.refs--;
    if (this.refs === 0) {
      const buffer = this.buffer;
      this.buffer = null;
      // Nothing can reach the buffer any more: let the pool hand it to the next op.
      if (buffer !== null && isDeviceArray(buffer)) {
        // Back to the caching allocator now, not when the collector finds the object.
        noteStorageReleased(this, 0);
        buffer.release();
      } else if (buffer !== null) {
        noteStorageReleased(this, buffer.byteLength);
        giveBack(buffer);
      }
    }
  }
}

/** Passed by the internal factories; keeps `new Tensor(...)` out of user code. */
const INTERNAL: unique symbol = Symbol('luna-attention.internal');

/**
 * An n-dimensional array of float32, float64 or bool elements on a device, with autograd.
 * Create tensors with `tensor()`, `zeros()`, `ones()` or `randn()`; ops return new tensors.
 *
 * Metadata (`shape`, `dtype`, `device`, `size`, `isDisposed`) stays readable after
 * `dispose()`; everything that needs the data, or the graph, throws ERR_DISPOSED.
 */
export class Tensor {
  /** @internal the buffer; null after dispose() */
  _storage: Storage | null;
  /** @internal */
  readonly _shape: readonly number[];
  /** @internal */
  readonly _dtype: DType;
  /** @internal */
  readonly _device: Device;
  /** @internal */
  readonly _size: number;
  /** @internal whether gradients flow to (leaf) or through (non-leaf) this tensor */
  _requiresGrad = false;
  /** @internal accumulated gradient of a leaf */
  _grad: Tensor | null = null;
  /** @internal the op that produced this tensor; null for leaves */
  _node: GradNode | null = null;
  /** @internal registered gradient hooks, in registration order */
  _hooks: { fn: GradHook }[] = [];
  /** @internal what the finalization registry holds for this tensor (lib/memory.ts) */
  _ticket: Ticket;

  /**
   * Not for direct use: call `tensor()`, `zeros()`, `ones()` or `randn()`.
   * @internal
   */
  constructor(
    token: typeof INTERNAL,
    storage: Storage,
    shape: readonly number[],
    dtype: DType,
    device: Device,
  ) {
    if (token !== INTERNAL) {
      throw new LunaError(
        'ERR_ARGUMENT',
        'Tensor: the constructor is internal; create tensors with tensor(), zeros(), ones() or randn()',
      );
    }
    this._storage = storage;
    this._shape = Object.isFrozen(shape) ? shape : Object.freeze([...shape]);
    this._dtype = dtype;
    this._device = device;
    this._size = shapeSize(this._shape);
    // Counts the tensor, lets the innermost tidy scope track it, and arranges for its storage
    // reference to be released should it be garbage collected without dispose().
    this._ticket = noteTensorCreated(this, storage, storage.data as TensorBuffer);
  }

  /** The dimensions, outermost first; `[]` for a scalar. The array is frozen. */
  get shape(): readonly number[] {
    return this._shape;
  }

  /** The element type. */
  get dtype(): DType {
    return this._dtype;
  }

  /** The device the data lives on. */
  get device(): Device {
    return this._device;
  }

  /** The number of elements (the product of the shape; 1 for a scalar). */
  get size(): number {
    return this._size;
  }

  /** The number of dimensions. */
  get rank(): number {
    return this._shape.length;
  }

  /** True once `dispose()` has been called. */
  get isDisposed(): boolean {
    return this._storage === null;
  }

  /** True for tensors not produced by a recorded op (user-created ones, and detached ones). */
  get isLeaf(): boolean {
    return this._node === null;
  }

  /**
   * Whether gradients are computed for this tensor. Settable on leaves only, and only to true
   * on float tensors; to stop gradients through a computed tensor use `detach()`.
   */
  get requiresGrad(): boolean {
    return this._requiresGrad;
  }

  /** Marks a leaf as needing gradients (float tensors only); see the getter. */
  set requiresGrad(value: boolean) {
    checkBoolean('Tensor.requiresGrad', 'value', value);
    assertLive(this, 'Tensor.requiresGrad');
    if (this._node !== null) {
      throw new LunaError(
        'ERR_ARGUMENT',
        'Tensor.requiresGrad: can only be set on leaf tensors; this one was computed by ' +
          `${this._node.name} (use detach() for a leaf copy that shares the data)`,
      );
    }
    if (value && !isFloatDType(this._dtype)) {
      throw mismatch(
        'ERR_DTYPE',
        'Tensor.requiresGrad',
        'dtype',
        'float32 or float64 (only float tensors have gradients)',
        this._dtype,
      );
    }
    this._requiresGrad = value;
  }

  /**
   * The gradient accumulated by `backward()` into this leaf, or null. Backward adds into an
   * existing gradient in place; set it to null to start afresh (what an optimizer's
   * zeroGrad does). A tensor assigned here must match this tensor's shape, dtype and device.
   */
  get grad(): Tensor | null {
    return this._grad;
  }

  /** Replaces the accumulated gradient (null clears it); must match shape, dtype and device. */
  set grad(value: Tensor | null) {
    if (value === null) {
      this._grad = null;
      return;
    }
    if (!(value instanceof Tensor)) {
      throw mismatch('ERR_ARGUMENT', 'Tensor.grad', 'value', 'a Tensor or null', describe(value));
    }
    assertLive(value, 'Tensor.grad', 'value');
    checkSameMeta('Tensor.grad', 'value', value, this);
    // A gradient outlives the tidy scope it was made in: the leaf owns it now.
    markKept(value);
    this._grad = value;
  }

  /**
   * A copy of the data as a typed array (Float32Array, Float64Array, Uint8Array for bool,
   * Int32Array for int32). For a CUDA tensor this waits for the queued GPU work and blocks the
   * thread meanwhile; prefer {@link Tensor.data} in a server.
   */
  dataSync(): AnyTypedArray {
    const data = assertLive(this, 'dataSync').data as TensorBuffer;
    return isDeviceArray(data) ? download('dataSync', data, this._dtype) : data.slice();
  }

  /**
   * The asynchronous form of {@link Tensor.dataSync}; resolves to a copy of the data. For a CUDA
   * tensor the copy is queued at once (so later writes do not show in it) and the wait for the
   * GPU happens off the event loop.
   */
  data(): Promise<AnyTypedArray> {
    // Validate synchronously and start the copy now, so a dispose() right after the call cannot
    // race with the read.
    try {
      const storage = assertLive(this, 'data');
      const data = storage.data as TensorBuffer;
      if (!isDeviceArray(data)) return Promise.resolve(data.slice());
      // Keep the block alive (not handed to another tensor) until the copy is done.
      storage.retain();
      const pending = downloadAsync('data', data, this._dtype);
      return pending.finally(() => storage.release());
    } catch (err) {
      return Promise.reject(err);
    }
  }

  /**
   * This tensor on `device`: itself when it is there already, else a copy (the only way data
   * moves between devices; ops never move it implicitly). Gradients flow back through the copy
   * to this tensor. float64 tensors stay on the CPU (ERR_DTYPE for `'cuda'`).
   */
  to(device: Device): Tensor {
    const storage = assertLive(this, 'to');
    const target = checkDevice('to', 'device', device);
    if (target === this._device) return this;
    const data = storage.data as TensorBuffer;
    const moved = isDeviceArray(data) ? download('to', data, this._dtype) : upload('to', data, this._dtype);
    const out = new Tensor(INTERNAL, new Storage(moved), this._shape, this._dtype, target);
    if (shouldRecord([this])) {
      const source = this._device;
      attachNode(out, 'to', [this], (g) => [g.to(source)], () => {});
    }
    return out;
  }

  /** A new leaf that shares this tensor's data but not its graph (requiresGrad false). */
  detach(): Tensor {
    const storage = assertLive(this, 'detach');
    return new Tensor(INTERNAL, storage.retain(), this._shape, this._dtype, this._device);
  }

  /**
   * Releases this tensor's data (and its gradient). Idempotent. A detached view or a graph that
   * saved this tensor keeps the data alive until it, too, lets go. The tensor stays in any graph
   * it belongs to, so gradients can still flow through it.
   */
  dispose(): void {
    if (this._storage === null) return;
    noteTensorDisposed(this, this._ticket);
    this._storage.release();
    this._storage = null;
    this._hooks = [];
    if (this._grad !== null) {
      this._grad.dispose();
      this._grad = null;
    }
  }

  /** Same as {@link Tensor.dispose}; lets `using t = ...` dispose the tensor at scope exit. */
  [Symbol.dispose](): void {
    this.dispose();
  }

  /**
   * Computes the gradients of this tensor with respect to every leaf that requires grad and
   * accumulates them into those leaves' `.grad`. `grad` is the gradient of some scalar loss
   * with respect to this tensor; it may be omitted for a one-element tensor (it is then 1).
   * The graph's saved data is released afterwards: a second backward through it throws.
   */
  backward(grad?: Tensor): void {
    runBackward([this], [grad], 'backward');
  }

  /**
   * Registers `fn` to be called with this tensor's gradient once it is complete during
   * backward. `fn` may return a replacement gradient. On a leaf, hooks run before the gradient
   * is accumulated into `.grad`. Returns a function that unregisters the hook.
   */
  registerHook(fn: GradHook): () => void {
    checkFunction('registerHook', 'fn', fn);
    assertLive(this, 'registerHook');
    if (!this._requiresGrad) {
      throw new LunaError(
        'ERR_ARGUMENT',
        'registerHook: the tensor does not require grad, so the hook would never run',
      );
    }
    const entry = { fn };
    this._hooks.push(entry);
    return () => {
      const i = this._hooks.indexOf(entry);
      if (i >= 0) this._hooks.splice(i, 1);
    };
  }

  /** A short description such as `Tensor(float32, [2,3], cpu, requiresGrad)`. */
  toString(): string {
    const flags = [this._requiresGrad ? 'requiresGrad' : '', this.isDisposed ? 'disposed' : '']
      .filter((s) => s !== '')
      .join(', ');
    return `Tensor(${this._dtype}, ${formatShape(this._shape)}, ${this._device}${flags ? `, ${flags}` : ''})`;
  }

  /** @internal How Node's util.inspect and console.log show a tensor. */
  [inspect.custom](): string {
    const data = this._storage?.data;
    // A CUDA tensor's values would need a device copy; printing must not synchronise the GPU.
    if (data === null || data === undefined || isDeviceArray(data)) return this.toString();
    const head = Array.from(data.subarray(0, 6), (x) => String(x)).join(', ');
    return `${this.toString()} [${head}${data.length > 6 ? ', ...' : ''}]`;
  }
}

/**
 * Internal: makes a leaf tensor around `data` (taking ownership of the buffer).
 * The caller guarantees that `data.length` matches the shape and the buffer type the dtype.
 */
export function makeTensor(
  data: TensorBuffer,
  shape: readonly number[],
  dtype: DType,
  device: Device = 'cpu',
): Tensor {
  if (device === 'cuda' && !isDeviceArray(data)) {
    // Small tensors built on the host for a cuda computation (masks, counts) are copied over
    // here, once, so no caller can label host memory as device memory.
    const moved = upload('tensor', data, dtype);
    giveBack(data);
    data = moved;
  } else if (device === 'cpu' && isDeviceArray(data)) {
    throw new LunaError('ERR_DEVICE', 'internal: device memory wrapped as a cpu tensor');
  }
  return new Tensor(INTERNAL, new Storage(data), shape, dtype, device);
}

/** Internal: throws ERR_DISPOSED, naming the operation and argument, when `t` was disposed. */
export function assertLive(t: Tensor, where: string, arg = 'tensor'): Storage {
  const storage = t._storage;
  if (storage === null || storage.data === null) {
    throw new LunaError(
      'ERR_DISPOSED',
      `${where}: ${arg} has been disposed (${t.toString()}); it cannot be used any more`,
    );
  }
  return storage;
}

/**
 * Internal accessor for code that reads the values in JS: the tensor's live host buffer (not a
 * copy; ops must not write into inputs). Throws ERR_DISPOSED naming the op and the argument, and
 * ERR_DEVICE for a CUDA tensor (such code runs on the CPU only; the message says how to move it).
 */
export function tensorData(t: Tensor, where: string, arg = 'tensor'): AnyTypedArray {
  const data = assertLive(t, where, arg).data as TensorBuffer;
  if (isDeviceArray(data)) {
    throw new LunaError(
      'ERR_DEVICE',
      `${where}: ${arg} is a cuda tensor, and this runs on the CPU only; move it with .to('cpu') first`,
    );
  }
  return data;
}

/** Internal: the float buffer of a float tensor (callers have checked the dtype); host only. */
export function floatData(t: Tensor, where: string, arg = 'tensor'): Float32Array | Float64Array {
  return tensorData(t, where, arg) as Float32Array | Float64Array;
}

/**
 * Internal accessor for ops that hand the buffer to a kernel: a typed array for a CPU tensor, a
 * DeviceArray for a CUDA one (the kernel then runs on the GPU). Typed as a float array because
 * the kernels' argument types are; never index it in JS.
 */
export function nativeData(t: Tensor, where: string, arg = 'tensor'): Float32Array | Float64Array {
  return assertLive(t, where, arg).data as unknown as Float32Array | Float64Array;
}

/** Internal: throws ERR_ARGUMENT unless `value` is a Tensor, and ERR_DISPOSED when it is disposed. */
export function checkTensor(where: string, arg: string, value: unknown): Tensor {
  if (!(value instanceof Tensor)) {
    throw mismatch('ERR_ARGUMENT', where, arg, 'a Tensor', describe(value));
  }
  assertLive(value, where, arg);
  return value;
}

/** Internal: throws unless `a` has the shape (ERR_SHAPE), dtype (ERR_DTYPE) and device (ERR_DEVICE) of `ref`. */
export function checkSameMeta(where: string, arg: string, a: Tensor, ref: Tensor): void {
  if (!sameShape(a._shape, ref._shape)) {
    throw mismatch('ERR_SHAPE', where, `${arg}.shape`, formatShape(ref._shape), formatShape(a._shape));
  }
  if (a._dtype !== ref._dtype) {
    throw mismatch('ERR_DTYPE', where, `${arg}.dtype`, ref._dtype, a._dtype);
  }
  if (a._device !== ref._device) {
    throw mismatch('ERR_DEVICE', where, `${arg}.device`, ref._device, a._device);
  }
}

/**
 * Internal: a new leaf tensor of `shape` over `t`'s storage (no copy, no graph): what reshape
 * returns. The caller guarantees that `shape` has `t`'s element count.
 */
export function viewOf(t: Tensor, shape: readonly number[]): Tensor {
  const storage = assertLive(t, 'viewOf');
  return new Tensor(INTERNAL, storage.retain(), shape, t._dtype, t._device);
}
