/**
 * Reverse-mode automatic differentiation: the graph that ops record, `noGrad`, and the engine
 * behind `Tensor.backward()`.
 *
 * Each op that has an input requiring grad attaches a {@link GradNode} to its output. The node
 * keeps the inputs gradients flow to and whatever the backward needs (retained storages), so
 * the graph is the tensors themselves linked through their nodes; there is no global tape to
 * clear. Backward orders the reachable tensors topologically, sums the gradients arriving at
 * each one, runs its hooks once the sum is complete, and either accumulates it into a leaf's
 * `.grad` or hands it to the tensor's node. A node frees what it saved as soon as it has run.
 *
 * @packageDocumentation
 */
import { LunaError, checkFunction, describe, formatShape, mismatch } from './errors';
import { allocate, allocateUninit, sameShape } from './dtype';
import type { Tensor } from './tensor';
import { assertLive, checkSameMeta, checkTensor, floatData, makeTensor, nativeData } from './tensor';
import { cudaError, deviceClone, isDeviceArray } from './device';
import { loadNative } from './native';
import { markKept } from './memory';

/** One recorded op application: how to turn the output's gradient into its inputs' gradients. */
export interface GradNode {
  /** The op's name, for messages (e.g. `packAttention`). */
  readonly name: string;
  /** The differentiable inputs, in the order `backward` returns their gradients. */
  readonly inputs: readonly Tensor[];
  /** True once the node has run (or been freed); its saved data is gone then. */
  released: boolean;
  /**
   * Computes the gradients of the inputs from the gradient of the output. Returns one entry per
   * input: a fresh tensor of the input's shape and dtype, or null where `needsGrad[i]` is false
   * (an entry for such an input is ignored anyway).
   */
  backward(gradOut: Tensor, needsGrad: readonly boolean[]): readonly (Tensor | null)[];
  /** Drops the saved data. Idempotent. */
  release(): void;
}

/** How many `noGrad` scopes are open; recording happens only at zero. */
let noGradDepth = 0;

/** Internal: true when ops should record their backward (outside every `noGrad`). */
export function isGradEnabled(): boolean {
  return noGradDepth === 0;
}

/**
 * Runs `fn` with gradient recording disabled and returns its result: tensors computed inside
 * do not require grad and keep no graph. Nestable and exception-safe. Only the synchronous part
 * of `fn` is covered: work after an `await` inside an async `fn` records again.
 */
export function noGrad<T>(fn: () => T): T {
  checkFunction('noGrad', 'fn', fn);
  noGradDepth++;
  try {
    return fn();
  } finally {
    noGradDepth--;
  }
}

/** Internal: runs `fn` with recording enabled even inside an enclosing `noGrad` (gradcheck needs this). */
export function withGradEnabled<T>(fn: () => T): T {
  const saved = noGradDepth;
  noGradDepth = 0;
  try {
    return fn();
  } finally {
    noGradDepth = saved;
  }
}

/** Internal: should an op with these differentiable inputs record a node? */
export function shouldRecord(inputs: readonly Tensor[]): boolean {
  return noGradDepth === 0 && inputs.some((t) => t._requiresGrad);
}

/**
 * Internal: makes `output` the result of a recorded op. The caller has checked
 * {@link shouldRecord}; `release` frees what `backward` captured.
 */
export function attachNode(
  output: Tensor,
  name: string,
  inputs: readonly Tensor[],
  backward: GradNode['backward'],
  release: () => void,
): void {
  const node: GradNode = {
    name,
    inputs: Object.freeze([...inputs]),
    released: false,
    backward,
    release(): void {
      if (node.released) return;
      node.released = true;
      release();
    },
  };
  output._node = node;
  output._requiresGrad = true;
}

// ---------------------------------------------------------------------------------------------
// Small elementwise helpers for gradient bookkeeping. Plain loops: gradients are summed only
// where a tensor feeds several ops, which is cheap next to the attention kernels.

function filled(t: Tensor, value: number): Tensor {
  const data = allocate('backward', t._dtype, t._size);
  if (value !== 0) data.fill(value);
  // (For a cuda tensor, makeTensor copies the host buffer over.)
  return makeTensor(data, t._shape, t._dtype, t._device);
}

function clone(t: Tensor): Tensor {
  const buf = nativeData(t, 'backward', 'gradient');
  if (isDeviceArray(buf)) return makeTensor(deviceClone('backward', buf, t._dtype), t._shape, t._dtype, 'cuda');
  // A pooled buffer: a fresh slice() of a large gradient would page-fault every step.
  const src = floatData(t, 'backward', 'gradient');
  const copy = allocateUninit('backward', t._dtype, src.length) as Float32Array | Float64Array;
  copy.set(src);
  return makeTensor(copy, t._shape, t._dtype, t._device);
}

/** Below this many elements a JS loop beats the call into the addon. */
const NATIVE_ADD_MIN = 1 << 14;

function addInto(dst: Tensor, src: Tensor): void {
  const a = nativeData(dst, 'backward', 'gradient');
  const b = nativeData(src, 'backward', 'gradient');
  if (a.length >= NATIVE_ADD_MIN || isDeviceArray(a)) {
    // The same-shape add is one flat loop over the elements, so writing into `a` while reading
    // it is safe; the addon spreads it over the thread pool.
    try {
      loadNative().elementwiseBinary({ op: 'add', a, b, out: a, shape: [a.length], aStrides: [1], bStrides: [1] });
    } catch (err) {
      throw cudaError('backward', err);
    }
    return;
  }
  for (let i = 0; i < a.length; i++) a[i] += b[i];
}

/**
 * Which gradients the engine made and may free, and how many pending entries hold each. A node
 * may hand one tensor to several inputs (an add passes its incoming gradient to both operands),
 * so a count, not a flag: the last holder to let go frees the buffer, which goes straight back
 * to the pool for the next op. Only the sole holder may add into a gradient in place or give it
 * away. A gradient the caller passed in, one a hook has seen (the hook may keep it) and one a
 * leaf keeps as `.grad` are outside the book and never freed here.
 */
class GradBook {
  private readonly holds = new Map<Tensor, number>();

  /** The engine made `t` (or passes it on) for `k` more pending entries. */
  add(t: Tensor, k: number): void {
    if (k > 0) this.holds.set(t, (this.holds.get(t) ?? 0) + k);
  }

  /** True when `t` is the engine's and held by exactly one entry. */
  owns(t: Tensor): boolean {
    return this.holds.get(t) === 1;
  }

  /** True when the engine made `t` (however many entries hold it). */
  manages(t: Tensor): boolean {
    return this.holds.has(t);
  }

  /** One entry is done with `t`; the last one frees it. */
  letGo(t: Tensor): void {
    const n = this.holds.get(t);
    if (n === undefined) return;
    if (n > 1) {
      this.holds.set(t, n - 1);
    } else {
      this.holds.delete(t);
      t.dispose();
    }
  }

  /** `t` leaves the engine's care: the engine will neither free nor write it. */
  giveAway(t: Tensor): void {
    this.holds.delete(t);
  }
}

function accumulate(pending: Map<Tensor, Tensor>, book: GradBook, target: Tensor, g: Tensor): void {
  const prev = pending.get(target);
  if (prev === undefined) {
    pending.set(target, g);
  } else if (book.owns(prev)) {
    addInto(prev, g);
    book.letGo(g);
  } else if (book.owns(g)) {
    // Add into the new gradient instead of copying the shared one.
    addInto(g, prev);
    book.letGo(prev);
    pending.set(target, g);
  } else {
    const sum = clone(prev);
    addInto(sum, g);
    book.letGo(prev);
    book.letGo(g);
    book.add(sum, 1);
    pending.set(target, sum);
  }
}

/** Runs a tensor's hooks on its complete gradient; each may replace it. */
function runHooks(t: Tensor, g: Tensor, book: GradBook): Tensor {
  // Copy the list: a hook may unregister itself (or others) while we iterate.
  for (const { fn } of [...t._hooks]) {
    // The hook may keep what it is shown: from now on the engine neither frees nor writes it.
    book.giveAway(g);
    const r: unknown = fn(g);
    if (r === undefined || r === null) continue;
    const replacement = checkTensor('backward (hook result)', 'replacement gradient', r);
    checkSameMeta('backward (hook result)', 'replacement gradient', replacement, t);
    g = replacement;
  }
  return g;
}

function accumulateIntoLeaf(leaf: Tensor, g: Tensor, book: GradBook): void {
  // A disposed leaf has nowhere to keep a gradient.
  if (leaf._storage === null) {
    book.letGo(g);
    return;
  }
  const current = leaf._grad;
  if (current === null || current._storage === null) {
    // Take over only a gradient nobody else holds; otherwise a later in-place accumulation
    // would write into the caller's (or another tensor's) buffer.
    if (book.owns(g)) {
      book.giveAway(g);
      leaf._grad = g;
    } else {
      leaf._grad = clone(g);
      book.letGo(g);
    }
    // The leaf owns its gradient now: a tidy scope around backward() must not free it.
    markKept(leaf._grad);
  } else {
    addInto(current, g);
    book.letGo(g);
  }
}

/** Depth-first post-order of the tensors reachable from `roots` through recorded nodes. */
function topoOrder(roots: readonly Tensor[], where: string): Tensor[] {
  const visited = new Set<Tensor>();
  const post: Tensor[] = [];
  const stack: { t: Tensor; next: number }[] = [];
  const enter = (t: Tensor): void => {
    const node = t._node;
    if (node !== null && node.released) {
      throw new LunaError(
        'ERR_DISPOSED',
        `${where}: tried to backward through the graph a second time: the data saved by ` +
          `${node.name} was released after the first backward. Run the forward pass again ` +
          '(or call backward once on the sum of the losses).',
      );
    }
    visited.add(t);
    stack.push({ t, next: 0 });
  };
  for (const root of roots) {
    if (visited.has(root)) continue;
    enter(root);
    // Iterative, so a long chain of ops cannot overflow the call stack.
    while (stack.length > 0) {
      const top = stack[stack.length - 1];
      const inputs = top.t._node?.inputs ?? [];
      if (top.next < inputs.length) {
        const input = inputs[top.next++];
        if (input._requiresGrad && !visited.has(input)) enter(input);
      } else {
        stack.pop();
        post.push(top.t);
      }
    }
  }
  return post;
}

function rootGradient(root: Tensor, grad: Tensor | undefined, where: string, book: GradBook): Tensor {
  if (grad === undefined || grad === null) {
    if (root._size !== 1) {
      throw mismatch(
        'ERR_ARGUMENT',
        where,
        'grad',
        `a Tensor of shape ${formatShape(root._shape)} (it may be omitted only for a one-element tensor)`,
        describe(grad),
      );
    }
    const ones = filled(root, 1);
    book.add(ones, 1);
    return ones;
  }
  const g = checkTensor(where, 'grad', grad);
  checkSameMeta(where, 'grad', g, root);
  return g;
}

/**
 * Internal: backpropagates from `roots`, seeded with `grads` (undefined = ones for a
 * one-element root). `Tensor.backward` calls it with one root; gradcheck with several.
 */
export function runBackward(
  roots: readonly Tensor[],
  grads: readonly (Tensor | undefined)[],
  where: string,
): void {
  const pending = new Map<Tensor, Tensor>();
  const book = new GradBook();
  const seeds: Tensor[] = [];
  roots.forEach((root, i) => {
    assertLive(root, where);
    if (!root._requiresGrad) {
      throw new LunaError(
        'ERR_ARGUMENT',
        `${where}: the tensor does not require grad and has no grad function (${root.toString()}); ` +
          'set requiresGrad on the inputs before computing it, outside noGrad()',
      );
    }
    seeds.push(rootGradient(root, grads[i], where, book));
  });
  // Everything is validated and the graph checked before any gradient is written, so a
  // refused call changes nothing.
  const order = topoOrder(roots, where);
  roots.forEach((root, i) => accumulate(pending, book, root, seeds[i]));

  // Hooks and node backwards must not record a graph of their own.
  noGradDepth++;
  try {
    for (let i = order.length - 1; i >= 0; i--) {
      const t = order[i];
      const arrived = pending.get(t);
      if (arrived === undefined) continue;
      pending.delete(t);
      const g = t._hooks.length > 0 ? runHooks(t, arrived, book) : arrived;
      const node = t._node;
      if (node === null) {
        if (t._requiresGrad) accumulateIntoLeaf(t, g, book);
        else book.letGo(g);
        continue;
      }
      const needsGrad = node.inputs.map((x) => x._requiresGrad);
      const inputGrads = node.backward(g, needsGrad);
      node.release();
      // How many inputs each returned gradient goes to. A fresh one is the engine's; the
      // incoming one passed straight through stays the engine's only if it already was.
      const uses = new Map<Tensor, number>();
      node.inputs.forEach((input, j) => {
        const ig = inputGrads[j];
        if (!needsGrad[j] || ig === null || ig === undefined) return;
        if (!sameShape(ig._shape, input._shape) || ig._dtype !== input._dtype) {
          throw new LunaError(
            'ERR_SHAPE',
            `internal: ${node.name} returned a ${ig._dtype} gradient of shape ${formatShape(ig._shape)} ` +
              `for input ${j} (${input.toString()})`,
          );
        }
        uses.set(ig, (uses.get(ig) ?? 0) + 1);
      });
      for (const [ig, k] of uses) {
        if (ig !== g || book.manages(g)) book.add(ig, k);
      }
      // The entry that carried the incoming gradient is done with it (after the hand-outs
      // above, so a gradient passed straight through is not freed on the way).
      book.letGo(g);
      node.inputs.forEach((input, j) => {
        const ig = inputGrads[j];
        if (!needsGrad[j] || ig === null || ig === undefined) return;
        accumulate(pending, book, input, ig);
      });
    }
  } finally {
    noGradDepth--;
  }
}
