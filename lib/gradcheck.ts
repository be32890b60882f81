/**
 * Float64 central-difference gradient checking: the test that every differentiable op's
 * backward matches its forward.
 *
 * For outputs y_j = f(x)_j and fixed random cotangents R_j, the scalar s(x) = sum_j <y_j, R_j>
 * has gradient J^T R, which backward computes analytically. Central differences of s give the
 * same vector numerically, one input element at a time. A random R (rather than all ones)
 * catches errors that cancel out in a plain sum, such as swapped rows.
 *
 * @packageDocumentation
 */
import { LunaError, checkBoolean, checkFinite, checkFunction, checkInteger, checkOptions, describe, mismatch } from './errors';
import { Tensor, checkTensor, floatData, makeTensor } from './tensor';
import { noGrad, runBackward, withGradEnabled } from './autograd';
import { randnLike } from './creation';
import { Rng } from './random';

/** Options of {@link gradcheck}. */
export interface GradcheckOptions {
  /** Finite-difference step. Default 1e-6. */
  eps?: number;
  /** Absolute tolerance. Default 1e-5. */
  atol?: number;
  /** Relative tolerance (relative to the numeric value). Default 1e-3. */
  rtol?: number;
  /** Seed of the random cotangents. Default: a fixed seed, so failures reproduce. */
  seed?: number;
  /** Throw a LunaError describing the first mismatch (default true), or return false. */
  raiseOnFailure?: boolean;
}

/** The function under test: takes the inputs (spread, in order) and returns one or more tensors. */
export type GradcheckFn = (...inputs: Tensor[]) => Tensor | readonly Tensor[];

const OPTION_KEYS = ['eps', 'atol', 'rtol', 'seed', 'raiseOnFailure'] as const;
const DEFAULT_SEED = 0x5eed;

function outputsOf(result: unknown, where: string): Tensor[] {
  const list = Array.isArray(result) ? (result as unknown[]) : [result];
  return list.map((t, j) => {
    const out = checkTensor(where, `fn's output ${j}`, t);
    if (out.dtype !== 'float64') {
      throw mismatch('ERR_DTYPE', where, `fn's output ${j}.dtype`, 'float64', out.dtype);
    }
    return out;
  });
}

function copyOf(t: Tensor, requiresGrad: boolean): Tensor {
  const c = makeTensor(floatData(t, 'gradcheck').slice(), t.shape, t.dtype, t.device);
  c._requiresGrad = requiresGrad;
  return c;
}

function indexOf(shape: readonly number[], flat: number): string {
  const idx: number[] = [];
  let rest = flat;
  for (let d = shape.length - 1; d >= 0; d--) {
    idx.unshift(rest % shape[d]);
    rest = Math.floor(rest / shape[d]);
  }
  return `[${idx.join(',')}]`;
}

/**
 * Checks the gradients of `fn` at `inputs` (all float64) against central differences.
 *
 * `fn` is called as `fn(...inputs)` with copies of the inputs; it must return a float64 Tensor
 * or an array of them. Every element of every input that requires grad is perturbed by +-eps,
 * with the numeric evaluations run under `noGrad`. An element passes when
 * |analytic - numeric| <= atol + rtol * |numeric|.
 *
 * @returns true when every element passes; false on failure with `raiseOnFailure: false`.
 * @throws LunaError ERR_ARGUMENT on a mismatch (naming the input, the element, both values),
 *   ERR_DTYPE for a non-float64 input or output.
 *
 * @example
 * gradcheck((q, k, v) => ops.packAttention(q, k, v), [q, k, v]);
 */
export function gradcheck(fn: GradcheckFn, inputs: readonly Tensor[], options?: GradcheckOptions): boolean {
  const where = 'gradcheck';
  checkFunction(where, 'fn', fn);
  if (!Array.isArray(inputs)) {
    throw mismatch('ERR_ARGUMENT', where, 'inputs', 'an array of Tensors', describe(inputs));
  }
  const opts = checkOptions(where, options, OPTION_KEYS);
  const eps = opts.eps === undefined ? 1e-6 : checkFinite(where, 'options.eps', opts.eps);
  if (!(eps > 0)) throw mismatch('ERR_ARGUMENT', where, 'options.eps', 'a positive number', describe(eps));
  const atol = opts.atol === undefined ? 1e-5 : checkFinite(where, 'options.atol', opts.atol);
  const rtol = opts.rtol === undefined ? 1e-3 : checkFinite(where, 'options.rtol', opts.rtol);
  if (atol < 0) throw mismatch('ERR_ARGUMENT', where, 'options.atol', 'a non-negative number', describe(atol));
  if (rtol < 0) throw mismatch('ERR_ARGUMENT', where, 'options.rtol', 'a non-negative number', describe(rtol));
  const seed =
    opts.seed === undefined ? DEFAULT_SEED : checkInteger(where, 'options.seed', opts.seed, Number.MIN_SAFE_INTEGER);
  const raise = opts.raiseOnFailure === undefined ? true : checkBoolean(where, 'options.raiseOnFailure', opts.raiseOnFailure);

  const originals = inputs.map((t, i) => {
    const x = checkTensor(where, `inputs[${i}]`, t);
    if (x.dtype !== 'float64') {
      throw mismatch('ERR_DTYPE', where, `inputs[${i}].dtype`, 'float64 (gradchecks need double precision)', x.dtype);
    }
    return x;
  });
  if (!originals.some((x) => x.requiresGrad)) {
    throw new LunaError('ERR_ARGUMENT', `${where}: no input requires grad, so there is nothing to check`);
  }

  // Analytic: one backward from all outputs, seeded with the cotangents, on fresh leaf copies
  // (so the caller's tensors and their .grad are untouched).
  const leaves = originals.map((x) => copyOf(x, x.requiresGrad));
  const rng = new Rng(seed);
  let cotangents: Tensor[] = [];
  const outShapes: string[] = [];
  withGradEnabled(() => {
    const outs = outputsOf(fn(...leaves), where);
    cotangents = outs.map((y) => randnLike(y, rng));
    outs.forEach((y) => outShapes.push(y.shape.join(',')));
    const roots = outs.filter((y) => y.requiresGrad);
    runBackward(roots, cotangents.filter((_, j) => outs[j].requiresGrad), where);
  });
  const cot = cotangents.map((r) => floatData(r, where));

  // Numeric: s(x) = sum_j <f(x)_j, R_j> under noGrad, perturbing copies in place.
  const probes = originals.map((x) => copyOf(x, false));
  const evaluate = (): number =>
    noGrad(() => {
      const outs = outputsOf(fn(...probes), where);
      if (outs.length !== cot.length || outs.some((y, j) => y.shape.join(',') !== outShapes[j])) {
        throw new LunaError('ERR_ARGUMENT', `${where}: fn returned outputs of different shapes on different calls`);
      }
      let s = 0;
      outs.forEach((y, j) => {
        const d = floatData(y, where);
        const r = cot[j];
        for (let e = 0; e < d.length; e++) s += d[e] * r[e];
        if (!probes.includes(y)) y.dispose();
      });
      return s;
    });

  let firstFailure: string | null = null;
  let failures = 0;
  let checked = 0;
  originals.forEach((x, i) => {
    if (!x.requiresGrad) return;
    const grad = leaves[i].grad;
    const analytic = grad === null ? new Float64Array(x.size) : floatData(grad, where);
    const data = floatData(probes[i], where);
    for (let e = 0; e < data.length; e++) {
      const orig = data[e];
      data[e] = orig + eps;
      const plus = evaluate();
      data[e] = orig - eps;
      const minus = evaluate();
      data[e] = orig;
      const numeric = (plus - minus) / (2 * eps);
      const a = analytic[e];
      const diff = Math.abs(a - numeric);
      checked++;
      // Written as !(<=) so that a NaN on either side counts as a failure.
      if (!(diff <= atol + rtol * Math.abs(numeric))) {
        failures++;
        if (firstFailure === null) {
          firstFailure =
            `${where}: gradient mismatch for input ${i} element ${e} (index ${indexOf(x.shape, e)}): ` +
            `analytic ${a}, numeric ${numeric} (|diff| ${diff} > atol ${atol} + rtol ${rtol} * |numeric|)`;
        }
      }
    }
  });
  for (const t of [...leaves, ...probes, ...cotangents]) t.dispose();

  if (firstFailure === null) return true;
  if (!raise) return false;
  throw new LunaError('ERR_ARGUMENT', `${firstFailure}; ${failures} of ${checked} checked elements differ`);
}
