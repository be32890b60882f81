/**
 * A small seedable random number generator for `randn` and `gradcheck`.
 *
 * The generator is xoshiro128** (128 bits of state, 32-bit operations only, so no BigInt on the
 * hot path). The state is filled from the seed by a Weyl sequence passed through a 32-bit
 * avalanche mix, so nearby seeds give unrelated streams. Normal deviates come from the
 * Box-Muller transform in double precision; float32 tensors round the same doubles, so one
 * seed gives "the same" values in both dtypes.
 *
 * @packageDocumentation
 */

const TWO_PI = 2 * Math.PI;
/** 2^-53: turns a 53-bit integer into a double in [0, 1). */
const INV_2_53 = 1 / 9007199254740992;

/** A 32-bit avalanche mix: every input bit affects every output bit. */
function mix32(x: number): number {
  let z = x | 0;
  z = Math.imul(z ^ (z >>> 16), 0x7feb352d);
  z = Math.imul(z ^ (z >>> 15), 0x846ca68b);
  return (z ^ (z >>> 16)) >>> 0;
}

function rotl(x: number, k: number): number {
  return (x << k) | (x >>> (32 - k));
}

/** A seeded stream of uniform and normal deviates. */
export class Rng {
  private s0: number;
  private s1: number;
  private s2: number;
  private s3: number;
  /** The second Box-Muller deviate, kept for the next call (NaN when none is pending). */
  private spare = Number.NaN;

  /** @param seed - any safe integer (negative ones included); fractional parts are refused upstream */
  constructor(seed: number) {
    // Split the seed into two 32-bit words so that seeds beyond 2^32 still differ.
    const lo = seed >>> 0;
    const hi = Math.floor(seed / 4294967296) >>> 0;
    const golden = 0x9e3779b9;
    let w = mix32(lo ^ mix32(hi ^ 0x5bd1e995));
    const next = (): number => {
      w = (w + golden) | 0;
      return mix32(w ^ hi);
    };
    this.s0 = next();
    this.s1 = next();
    this.s2 = next();
    this.s3 = next();
    // The all-zero state is a fixed point of xoshiro; it cannot come out of the mix in
    // practice, but guard it anyway.
    if ((this.s0 | this.s1 | this.s2 | this.s3) === 0) this.s0 = 1;
  }

  /** The next uniform 32-bit unsigned integer. */
  nextUint32(): number {
    const result = Math.imul(rotl(Math.imul(this.s1, 5), 7), 9) >>> 0;
    const t = this.s1 << 9;
    this.s2 ^= this.s0;
    this.s3 ^= this.s1;
    this.s1 ^= this.s2;
    this.s0 ^= this.s3;
    this.s2 ^= t;
    this.s3 = rotl(this.s3, 11);
    return result;
  }

  /** A uniform double in [0, 1) with 53 random bits. */
  nextDouble(): number {
    const a = this.nextUint32() >>> 5; // 27 bits
    const b = this.nextUint32() >>> 6; // 26 bits
    return (a * 67108864 + b) * INV_2_53;
  }

  /** A standard normal deviate (mean 0, variance 1). */
  nextNormal(): number {
    if (!Number.isNaN(this.spare)) {
      const z = this.spare;
      this.spare = Number.NaN;
      return z;
    }
    // 1 - u lies in (0, 1], so the logarithm is finite.
    const u1 = 1 - this.nextDouble();
    const u2 = this.nextDouble();
    const r = Math.sqrt(-2 * Math.log(u1));
    this.spare = r * Math.sin(TWO_PI * u2);
    return r * Math.cos(TWO_PI * u2);
  }

  /** Fills `out` with standard normal deviates. */
  fillNormal(out: Float32Array | Float64Array): void {
    for (let i = 0; i < out.length; i++) out[i] = this.nextNormal();
  }
}

/** A fresh seed for callers that did not give one. */
export function randomSeed(): number {
  return Math.floor(Math.random() * 2 ** 32) + Math.floor(Math.random() * 2 ** 20) * 2 ** 32;
}
