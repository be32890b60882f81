/**
 * Creating tensors: `tensor()` from JS data, `zeros()`, `ones()` and the seedable `randn()`.
 *
 * @packageDocumentation
 */
import {
  LunaError,
  checkBoolean,
  checkInteger,
  checkOptions,
  describe,
  formatShape,
  mismatch,
} from './errors';
import {
  AnyTypedArray,
  DType,
  Device,
  allocate,
  checkDType,
  checkShape,
  dtypeOfArray,
  isFloatDType,
} from './dtype';
import { Tensor, makeTensor } from './tensor';
import { resolveDevice } from './device';
import { Rng, randomSeed } from './random';

/** Nested arrays of numbers (or booleans for bool tensors), any depth. */
export interface NestedArray<T> extends ReadonlyArray<T | NestedArray<T> | ArrayLike<T>> {}

/** What `tensor()` accepts: a number or boolean (a scalar), a typed array, or (nested) arrays. */
export type TensorData =
  | number
  | boolean
  | Float32Array
  | Float64Array
  | Uint8Array
  | Int32Array
  | ArrayLike<number>
  | NestedArray<number>
  | NestedArray<boolean>;

/** Options of `tensor()`. */
export interface TensorOptions {
  /** The shape; required only to give flat data more than one dimension. */
  shape?: readonly number[];
  /** Default: the typed array's own dtype (Float32Array, Float64Array, Uint8Array -> bool, Int32Array -> int32), bool for boolean data, else float32. */
  dtype?: DType;
  /** Default 'cpu'. */
  device?: Device;
  /** Default false; only float tensors may require grad. */
  requiresGrad?: boolean;
}

/** Options of `zeros()` and `ones()`. */
export interface CreationOptions {
  /** Default float32. */
  dtype?: DType;
  /** Default 'cpu'. */
  device?: Device;
  /** Default false. */
  requiresGrad?: boolean;
}

/** Options of `randn()`. */
export interface RandnOptions {
  /** Any safe integer; the same seed gives the same values (float32 rounds the float64 ones). Default: random. */
  seed?: number;
  /** float32 (default) or float64. */
  dtype?: DType;
  /** Default 'cpu'. */
  device?: Device;
  /** Default false. */
  requiresGrad?: boolean;
}

const TENSOR_KEYS = ['shape', 'dtype', 'device', 'requiresGrad'] as const;
const CREATION_KEYS = ['dtype', 'device', 'requiresGrad'] as const;
const RANDN_KEYS = ['seed', 'dtype', 'device', 'requiresGrad'] as const;

function isSequence(x: unknown): x is ArrayLike<unknown> {
  return Array.isArray(x) || (ArrayBuffer.isView(x) && !(x instanceof DataView));
}

/** Reads the common `dtype` / `device` / `requiresGrad` options. */
function commonOptions(
  where: string,
  opts: Record<string, unknown>,
  defaultDType: DType,
): { dtype: DType; device: Device; requiresGrad: boolean } {
  const dtype = opts.dtype === undefined ? defaultDType : checkDType(where, 'options.dtype', opts.dtype);
  const device = resolveDevice(where, 'options.device', opts.device);
  const requiresGrad =
    opts.requiresGrad === undefined ? false : checkBoolean(where, 'options.requiresGrad', opts.requiresGrad);
  if (requiresGrad && !isFloatDType(dtype)) {
    throw mismatch(
      'ERR_DTYPE',
      where,
      'options.dtype',
      'float32 or float64 when requiresGrad is true',
      dtype,
    );
  }
  return { dtype, device, requiresGrad };
}

function finish(data: AnyTypedArray, shape: readonly number[], dtype: DType, device: Device, requiresGrad: boolean): Tensor {
  // A cuda tensor is built on the host; makeTensor copies it over once.
  const t = makeTensor(data, shape, dtype, device);
  t._requiresGrad = requiresGrad;
  return t;
}

/**
 * Writes element `i` of `out`, checking that the JS value suits the dtype: float tensors take
 * numbers (NaN and infinities included); bool tensors take true/false/0/1, so that a stray 2 or
 * 0.5 in a mask is an error instead of a silent "truthy"; int32 tensors take integers in the
 * int32 range, so that a fractional or huge id is an error instead of a silent wrap-around.
 */
function store(where: string, out: AnyTypedArray, dtype: DType, i: number, value: unknown, pathOf: (i: number) => string): void {
  if (dtype === 'bool') {
    if (value === true || value === 1) out[i] = 1;
    else if (value === false || value === 0) out[i] = 0;
    else throw mismatch('ERR_ARGUMENT', where, `data${pathOf(i)}`, 'true, false, 0 or 1 (dtype bool)', describe(value));
    return;
  }
  if (dtype === 'int32') {
    if (typeof value === 'number' && Number.isInteger(value) && value >= -2147483648 && value <= 2147483647) {
      out[i] = value;
      return;
    }
    throw mismatch(
      typeof value === 'boolean' ? 'ERR_DTYPE' : 'ERR_ARGUMENT',
      where,
      `data${pathOf(i)}`,
      'an integer in [-2147483648, 2147483647] (dtype int32)',
      describe(value),
    );
  }
  if (typeof value === 'number') {
    out[i] = value;
    return;
  }
  throw mismatch(
    typeof value === 'boolean' ? 'ERR_DTYPE' : 'ERR_ARGUMENT',
    where,
    `data${pathOf(i)}`,
    `a number (dtype ${dtype})`,
    describe(value),
  );
}

/** Shape of a nested array, read along its first elements (checked for rectangularity later). */
function nestedShape(data: ArrayLike<unknown>): number[] {
  const shape: number[] = [];
  let cur: unknown = data;
  while (isSequence(cur)) {
    shape.push(cur.length);
    if (cur.length === 0) break;
    cur = cur[0];
  }
  return shape;
}

/** Flattens a nested array in row-major order, checking that it is rectangular. */
function flattenNested(where: string, data: ArrayLike<unknown>, shape: readonly number[]): unknown[] {
  const flat: unknown[] = [];
  const walk = (node: unknown, depth: number, path: string): void => {
    if (depth === shape.length) {
      if (isSequence(node)) {
        throw mismatch('ERR_SHAPE', where, `data${path}`, `a scalar (rectangular nested array of shape ${formatShape(shape)})`, `an array of length ${node.length}`);
      }
      flat.push(node);
      return;
    }
    if (!isSequence(node) || node.length !== shape[depth]) {
      const got = isSequence(node) ? `an array of length ${node.length}` : describe(node);
      throw mismatch('ERR_SHAPE', where, `data${path}`, `an array of length ${shape[depth]} (rectangular nested array of shape ${formatShape(shape)})`, got);
    }
    for (let i = 0; i < node.length; i++) walk(node[i], depth + 1, `${path}[${i}]`);
  };
  walk(data, 0, '');
  return flat;
}

/** Converts a flat element index into the `[i][j]...` path messages show. */
function indexPath(shape: readonly number[], flatIndex: number): string {
  if (shape.length <= 1) return `[${flatIndex}]`;
  const idx: number[] = [];
  let rest = flatIndex;
  for (let d = shape.length - 1; d >= 0; d--) {
    idx.unshift(shape[d] === 0 ? 0 : rest % shape[d]);
    rest = shape[d] === 0 ? 0 : Math.floor(rest / shape[d]);
  }
  return idx.map((x) => `[${x}]`).join('');
}

/**
 * Creates a tensor from JS data.
 *
 * - a number or boolean makes a scalar (shape `[]`);
 * - a typed array or flat array makes a 1-D tensor, or takes `options.shape` (the element count
 *   must match);
 * - nested arrays must be rectangular; their nesting is the shape (`options.shape`, if given,
 *   must equal it).
 *
 * The data is always copied. Default dtype: a Float32Array, Float64Array, Uint8Array or
 * Int32Array keeps its own (Uint8Array means bool, Int32Array int32), boolean data is bool,
 * anything else is float32. An int32 tensor takes integers in [-2^31, 2^31 - 1] only (a
 * fraction or an out-of-range value is refused, never truncated) and cannot require grad.
 *
 * @example
 * const q = tensor([[1, 2], [3, 4]], { dtype: 'float64', requiresGrad: true });
 * const mask = tensor([[0, 0, 1]], { dtype: 'bool' });
 */
export function tensor(data: TensorData, options?: TensorOptions): Tensor {
  const where = 'tensor';
  const opts = checkOptions(where, options, TENSOR_KEYS);
  const given = opts.shape === undefined ? null : checkShape(where, 'options.shape', opts.shape);

  let inferredDType: DType = 'float32';
  let shape: readonly number[];
  let values: ArrayLike<unknown>;
  let pathOf: (i: number) => string;

  if (typeof data === 'number' || typeof data === 'boolean') {
    inferredDType = typeof data === 'boolean' ? 'bool' : 'float32';
    shape = given?.shape ?? [];
    if (given !== null && given.size !== 1) {
      throw mismatch('ERR_SHAPE', where, 'options.shape', 'a one-element shape for scalar data', formatShape(given.shape));
    }
    values = [data];
    pathOf = () => '';
  } else if (ArrayBuffer.isView(data) && !(data instanceof DataView)) {
    if (data instanceof BigInt64Array || data instanceof BigUint64Array) {
      throw mismatch('ERR_DTYPE', where, 'data', 'a Float32Array, Float64Array, Uint8Array, Int32Array or another numeric typed array', describe(data));
    }
    inferredDType = dtypeOfArray(data) ?? 'float32';
    values = data as unknown as ArrayLike<number>;
    shape = given?.shape ?? checkShape(where, 'data.length', [values.length]).shape;
    pathOf = (i) => indexPath(shape, i);
  } else if (Array.isArray(data)) {
    const nested = nestedShape(data);
    if (nested.length <= 1 && given !== null) {
      // Flat data with an explicit shape.
      shape = given.shape;
      values = data;
    } else {
      const checked = checkShape(where, 'data (its nesting)', nested);
      if (given !== null && formatShape(given.shape) !== formatShape(checked.shape)) {
        throw mismatch('ERR_SHAPE', where, 'options.shape', `${formatShape(checked.shape)} (the shape of the nested data)`, formatShape(given.shape));
      }
      shape = checked.shape;
      values = flattenNested(where, data, shape);
    }
    const first = values.length > 0 ? values[0] : undefined;
    inferredDType = typeof first === 'boolean' ? 'bool' : 'float32';
    pathOf = (i) => indexPath(shape, i);
  } else {
    throw mismatch('ERR_ARGUMENT', where, 'data', 'a number, a boolean, a typed array or a (nested) array', describe(data));
  }

  const { dtype, device, requiresGrad } = commonOptions(where, opts, inferredDType);
  const size = checkShape(where, 'shape', shape).size;
  if (values.length !== size) {
    throw mismatch('ERR_SHAPE', where, 'data.length', `${size} (the element count of shape ${formatShape(shape)})`, String(values.length));
  }
  const out = allocate(where, dtype, size);
  if (
    (isFloatDType(dtype) && (values instanceof Float32Array || values instanceof Float64Array)) ||
    (dtype === 'int32' && values instanceof Int32Array)
  ) {
    // Fast path: typed-to-typed copy, no per-element checks needed.
    out.set(values);
  } else {
    for (let i = 0; i < size; i++) store(where, out, dtype, i, values[i], pathOf);
  }
  return finish(out, shape, dtype, device, requiresGrad);
}

function constant(where: string, shape: readonly number[], options: CreationOptions | undefined, value: number): Tensor {
  const opts = checkOptions(where, options, CREATION_KEYS);
  const checked = checkShape(where, 'shape', shape);
  const { dtype, device, requiresGrad } = commonOptions(where, opts, 'float32');
  const data = allocate(where, dtype, checked.size);
  if (value !== 0) data.fill(value);
  return finish(data, checked.shape, dtype, device, requiresGrad);
}

/** A tensor of zeros. `shape` is an array of non-negative integers; dtype defaults to float32. */
export function zeros(shape: readonly number[], options?: CreationOptions): Tensor {
  return constant('zeros', shape, options, 0);
}

/** A tensor of ones (true for bool). `shape` is an array of non-negative integers; dtype defaults to float32. */
export function ones(shape: readonly number[], options?: CreationOptions): Tensor {
  return constant('ones', shape, options, 1);
}

/**
 * A tensor of standard normal samples (float32 or float64). With `seed`, the values are
 * reproducible, and a float32 tensor holds the float64 tensor's values rounded.
 */
export function randn(shape: readonly number[], options?: RandnOptions): Tensor {
  const where = 'randn';
  const opts = checkOptions(where, options, RANDN_KEYS);
  const checked = checkShape(where, 'shape', shape);
  const seed =
    opts.seed === undefined
      ? randomSeed()
      : checkInteger(where, 'options.seed', opts.seed, Number.MIN_SAFE_INTEGER);
  const { dtype, device, requiresGrad } = commonOptions(where, opts, 'float32');
  if (!isFloatDType(dtype)) {
    throw mismatch('ERR_DTYPE', where, 'options.dtype', 'float32 or float64', dtype);
  }
  const data = allocate(where, dtype, checked.size) as Float32Array | Float64Array;
  new Rng(seed).fillNormal(data);
  return finish(data, checked.shape, dtype, device, requiresGrad);
}

/** Internal: a tensor of standard normal samples with the shape/dtype/device of `like` (used by gradcheck). */
export function randnLike(like: Tensor, rng: Rng): Tensor {
  if (!isFloatDType(like._dtype)) {
    throw new LunaError('ERR_DTYPE', `internal: randnLike on a ${like._dtype} tensor`);
  }
  const data = allocate('randn', like._dtype, like._size) as Float32Array | Float64Array;
  rng.fillNormal(data);
  return makeTensor(data, like._shape, like._dtype, like._device);
}
