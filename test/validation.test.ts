// Argument validation: bad calls are refused with a LunaError carrying the right code and a
// message that names the argument. Then the raw addon, bypassing lib/: wrong types and short
// arrays must raise a JS error and never crash the process (run in a child process, since a
// crash would take the test worker down with it).
import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { fileURLToPath } from 'node:url';
import { describe, expect, it } from 'vitest';
import { gradcheck, ops, setNumThreads, tensor, zeros, type Tensor } from '../lib/index';
import { expectLunaError, maskTensor, randTensor, rngFor } from './helpers';

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');

type Op = (q: Tensor, k: Tensor, v: Tensor, options?: Record<string, unknown>) => Tensor;
const OPS: [string, Op][] = [
  ['packAttention', ops.packAttention as Op],
  ['unpackAttention', ops.unpackAttention as Op],
];

const f32 = (shape: number[]) => zeros(shape, { dtype: 'float32' });
const f64 = (shape: number[]) => zeros(shape, { dtype: 'float64' });

describe.each(OPS)('%s argument validation', (name, op) => {
  const B = 2, h = 3, lq = 4, lk = 5, dh = 6;
  const q = () => f32([B, h, lq, dh]);
  const kv = () => f32([B, h, lk, dh]);

  it('accepts a well-formed call (the baseline the cases below break)', () => {
    const y = op(q(), kv(), kv(), { keyPaddingMask: zeros([B, lk], { dtype: 'bool' }), scale: 0.5 });
    expect(y.shape).toEqual([B, h, lq, dh]);
    expect(y.dtype).toBe('float32');
  });

  it('wrong rank -> ERR_SHAPE naming the tensor', () => {
    expectLunaError(() => op(f32([B, lq, dh]), kv(), kv()), 'ERR_SHAPE', /\bq\b/);
    expectLunaError(() => op(q(), f32([1, B, h, lk, dh]), kv()), 'ERR_SHAPE', /\bk\b/);
    expectLunaError(() => op(q(), kv(), f32([B * h, lk, dh])), 'ERR_SHAPE', /\bv\b/);
  });

  it('mismatched B, h or dh -> ERR_SHAPE naming the tensor', () => {
    expectLunaError(() => op(q(), f32([B + 1, h, lk, dh]), f32([B + 1, h, lk, dh])), 'ERR_SHAPE', /\bk\b/);
    expectLunaError(() => op(q(), f32([B, h + 1, lk, dh]), f32([B, h + 1, lk, dh])), 'ERR_SHAPE', /\bk\b/);
    expectLunaError(() => op(q(), f32([B, h, lk, dh + 1]), f32([B, h, lk, dh + 1])), 'ERR_SHAPE', /\bk\b/);
    expectLunaError(() => op(q(), kv(), f32([B, h, lk, dh + 1])), 'ERR_SHAPE', /\bv\b/);
    expectLunaError(() => op(q(), kv(), f32([B, h + 1, lk, dh])), 'ERR_SHAPE', /\bv\b/);
  });

  it('k and v of different lengths -> ERR_SHAPE naming v', () => {
    expectLunaError(() => op(q(), kv(), f32([B, h, lk + 1, dh])), 'ERR_SHAPE', /\bv\b/);
  });

  it('mask of the wrong dtype -> ERR_DTYPE naming keyPaddingMask', () => {
    expectLunaError(() => op(q(), kv(), kv(), { keyPaddingMask: f32([B, lk]) }), 'ERR_DTYPE', /keyPaddingMask/);
    expectLunaError(() => op(q(), kv(), kv(), { keyPaddingMask: f64([B, lk]) }), 'ERR_DTYPE', /keyPaddingMask/);
  });

  it('mask of the wrong shape -> ERR_SHAPE naming keyPaddingMask', () => {
    const bool = (shape: number[]) => zeros(shape, { dtype: 'bool' });
    expectLunaError(() => op(q(), kv(), kv(), { keyPaddingMask: bool([B, lk + 1]) }), 'ERR_SHAPE', /keyPaddingMask/);
    expectLunaError(() => op(q(), kv(), kv(), { keyPaddingMask: bool([B + 1, lk]) }), 'ERR_SHAPE', /keyPaddingMask/);
    expectLunaError(() => op(q(), kv(), kv(), { keyPaddingMask: bool([lk]) }), 'ERR_SHAPE', /keyPaddingMask/);
    // A query-length mask is the classic mix-up; it must not be accepted when lq != lk.
    expectLunaError(() => op(q(), kv(), kv(), { keyPaddingMask: bool([B, lq]) }), 'ERR_SHAPE', /keyPaddingMask/);
  });

  it('a mask that is not a Tensor -> ERR_ARGUMENT naming keyPaddingMask', () => {
    expectLunaError(() => op(q(), kv(), kv(), { keyPaddingMask: new Uint8Array(B * lk) }), 'ERR_ARGUMENT', /keyPaddingMask/);
  });

  it('mixed float32 / float64 -> ERR_DTYPE', () => {
    expectLunaError(() => op(f64([B, h, lq, dh]), kv(), kv()), 'ERR_DTYPE', /float32|float64/);
    expectLunaError(() => op(q(), f64([B, h, lk, dh]), kv()), 'ERR_DTYPE', /\bk\b/);
    expectLunaError(() => op(q(), kv(), f64([B, h, lk, dh])), 'ERR_DTYPE', /\bv\b/);
  });

  it('bool q / k / v -> ERR_DTYPE naming the tensor', () => {
    const b = (shape: number[]) => zeros(shape, { dtype: 'bool' });
    expectLunaError(() => op(b([B, h, lq, dh]), kv(), kv()), 'ERR_DTYPE', /\bq\b/);
    expectLunaError(() => op(b([B, h, lq, dh]), b([B, h, lk, dh]), b([B, h, lk, dh])), 'ERR_DTYPE', /\bq\b/);
    expectLunaError(() => op(q(), b([B, h, lk, dh]), kv()), 'ERR_DTYPE', /\bk\b/);
  });

  it('scale NaN / Infinity / string -> ERR_ARGUMENT naming scale', () => {
    for (const scale of [NaN, Infinity, -Infinity, '0.5', null, {}]) {
      expectLunaError(() => op(q(), kv(), kv(), { scale }), 'ERR_ARGUMENT', /scale/, `(scale = ${String(scale)})`);
    }
  });

  it('unknown option key -> ERR_ARGUMENT naming it', () => {
    expectLunaError(() => op(q(), kv(), kv(), { keyPaddingmask: null }), 'ERR_ARGUMENT', /keyPaddingmask/);
    expectLunaError(() => op(q(), kv(), kv(), { dropOut: 0 }), 'ERR_ARGUMENT', /dropOut/);
    // dropout is an option now: out of range, or with a bad seed, it is refused by name.
    expectLunaError(() => op(q(), kv(), kv(), { dropout: 1 }), 'ERR_ARGUMENT', /options.dropout/);
    expectLunaError(() => op(q(), kv(), kv(), { dropout: 0.1, seed: -1 }), 'ERR_ARGUMENT', /options.seed/);
  });

  it('options that are not an object -> ERR_ARGUMENT', () => {
    expectLunaError(() => (op as unknown as (...a: unknown[]) => Tensor)(q(), kv(), kv(), 0.5), 'ERR_ARGUMENT', /option/i);
  });

  it('non-tensor inputs -> ERR_ARGUMENT naming the argument', () => {
    const bad = op as unknown as (...a: unknown[]) => Tensor;
    expectLunaError(() => bad([[1]], kv(), kv()), 'ERR_ARGUMENT', /\bq\b/);
    expectLunaError(() => bad(q(), new Float32Array(B * h * lk * dh), kv()), 'ERR_ARGUMENT', /\bk\b/);
    expectLunaError(() => bad(q(), kv()), 'ERR_ARGUMENT', /\bv\b/);
  });

  it('a disposed input -> ERR_DISPOSED naming it', () => {
    const k = kv();
    k.dispose();
    expectLunaError(() => op(q(), k, kv()), 'ERR_DISPOSED', /\bk\b/);
    const m = zeros([B, lk], { dtype: 'bool' });
    m.dispose();
    expectLunaError(() => op(q(), kv(), kv(), { keyPaddingMask: m }), 'ERR_DISPOSED', /keyPaddingMask/);
  });

  it('failed validation leaves no partial state: the next good call works', () => {
    const rng = rngFor(`${name} after error`);
    const qq = randTensor(rng, [B, h, lq, dh], { requiresGrad: true });
    const kk = randTensor(rng, [B, h, lk, dh], { requiresGrad: true });
    expectLunaError(() => op(qq, kk, kk, { scale: NaN }), 'ERR_ARGUMENT');
    const y = op(qq, kk, kk, { keyPaddingMask: maskTensor(new Uint8Array(B * lk), B, lk) });
    y.backward(randTensor(rng, y.shape));
    expect(qq.grad!.shape).toEqual([B, h, lq, dh]);
  });
});

describe('gradcheck validation', () => {
  it('float32 inputs -> ERR_DTYPE', () => {
    const q = randTensor(rngFor('gc f32'), [1, 1, 2, 3], { dtype: 'float32', requiresGrad: true });
    const k = randTensor(rngFor('gc f32 k'), [1, 1, 4, 3], { dtype: 'float32', requiresGrad: true });
    expectLunaError(() => gradcheck((a: Tensor, b: Tensor) => ops.packAttention(a, b, b), [q, k]), 'ERR_DTYPE', /float64/);
  });
});

describe('runtime validation', () => {
  it('setNumThreads refuses non-positive or non-integer counts', () => {
    for (const n of [0, -1, 1.5, NaN, '2']) {
      expectLunaError(() => setNumThreads(n as number), 'ERR_ARGUMENT', /thread|setNumThreads/i, `(n = ${String(n)})`);
    }
  });

  it('tensor() with a bad option -> ERR_ARGUMENT naming it', () => {
    expectLunaError(() => tensor([1, 2], { shap: [2] } as never), 'ERR_ARGUMENT', /shap/);
    expectLunaError(() => tensor([1, 2], { requiresGrad: 'yes' } as never), 'ERR_ARGUMENT', /requiresGrad/);
  });

  it('requiresGrad on a bool tensor -> ERR_DTYPE', () => {
    expectLunaError(() => tensor([1, 0], { dtype: 'bool', requiresGrad: true }), 'ERR_DTYPE', /requiresGrad|dtype/);
  });
});

// ---- The raw addon, abused, in a child process ----
//
// Each case calls an addon function with something lib/ would never pass. Every call must throw
// a JS Error (the child catches it); a case that returns normally is reported, and a crash
// (segfault, abort) shows as a signal or a non-zero exit status.
const ABUSE_SCRIPT = String.raw`
const root = process.argv[2];
const addon = require(require.resolve('node-gyp-build', { paths: [root] }))(root);
const B = 2, h = 2, lq = 3, lk = 5, dh = 4;
const F = (n, T = Float32Array) => new T(n);
function fwd(T = Float32Array) {
  return { q: F(B*h*lq*dh, T), k: F(B*h*lk*dh, T), v: F(B*h*lk*dh, T), mask: null,
           out: F(B*h*lq*dh, T), lse: F(B*h*lq, T), B, h, lq, lk, dh, scale: 0.5 };
}
function bwd(T = Float32Array) {
  return Object.assign(fwd(T), { dout: F(B*h*lq*dh, T), dq: F(B*h*lq*dh, T), dk: F(B*h*lk*dh, T), dv: F(B*h*lk*dh, T) });
}
const cases = [];
const names = { packForward: 0, unpackForward: 0, referenceForward: 0, packBackward: 1, unpackBackward: 1, referenceBackward: 1 };
for (const [fn, isBwd] of Object.entries(names)) {
  const base = () => (isBwd ? bwd() : fwd());
  const add = (what, mutate) => cases.push([fn + ': ' + what, () => { const a = base(); const r = mutate(a); addon[fn](r === undefined ? a : r); }]);
  // The baseline must succeed, or every case below would pass for the wrong reason.
  cases.push([fn + ': baseline', () => addon[fn](base()), true]);
  cases.push([fn + ': baseline float64', () => addon[fn](isBwd ? bwd(Float64Array) : fwd(Float64Array)), true]);
  cases.push([fn + ': no argument', () => addon[fn]()]);
  add('null', () => null);
  add('a number', () => 42);
  add('q missing', (a) => { delete a.q; });
  add('q a plain array', (a) => { a.q = Array.from(a.q); });
  add('q an Int32Array', (a) => { a.q = new Int32Array(a.q.length); });
  add('q an ArrayBuffer', (a) => { a.q = a.q.buffer; });
  add('q too short', (a) => { a.q = a.q.subarray(1); });
  add('k too short', (a) => { a.k = a.k.subarray(0, a.k.length - 1); });
  add('v too short', (a) => { a.v = F(a.v.length - 1); });
  add('out too short', (a) => { a.out = F(a.out.length - 1); });
  add('lse too short', (a) => { a.lse = F(a.lse.length - 1); });
  add('lse missing', (a) => { delete a.lse; });
  add('mask too short', (a) => { a.mask = new Uint8Array(B * lk - 1); });
  add('mask a Float32Array', (a) => { a.mask = new Float32Array(B * lk); });
  add('mask a number', (a) => { a.mask = 1; });
  add('float64 q with float32 rest', (a) => { a.q = new Float64Array(a.q.length); });
  add('float64 out with float32 rest', (a) => { a.out = new Float64Array(a.out.length); });
  add('B zero', (a) => { a.B = 0; });
  add('B negative', (a) => { a.B = -2; });
  add('B fractional', (a) => { a.B = 1.5; });
  add('B NaN', (a) => { a.B = NaN; });
  add('B a string', (a) => { a.B = '2'; });
  add('dh missing', (a) => { delete a.dh; });
  add('lk huge (overflowing sizes)', (a) => { a.lk = 2 ** 53; });
  add('h * lq * dh overflowing int64', (a) => { a.h = 2 ** 40; a.lq = 2 ** 40; });
  // Every dimension below 2^31, but the element counts are multiples of 2^64: a binding that
  // multiplies sizes in wrapping 64-bit integers would see 0 and accept the empty arrays.
  add('sizes whose products wrap to 0 in 64 bits', (a) => {
    const Z = (T) => new T(0);
    const T = a.q.constructor;
    Object.assign(a, { B: 2 ** 30, h: 2 ** 30, lq: 16, lk: 16, dh: 2 ** 30, mask: null,
                       q: Z(T), k: Z(T), v: Z(T), out: Z(T), lse: Z(T) });
    if (isBwd) Object.assign(a, { dout: Z(T), dq: Z(T), dk: Z(T), dv: Z(T) });
  });
  add('scale a string', (a) => { a.scale = '0.5'; });
  add('scale missing', (a) => { delete a.scale; });
  add('sizes larger than the arrays', (a) => { a.lq = lq + 1; });
  if (isBwd) {
    add('dout too short', (a) => { a.dout = F(a.dout.length - 1); });
    add('dq too short', (a) => { a.dq = F(a.dq.length - 1); });
    add('dk too short', (a) => { a.dk = F(a.dk.length - 1); });
    add('dv too short', (a) => { a.dv = F(a.dv.length - 1); });
    add('dout missing', (a) => { delete a.dout; });
    add('tied k/v but separate dk and dv', (a) => { a.v = a.k; });
    add('dk a float64 array', (a) => { a.dk = new Float64Array(a.dk.length); });
  }
}
cases.push(['setNumThreads no argument', () => addon.setNumThreads()]);
cases.push(['setNumThreads a string', () => addon.setNumThreads('x')]);
cases.push(['setNumThreads 0', () => addon.setNumThreads(0)]);
cases.push(['setNumThreads -1', () => addon.setNumThreads(-1)]);
const problems = [];
for (const [name, fn, shouldPass] of cases) {
  try {
    fn();
    if (!shouldPass) problems.push(name + ': did not throw');
  } catch (e) {
    if (shouldPass) problems.push(name + ': threw ' + (e && e.message));
    else if (!(e instanceof Error)) problems.push(name + ': threw a non-Error ' + String(e));
  }
}
// The process is still healthy: a good call still works.
const a = fwd(Float64Array);
a.q.fill(1); a.k.fill(1); a.v.fill(2);
addon.packForward(a);
if (!a.out.every((x) => x === 2)) problems.push('after the abuse, a good call gave wrong results');
process.stdout.write(JSON.stringify({ count: cases.length, problems }));
`;

describe('raw addon abuse (child process)', () => {
  it('every bad call throws a JS Error, and the process survives', () => {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'luna-abuse-'));
    const file = path.join(dir, 'abuse.cjs');
    fs.writeFileSync(file, ABUSE_SCRIPT);
    try {
      const r = spawnSync(process.execPath, [file, ROOT], { cwd: ROOT, encoding: 'utf8', timeout: 60_000 });
      const info = `status=${r.status} signal=${r.signal}\nstdout: ${r.stdout}\nstderr: ${r.stderr}`;
      expect(r.signal, info).toBeNull();
      expect(r.status, info).toBe(0);
      const out = JSON.parse(r.stdout) as { count: number; problems: string[] };
      expect(out.count).toBeGreaterThan(100);
      expect(out.problems, info).toEqual([]);
    } finally {
      fs.rmSync(dir, { recursive: true, force: true });
    }
  });
});
