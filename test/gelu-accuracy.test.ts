// The float32 GELU kernels (AVX-512, AVX2 and generic builds) against the float64 reference,
// with design.md's policy: max error at most 2x (forward) / 3x (backward) that of the plain
// float32 implementation (scalar erfcf/expf, the `reference: true` path), plus 4 ulp of the
// largest value. Inputs span the tails (|x| up to 12) where erfc underflows and 1 - erfc/2
// rounds to 1. Each ISA runs in a child process, since the ISA is chosen once per process.
import { execFileSync } from 'node:child_process';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { SEED } from './helpers';

const script = `
const addon = require(${JSON.stringify(path.join(__dirname, '..', 'build', 'Release', 'luna_attention.node'))});
let s = ${SEED} >>> 0;
const uniform = () => { s = (s + 0x6d2b79f5) >>> 0; let t = s; t = Math.imul(t ^ (t >>> 15), t | 1);
  t ^= t + Math.imul(t ^ (t >>> 7), t | 61); return ((t ^ (t >>> 14)) >>> 0) / 4294967296; };
const n = 100003;
const x64 = new Float64Array(n);
for (let i = 0; i < n; i++) {
  const u = uniform();
  // Mostly N(0, 3^2)-like bulk plus a uniform sweep over [-12, 12] for the tails.
  x64[i] = i % 4 === 0 ? (u * 24 - 12) : (Math.sqrt(-2 * Math.log(1 - u)) * Math.cos(2 * Math.PI * uniform()) * 3);
}
const x32 = Float32Array.from(x64);
const xr = Float64Array.from(x32);
const g32 = Float32Array.from(x64, (v, i) => Math.sin(i) * 2);
const g64 = Float64Array.from(g32);
const run = (fwd, x, extra) => { const out = new (x.constructor)(n).fill(NaN); fwd({ x, out, n, ...extra }); return out; };
const runB = (x, g, extra) => { const dx = new (x.constructor)(n).fill(NaN); addon.geluBackward({ x, dout: g, dx, n, ...extra }); return dx; };
// The policy is applied on three sets of inputs, so that the large outputs of the bulk cannot
// hide an error in the small ones: everything, |x| <= 1.5, and the negative tail x < -3.
const sets = { all: () => true, small: (v) => Math.abs(v) <= 1.5, tail: (v) => v < -3 };
let inSet = sets.all;
const maxDiff = (a, b) => { let m = 0; for (let i = 0; i < a.length; i++) { if (!inSet(xr[i])) continue; const d = Math.abs(a[i] - b[i]); if (!(d <= m)) m = d; } return m; };
const maxAbs = (a) => { let m = 0; for (let i = 0; i < a.length; i++) if (inSet(xr[i])) m = Math.max(m, Math.abs(a[i])); return m; };
const ref = run(addon.geluForward, xr, { reference: true });
const fast = run(addon.geluForward, x32, {});
const plain = run(addon.geluForward, x32, { reference: true });
const refB = runB(xr, g64, { reference: true });
const fastB = runB(x32, g32, {});
const plainB = runB(x32, g32, { reference: true });
const result = { isa: addon.cpuInfo().isa, sets: {} };
for (const [name, fn] of Object.entries(sets)) {
  inSet = fn;
  result.sets[name] = {
    fwd: [maxDiff(fast, ref), maxDiff(plain, ref), maxAbs(ref)],
    bwd: [maxDiff(fastB, refB), maxDiff(plainB, refB), maxAbs(refB)],
  };
}
console.log(JSON.stringify(result));
`;

const EPS32 = 2 ** -23;

describe('float32 gelu accuracy, every ISA', () => {
  for (const isa of ['avx512', 'avx2', 'generic']) {
    it(`LUNA_ISA=${isa}`, () => {
      const out = execFileSync(process.execPath, ['-e', script], { env: { ...process.env, LUNA_ISA: isa }, encoding: 'utf8' });
      const r = JSON.parse(out.trim().split('\n').pop() as string) as { isa: string; sets: Record<string, { fwd: number[]; bwd: number[] }> };
      const ctx = `[ran ${r.isa}; reproduce with LUNA_TEST_SEED=${SEED}]`;
      if (process.env.LUNA_TEST_VERBOSE) console.log(isa, JSON.stringify(r));
      for (const [set, errs] of Object.entries(r.sets)) {
        for (const [what, [errFast, errPlain, max], factor] of [['forward', errs.fwd, 2], ['backward', errs.bwd, 3]] as const) {
          const bound = factor * errPlain + 4 * EPS32 * max;
          expect(Number.isFinite(errFast), `${set} ${what}: non-finite result ${ctx}`).toBe(true);
          expect(errFast, `${set} ${what}: fast error ${errFast} > ${factor} x plain ${errPlain} + 4 ulp x ${max} ${ctx}`).toBeLessThanOrEqual(bound);
        }
      }
    });
  }
});
