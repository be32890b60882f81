/**
 * Row selection along the batch axis, for beam search: the decoder's caches follow the beams
 * that survive a step. Inference only (no autograd).
 *
 * @packageDocumentation
 */
import { mismatch } from '../errors';
import { Tensor, makeTensor } from '../tensor';
import { hostValues } from '../ops/common';
import { allocate } from '../dtype';

/**
 * A new tensor whose row i (along axis 0) is row indices[i] of `t`; the number of rows may
 * change. Throws ERR_ARGUMENT for an index outside [0, t.shape[0]).
 */
export function selectRows(t: Tensor, indices: readonly number[]): Tensor {
  const where = 'selectRows';
  const rows = t.shape[0];
  const rowSize = t.size / Math.max(rows, 1);
  // (A cuda tensor is gathered on the host: beam reordering moves small caches once per step.)
  const src = hostValues(t, where, 't');
  const out = allocate(where, t.dtype, indices.length * rowSize);
  indices.forEach((r, i) => {
    if (!Number.isInteger(r) || r < 0 || r >= rows) {
      throw mismatch('ERR_ARGUMENT', where, `indices[${i}]`, `an integer in [0, ${rows})`, String(r));
    }
    (out as Float32Array).set((src as Float32Array).subarray(r * rowSize, (r + 1) * rowSize), i * rowSize);
  });
  return makeTensor(out, [indices.length, ...t.shape.slice(1)], t.dtype, t.device);
}
