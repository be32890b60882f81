/**
 * The base of every layer: named parameters and submodules, state dicts with the reference's
 * (fairseq's) names, train/eval mode, dtype, and forward hooks.
 *
 * @packageDocumentation
 */
import { LunaError, checkFunction, checkOptions, describe, formatShape, mismatch } from '../errors';
import { Device, FloatDType, sameShape } from '../dtype';
import { Tensor, assertLive, checkTensor, makeTensor, nativeData } from '../tensor';
import { isDeviceArray, resolveDevice } from '../device';
import { copyBuffer } from '../ops/common';
import { allocate } from '../dtype';
import { Rng, randomSeed } from '../random';
import { markKept } from '../memory';

/** Options every module takes besides its own. */
export interface ModuleOptions {
  /** Parameter dtype: float32 (default) or float64 (for gradchecks and parity tests). */
  dtype?: FloatDType;
  /** Parameter device (default: LUNA_DEVICE, else 'cpu'); 'cuda' needs a usable GPU and float32. */
  device?: Device;
  /** Seed of the parameter initialisation; omitted, a random one is drawn. */
  seed?: number;
}

/** The keys of {@link ModuleOptions}, for modules' own option checks. */
export const MODULE_OPTION_KEYS = ['dtype', 'device', 'seed'] as const;

/** Called after forward with the module, its arguments and its result; may return a replacement result. */
export type ForwardHook = (module: Module, inputs: readonly unknown[], output: unknown) => unknown;
/** Called before forward with the module and its arguments; may return replacement arguments (an array). */
export type ForwardPreHook = (module: Module, inputs: readonly unknown[]) => readonly unknown[] | void | undefined;

/** Resolved common options. */
export interface ResolvedModuleOptions {
  dtype: FloatDType;
  device: Device;
  rng: Rng;
}

/** Checks the common module options (the module checks its own keys first). */
export function resolveModuleOptions(where: string, opts: Record<string, unknown>): ResolvedModuleOptions {
  let dtype: FloatDType = 'float32';
  if (opts.dtype !== undefined) {
    if (opts.dtype !== 'float32' && opts.dtype !== 'float64') {
      throw mismatch('ERR_DTYPE', where, 'options.dtype', "'float32' or 'float64'", describe(opts.dtype));
    }
    dtype = opts.dtype;
  }
  const device = resolveDevice(where, 'options.device', opts.device);
  if (device === 'cuda' && dtype === 'float64') {
    throw mismatch('ERR_DTYPE', where, 'options.dtype', "'float32' on cuda (float64 modules run on the CPU only)", 'float64');
  }
  let seed: number;
  if (opts.seed === undefined) seed = randomSeed();
  else if (typeof opts.seed === 'number' && Number.isSafeInteger(opts.seed)) seed = opts.seed;
  else throw mismatch('ERR_ARGUMENT', where, 'options.seed', 'a safe integer', describe(opts.seed));
  return { dtype, device, rng: new Rng(seed) };
}

/**
 * A layer. Subclasses register parameters and submodules in their constructor, in the order the
 * reference registers them, and implement `forward` by calling {@link Module.callForward} so
 * that hooks run.
 */
export abstract class Module {
  /** Parameter dtype. */
  readonly dtype: FloatDType;
  /** Parameter device. */
  readonly device: Device;
  private _training = true;
  private readonly _params = new Map<string, Tensor>();
  private readonly _modules = new Map<string, Module>();
  private readonly _forwardHooks: { fn: ForwardHook }[] = [];
  private readonly _preHooks: { fn: ForwardPreHook }[] = [];

  /** For subclasses: `resolved` is the dtype and device every parameter of the module gets. */
  protected constructor(resolved: { dtype: FloatDType; device: Device }) {
    this.dtype = resolved.dtype;
    this.device = resolved.device;
  }

  /** True in training mode (dropout active), false after `eval()`. */
  get training(): boolean {
    return this._training;
  }

  /** Sets training mode on this module and every submodule; returns this. */
  train(mode = true): this {
    if (typeof mode !== 'boolean') throw mismatch('ERR_ARGUMENT', 'Module.train', 'mode', 'a boolean', describe(mode));
    this._training = mode;
    for (const m of this._modules.values()) m.train(mode);
    return this;
  }

  /** Evaluation mode (dropout off); same as `train(false)`. */
  eval(): this {
    return this.train(false);
  }

  /** Registers a parameter (a leaf that requires grad) under `name`; returns it. */
  protected registerParameter(name: string, t: Tensor): Tensor {
    t.requiresGrad = true;
    // The module owns its parameters: a tidy scope the module was built in must not free them.
    markKept(t);
    this._params.set(name, t);
    return t;
  }

  /** Registers a submodule under `name`; returns it. */
  protected registerModule<M extends Module>(name: string, m: M): M {
    this._modules.set(name, m);
    return m;
  }

  /** `[name, parameter]` pairs of this module and its submodules, with dotted names, in registration order. */
  namedParameters(prefix = ''): [string, Tensor][] {
    const out: [string, Tensor][] = [];
    for (const [name, t] of this._params) out.push([prefix + name, t]);
    for (const [name, m] of this._modules) out.push(...m.namedParameters(`${prefix}${name}.`));
    return out;
  }

  /** Every parameter, in registration order. */
  parameters(): Tensor[] {
    return this.namedParameters().map(([, t]) => t);
  }

  /** `[name, module]` pairs of the direct submodules. */
  children(): [string, Module][] {
    return [...this._modules];
  }

  /**
   * The parameters by their reference (fairseq) names. The tensors are the parameters
   * themselves (not copies): save them, do not write into them.
   */
  stateDict(): Record<string, Tensor> {
    const out: Record<string, Tensor> = {};
    for (const [name, t] of this.namedParameters()) out[name] = t;
    return out;
  }

  /**
   * Copies every entry of `state` into the parameter of the same name. Strict: a missing or
   * unexpected name is ERR_ARGUMENT, a wrong shape ERR_SHAPE, a wrong dtype ERR_DTYPE; nothing
   * is copied unless everything matches.
   */
  loadStateDict(state: Record<string, Tensor>): void {
    const where = 'Module.loadStateDict';
    if (state === null || typeof state !== 'object') {
      throw mismatch('ERR_ARGUMENT', where, 'state', 'an object of name -> Tensor', describe(state));
    }
    const params = new Map(this.namedParameters());
    const missing = [...params.keys()].filter((k) => !(k in state));
    const extra = Object.keys(state).filter((k) => !params.has(k));
    if (missing.length > 0 || extra.length > 0) {
      throw new LunaError(
        'ERR_ARGUMENT',
        `${where}: state dict does not match the module: ` +
          (missing.length > 0 ? `missing ${missing.join(', ')}` : '') +
          (missing.length > 0 && extra.length > 0 ? '; ' : '') +
          (extra.length > 0 ? `unexpected ${extra.join(', ')}` : ''),
      );
    }
    for (const [name, p] of params) {
      const src = checkTensor(where, `state[${JSON.stringify(name)}]`, state[name]);
      if (!sameShape(src.shape, p.shape)) {
        throw mismatch('ERR_SHAPE', where, `state[${JSON.stringify(name)}].shape`, formatShape(p.shape), formatShape(src.shape));
      }
      if (src.dtype !== p.dtype) {
        throw mismatch('ERR_DTYPE', where, `state[${JSON.stringify(name)}].dtype`, p.dtype, src.dtype);
      }
    }
    for (const [name, p] of params) {
      const src = state[name];
      const dst = assertLive(p, where).data;
      if (isDeviceArray(dst)) {
        // A state dict from anywhere (a file is on the CPU) loads into cuda parameters.
        const moved = src.device === 'cuda' ? src : src.to('cuda');
        copyBuffer(where, dst as unknown as Float32Array, nativeData(moved, where));
        if (moved !== src) moved.dispose();
      } else {
        (dst as Float32Array | Float64Array).set(src.dataSync() as Float32Array | Float64Array);
      }
    }
  }

  /** Runs `fn(module, inputs, output)` after every forward; returns an unsubscribe function. */
  registerForwardHook(fn: ForwardHook): () => void {
    checkFunction('registerForwardHook', 'fn', fn);
    const entry = { fn };
    this._forwardHooks.push(entry);
    return () => {
      const i = this._forwardHooks.indexOf(entry);
      if (i >= 0) this._forwardHooks.splice(i, 1);
    };
  }

  /** Runs `fn(module, inputs)` before every forward; it may return replacement inputs. Returns an unsubscribe function. */
  registerForwardPreHook(fn: ForwardPreHook): () => void {
    checkFunction('registerForwardPreHook', 'fn', fn);
    const entry = { fn };
    this._preHooks.push(entry);
    return () => {
      const i = this._preHooks.indexOf(entry);
      if (i >= 0) this._preHooks.splice(i, 1);
    };
  }

  /** Runs the pre-hooks, `impl`, then the forward hooks. Subclasses' `forward` goes through here. */
  protected callForward<A extends unknown[], R>(args: A, impl: (...a: A) => R): R {
    let inputs: readonly unknown[] = args;
    for (const { fn } of [...this._preHooks]) {
      const r = fn(this, inputs);
      if (r !== undefined && r !== null) {
        if (!Array.isArray(r)) {
          throw mismatch('ERR_ARGUMENT', 'forward pre-hook', 'return value', 'an array of inputs or nothing', describe(r));
        }
        inputs = r;
      }
    }
    let output: unknown = impl(...(inputs as A));
    for (const { fn } of [...this._forwardHooks]) {
      const r = fn(this, inputs, output);
      if (r !== undefined) output = r;
    }
    return output as R;
  }

  /** Frees every parameter (and gradient). The module cannot be used afterwards. */
  dispose(): void {
    for (const t of this.parameters()) t.dispose();
  }
}

/** A parameter tensor filled by `fill(data)` (data starts at zero). */
export function parameterTensor(
  where: string,
  shape: readonly number[],
  resolved: ResolvedModuleOptions,
  fill: (data: Float32Array | Float64Array, rng: Rng) => void,
): Tensor {
  const size = shape.reduce((a, b) => a * b, 1);
  const data = allocate(where, resolved.dtype, size) as Float32Array | Float64Array;
  fill(data, resolved.rng);
  // Initialised on the host (the same values on every device for a given seed); for cuda,
  // makeTensor copies it over once.
  return makeTensor(data, shape, resolved.dtype, resolved.device);
}

/** Uniform(-bound, bound) fill. */
export function uniformFill(bound: number): (data: Float32Array | Float64Array, rng: Rng) => void {
  return (data, rng) => {
    for (let i = 0; i < data.length; i++) data[i] = (rng.nextDouble() * 2 - 1) * bound;
  };
}

/** Normal(0, std) fill. */
export function normalFill(std: number): (data: Float32Array | Float64Array, rng: Rng) => void {
  return (data, rng) => {
    for (let i = 0; i < data.length; i++) data[i] = rng.nextNormal() * std;
  };
}

/** Constant fill. */
export function constantFill(value: number): (data: Float32Array | Float64Array) => void {
  return (data) => {
    data.fill(value);
  };
}

/** Checks a module's own options plus the common ones; returns both. */
export function moduleOptions(
  where: string,
  options: unknown,
  ownKeys: readonly string[],
): { opts: Record<string, unknown>; resolved: ResolvedModuleOptions } {
  if (options === undefined || options === null || typeof options !== 'object') {
    throw mismatch('ERR_ARGUMENT', where, 'options', 'an options object', describe(options));
  }
  const opts = checkOptions(where, options, [...ownKeys, ...MODULE_OPTION_KEYS]);
  return { opts, resolved: resolveModuleOptions(where, opts) };
}
