/**
 * The optimizer base class: parameter bookkeeping, the learning rate, `zeroGrad()` and the
 * optimizer state dict. The update rules live in the subclasses (sgd.ts, adam.ts).
 *
 * Updates run in place on the parameters' own buffers, as `torch.optim` updates `param.data`,
 * through one fused native call per parameter (lib/optim/native.ts): C++ for CPU tensors, a CUDA
 * kernel for CUDA tensors, so a CUDA model's step never leaves the GPU. State buffers have the
 * parameter's dtype and device, so a float32 model keeps float32 moments like PyTorch does.
 *
 * @packageDocumentation
 */
import { LunaError, checkFinite, describe, formatShape, mismatch } from '../errors';
import { isFloatDType, sameShape } from '../dtype';
import { deviceAlloc, deviceClone, isDeviceArray } from '../device';
import { Tensor, makeTensor, nativeData, tensorData } from '../tensor';
import type { NativeBuffer } from './native';

/**
 * A float buffer: a parameter's, a gradient's or a state buffer; a typed array on the CPU, a
 * DeviceArray (float32) on cuda.
 */
export type FloatBuffer = NativeBuffer;

/** A copy of a buffer on its own device. */
function cloneBuffer(where: string, buf: FloatBuffer): FloatBuffer {
  return isDeviceArray(buf) ? deviceClone(where, buf, 'float32') : buf.slice();
}

/** The per-parameter state: the number of updates it received and the rule's buffers. */
export interface ParamState {
  /** How many `step()` calls updated this parameter (parameters without a gradient are skipped). */
  step: number;
  /** The rule's buffers by name (torch's names: `momentum_buffer`, `exp_avg`, `exp_avg_sq`). */
  buffers: Record<string, FloatBuffer>;
}

/** Throws ERR_ARGUMENT unless `value` is a finite number >= 0. */
export function checkNonNegative(where: string, arg: string, value: unknown): number {
  const v = checkFinite(where, arg, value);
  if (v < 0) throw mismatch('ERR_ARGUMENT', where, arg, 'a finite number >= 0', describe(value));
  return v;
}

/**
 * Validates a parameter list: a non-empty array of distinct, live, float leaf tensors (on any
 * device; each is updated where it lives).
 * Non-leaf tensors are refused for the reason PyTorch refuses them: an update written into a
 * computed tensor would not reach anything the next forward pass reads.
 */
function checkParams(where: string, params: unknown): Tensor[] {
  if (!Array.isArray(params)) {
    throw mismatch('ERR_ARGUMENT', where, 'params', 'an array of tensors', describe(params));
  }
  if (params.length === 0) {
    throw new LunaError('ERR_ARGUMENT', `${where}: params is empty; the optimizer would have nothing to update`);
  }
  const seen = new Set<Tensor>();
  params.forEach((p: unknown, i) => {
    const arg = `params[${i}]`;
    if (!(p instanceof Tensor)) throw mismatch('ERR_ARGUMENT', where, arg, 'a Tensor', describe(p));
    nativeData(p, where, arg);
    if (!isFloatDType(p.dtype)) {
      throw mismatch('ERR_DTYPE', where, `${arg}.dtype`, 'float32 or float64', p.dtype);
    }
    if (!p.isLeaf) {
      throw new LunaError(
        'ERR_ARGUMENT',
        `${where}: ${arg} is not a leaf tensor (${p.toString()}); optimize the leaf it was computed from`,
      );
    }
    if (seen.has(p)) {
      throw new LunaError(
        'ERR_ARGUMENT',
        `${where}: ${arg} appears more than once in params; it would be updated twice per step`,
      );
    }
    seen.add(p);
  });
  return params as Tensor[];
}

/**
 * Base class of the optimizers. Subclasses implement {@link Optimizer.step} with the internal
 * helpers `eachParamWithGrad` and `stateFor`.
 */
export abstract class Optimizer {
  /** The parameters this optimizer updates, in the order given. */
  readonly params: readonly Tensor[];
  /** @internal the name classes use in error messages, e.g. `Adam` */
  protected readonly name: string;
  /** @internal per-parameter state; null until the parameter's first update */
  protected readonly state: (ParamState | null)[];
  /** @internal the state buffer names the rule keeps for every updated parameter */
  protected abstract readonly bufferNames: readonly string[];
  private currentLr: number;

  /**
   * @param name - the class name, for messages
   * @param params - the parameters (validated here)
   * @param lr - the initial learning rate (validated by the subclass before the call)
   */
  protected constructor(name: string, params: unknown, lr: number) {
    this.name = name;
    this.params = Object.freeze([...checkParams(`${name}`, params)]);
    this.state = this.params.map(() => null);
    this.currentLr = lr;
  }

  /** The learning rate the next {@link Optimizer.step} uses. Settable (schedules set it). */
  get lr(): number {
    return this.currentLr;
  }

  /** Sets the learning rate (a finite number >= 0) for the following steps. */
  set lr(value: number) {
    this.currentLr = checkNonNegative(`${this.name}.lr`, 'value', value);
  }

  /** Updates every parameter that has a gradient, in place. */
  abstract step(): void;

  /**
   * Clears the gradients: sets each parameter's `.grad` to null and disposes the old gradient
   * tensors, so their buffers go back to the pool for the next backward.
   */
  zeroGrad(): void {
    for (const p of this.params) {
      const g = p.grad;
      if (g === null) continue;
      p.grad = null;
      g.dispose();
    }
  }

  /**
   * @internal Calls `fn` for each parameter that has a gradient, with the buffers to update (as
   * stored: typed arrays or device arrays, for the native update; never indexed in JS).
   * Checks that the parameter and its gradient are still alive first.
   */
  protected eachParamWithGrad(fn: (index: number, param: FloatBuffer, grad: FloatBuffer) => void): void {
    const where = `${this.name}.step`;
    this.params.forEach((p, i) => {
      const g = p.grad;
      if (g === null) return;
      const param = nativeData(p, where, `params[${i}]`) as FloatBuffer;
      const grad = nativeData(g, where, `params[${i}].grad`) as FloatBuffer;
      fn(i, param, grad);
    });
  }

  /** @internal The state of parameter `i`, created (step 0, zeroed buffers) on first use. */
  protected stateFor(i: number): ParamState {
    let s = this.state[i];
    if (s === null) {
      const p = this.params[i];
      const buffers: Record<string, FloatBuffer> = {};
      const where = `${this.name}.step`;
      for (const name of this.bufferNames) {
        buffers[name] =
          p.device === 'cuda'
            ? deviceAlloc(where, p.dtype, p.size, true)
            : p.dtype === 'float64'
              ? new Float64Array(p.size)
              : new Float32Array(p.size);
      }
      s = { step: 0, buffers };
      this.state[i] = s;
    }
    return s;
  }

  /**
   * The optimizer state as tensors, ready for `saveSafetensors`: `lr` (a float64 scalar) and,
   * for every parameter updated at least once, `state.<i>.step` (a float64 scalar) and
   * `state.<i>.<buffer>` (the parameter's shape, dtype and device), `i` being the index in
   * `params`. The tensors are copies.
   */
  stateDict(): Record<string, Tensor> {
    const where = `${this.name}.stateDict`;
    const out: Record<string, Tensor> = { lr: makeTensor(Float64Array.of(this.currentLr), [], 'float64') };
    this.state.forEach((s, i) => {
      if (s === null) return;
      const p = this.params[i];
      out[`state.${i}.step`] = makeTensor(Float64Array.of(s.step), [], 'float64');
      for (const name of this.bufferNames) {
        out[`state.${i}.${name}`] = makeTensor(cloneBuffer(where, s.buffers[name]), p.shape, p.dtype, p.device);
      }
    });
    return out;
  }

  /**
   * Restores a state saved by {@link Optimizer.stateDict} of an optimizer of the same kind
   * over parameters of the same shapes and dtypes. Each buffer must be on its parameter's device
   * (move a CPU checkpoint with `.to('cuda')` first). Strict: a missing, extra or mis-shaped
   * entry throws and leaves this optimizer unchanged.
   */
  loadStateDict(stateDict: Record<string, Tensor>): void {
    const where = `${this.name}.loadStateDict`;
    if (stateDict === null || typeof stateDict !== 'object' || Array.isArray(stateDict)) {
      throw mismatch('ERR_ARGUMENT', where, 'stateDict', 'an object mapping names to tensors', describe(stateDict));
    }
    const scalar = (key: string): number => {
      const t = stateDict[key] as unknown;
      if (!(t instanceof Tensor)) throw mismatch('ERR_ARGUMENT', where, `stateDict[${JSON.stringify(key)}]`, 'a Tensor', describe(t));
      const data = tensorData(t, where, key);
      if (t.size !== 1 || !isFloatDType(t.dtype)) {
        throw mismatch('ERR_SHAPE', where, `stateDict[${JSON.stringify(key)}]`, 'a one-element float tensor', t.toString());
      }
      return data[0];
    };
    const lr = checkNonNegative(where, 'stateDict["lr"]', scalar('lr'));
    const used = new Set<string>(['lr']);
    const next: ({ step: number } | null)[] = this.params.map((p, i) => {
      const stepKey = `state.${i}.step`;
      if (!(stepKey in stateDict)) return null;
      used.add(stepKey);
      const step = scalar(stepKey);
      if (!Number.isSafeInteger(step) || step < 0) {
        throw mismatch('ERR_ARGUMENT', where, `stateDict[${JSON.stringify(stepKey)}]`, 'a non-negative integer', describe(step));
      }
      for (const name of this.bufferNames) {
        const key = `state.${i}.${name}`;
        const t = stateDict[key] as unknown;
        if (!(t instanceof Tensor)) {
          throw mismatch('ERR_ARGUMENT', where, `stateDict[${JSON.stringify(key)}]`, 'a Tensor', describe(t));
        }
        if (!sameShape(t.shape, p.shape)) {
          const arg = `stateDict[${JSON.stringify(key)}].shape`;
          throw mismatch('ERR_SHAPE', where, arg, formatShape(p.shape), formatShape(t.shape));
        }
        if (t.dtype !== p.dtype) {
          throw mismatch('ERR_DTYPE', where, `stateDict[${JSON.stringify(key)}].dtype`, p.dtype, t.dtype);
        }
        if (t.device !== p.device) {
          throw mismatch('ERR_DEVICE', where, `stateDict[${JSON.stringify(key)}].device`, p.device, t.device);
        }
        nativeData(t, where, key);
        used.add(key);
      }
      return { step };
    });
    const extra = Object.keys(stateDict).find((k) => !used.has(k));
    if (extra !== undefined) {
      const buffers = this.bufferNames.join(', ') || 'none';
      throw new LunaError(
        'ERR_ARGUMENT',
        `${where}: stateDict has unexpected key ${JSON.stringify(extra)} ` +
          `(for ${this.params.length} parameters; buffers: ${buffers})`,
      );
    }
    // Copy only now that every entry passed, so a refused state dict leaves nothing behind.
    const copied = next.map((s, i) => {
      if (s === null) return null;
      const buffers: Record<string, FloatBuffer> = {};
      for (const name of this.bufferNames) {
        const key = `state.${i}.${name}`;
        buffers[name] = cloneBuffer(where, nativeData(stateDict[key], where, key) as FloatBuffer);
      }
      return { step: s.step, buffers };
    });
    this.currentLr = lr;
    copied.forEach((s, i) => {
      const old = this.state[i];
      this.state[i] = s;
      // Device moments go back to the caching allocator now, not when the collector finds them.
      if (old !== null) for (const b of Object.values(old.buffers)) if (isDeviceArray(b)) b.release();
    });
  }
}
