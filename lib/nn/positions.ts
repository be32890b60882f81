/**
 * Fixed sinusoidal positions (luna-math.md section 4.2, the MT encoder's): row `pos` is
 * [sin(pos·f_0) .. sin(pos·f_{k-1}) | cos(pos·f_0) .. cos(pos·f_{k-1})] with k = d/2 and
 * f_i = exp(-i·ln(10^4)/(k-1)); an odd d gets a zero last column. Token positions and P slots
 * use the same table from 0, so slot r and token r start out with the same position vector:
 * that is what lets a P slot find "its" token early in training.
 *
 * @packageDocumentation
 */
import { Device, FloatDType, allocate } from '../dtype';
import { Tensor, makeTensor } from '../tensor';

/** The table's rows [start, start + len) as a new [len, d] tensor (nobody else holds it). */
export function sinusoidalPositions(start: number, len: number, d: number, dtype: FloatDType, device: Device): Tensor {
  const data = allocate('sinusoidalPositions', dtype, len * d) as Float32Array | Float64Array;
  const half = Math.floor(d / 2);
  const step = half > 1 ? Math.log(10000) / (half - 1) : 0;
  for (let r = 0; r < len; r++) {
    const pos = start + r;
    for (let i = 0; i < half; i++) {
      const angle = pos * Math.exp(-i * step);
      data[r * d + i] = Math.sin(angle);
      data[r * d + half + i] = Math.cos(angle);
    }
  }
  return makeTensor(data, [len, d], dtype, device);
}
