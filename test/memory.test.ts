// Memory: tidy scopes and keep, the live counters of memoryStats, what happens to tensors that
// are garbage collected without dispose(), impossible sizes refused before anything is
// allocated, and files that are never left half-written or read past their end.
import fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import * as v8 from 'node:v8';
import * as vm from 'node:vm';
import { afterAll, afterEach, describe, expect, it, vi } from 'vitest';
import {
  deserializeSafetensors,
  emptyPool,
  keep,
  loadSafetensors,
  memoryStats,
  nn,
  ops,
  optim,
  poolStats,
  resetPeakBytes,
  randn,
  saveSafetensors,
  serializeSafetensors,
  tensor,
  tidy,
  zeros,
  type Tensor,
} from '../lib/index';
import { setAllocationLimit } from '../lib/pool';
import { expectLunaError, rngFor, randTensor } from './helpers';
import { describeChild, runChild } from './subprocess';

v8.setFlagsFromString('--expose-gc');
const gc = vm.runInNewContext('gc') as () => void;

/** Collects garbage and lets finalization callbacks run, until `done()` or a few rounds passed. */
async function collect(done: () => boolean = () => false): Promise<void> {
  for (let i = 0; i < 20 && !done(); i++) {
    gc();
    await new Promise((r) => setTimeout(r, 5));
  }
}

/** Lets earlier tests' garbage be collected and finalized, so that counters start settled. */
async function settle(): Promise<void> {
  for (let i = 0; i < 3; i++) {
    gc();
    await new Promise((r) => setTimeout(r, 5));
  }
}

/** Elements of a float32 buffer big enough to be pooled (the pool skips buffers under 64 KB). */
const POOLED = 32768;

describe('tidy', () => {
  it('disposes what fn created and returns its result alive', () => {
    const x = randn([3, 4], { seed: 1 });
    let inner: Tensor[] = [];
    const y = tidy(() => {
      const a = ops.add(x, x);
      const b = ops.mul(a, x);
      inner = [a, b];
      return ops.sum(b);
    });
    expect(inner.every((t) => t.isDisposed)).toBe(true);
    expect(y.isDisposed).toBe(false);
    expect(x.isDisposed).toBe(false); // created outside: not the scope's to free
    expect(memoryStats().tidyDepth).toBe(0);
    y.dispose();
    x.dispose();
  });

  it('spares tensors inside returned arrays, plain objects, Maps and Sets', () => {
    const r = tidy(() => {
      const t = () => zeros([2]);
      return { list: [t(), [t()]], obj: { deep: { t: t() } }, map: new Map([['k', t()]]), set: new Set([t()]), n: 3 };
    });
    const all = [r.list[0] as Tensor, (r.list[1] as Tensor[])[0], r.obj.deep.t, r.map.get('k') as Tensor, ...r.set];
    expect(all.every((t) => !t.isDisposed)).toBe(true);
    all.forEach((t) => t.dispose());
  });

  it('nests: an inner result belongs to the outer scope afterwards', () => {
    let fromInner: Tensor | null = null;
    const kept = tidy(() => {
      fromInner = tidy(() => zeros([2]));
      expect(fromInner.isDisposed).toBe(false);
      return tidy(() => ones2());
    });
    expect((fromInner as unknown as Tensor).isDisposed).toBe(true);
    expect(kept.isDisposed).toBe(false);
    kept.dispose();
  });

  it('is exception-safe: everything created is disposed and the error propagates', () => {
    const made: Tensor[] = [];
    const before = memoryStats();
    expect(() =>
      tidy(() => {
        made.push(zeros([4]), zeros([POOLED]));
        tidy(() => made.push(zeros([3])));
        throw new Error('boom');
      }),
    ).toThrow('boom');
    expect(made.every((t) => t.isDisposed)).toBe(true);
    const after = memoryStats();
    expect(after.tidyDepth).toBe(0);
    expect(after.liveTensors).toBe(before.liveTensors);
    expect(after.liveStorages).toBe(before.liveStorages);
  });

  it('refuses a Promise result (async work is not covered) and a non-function', async () => {
    let made: Tensor | null = null;
    expectLunaError(() => tidy((async () => { made = zeros([1]); }) as never), 'ERR_ARGUMENT', /Promise/);
    expect((made as unknown as Tensor).isDisposed).toBe(true);
    expectLunaError(() => tidy(3 as never), 'ERR_ARGUMENT', /tidy: fn/);
    await Promise.resolve();
  });

  it('keep() exempts a tensor; keep of a non-tensor is refused', () => {
    let kept: Tensor | null = null;
    let other: Tensor | null = null;
    const r = tidy(() => {
      kept = keep(zeros([2]));
      other = zeros([3]);
      return null;
    });
    expect(r).toBeNull();
    expect((kept as unknown as Tensor).isDisposed).toBe(false);
    expect((other as unknown as Tensor).isDisposed).toBe(true);
    (kept as unknown as Tensor).dispose();
    expectLunaError(() => keep({} as never), 'ERR_ARGUMENT', /keep: t expected a Tensor/);
    expectLunaError(() => keep(null as never), 'ERR_ARGUMENT');
  });

  it('module parameters, leaf gradients and optimizer steps survive the scopes they were made in', () => {
    const model = tidy(() => new nn.Linear({ inFeatures: 3, outFeatures: 2, seed: 4 }));
    const params = model.parameters();
    expect(params.every((p) => !p.isDisposed)).toBe(true);
    const opt = new optim.AdamW(params, { lr: 0.1 });
    const x = randn([5, 3], { seed: 5 });
    const w0 = model.weight.dataSync();
    for (let step = 0; step < 3; step++) {
      tidy(() => {
        const loss = ops.mean(ops.mul(model.forward(x), model.forward(x)));
        loss.backward();
        expect(model.weight.grad).not.toBeNull();
        opt.step();
      });
      // The gradients outlived the scope; zeroGrad frees them.
      expect(model.weight.grad?.isDisposed).toBe(false);
      opt.zeroGrad();
    }
    expect(model.weight.dataSync()).not.toEqual(w0);
    // A gradient assigned by hand inside a scope is the leaf's too.
    tidy(() => {
      model.bias!.grad = zeros([2]);
    });
    expect(model.bias!.grad!.isDisposed).toBe(false);
    model.dispose();
    x.dispose();
  });

  it('a returned loss can still be backpropagated after its intermediates were freed', () => {
    const x = tensor([1, 2, 3], { dtype: 'float64', requiresGrad: true });
    const inner: Tensor[] = [];
    const loss = tidy(() => {
      const a = ops.add(x, x);
      const b = ops.mul(a, x);
      inner.push(a, b);
      return ops.sum(b); // sum(2 x^2)
    });
    expect(inner.every((t) => t.isDisposed)).toBe(true);
    loss.backward();
    expect(Array.from(x.grad!.dataSync())).toEqual([4, 8, 12]);
    loss.dispose();
    x.dispose();
  });

  it('frees graph branches that nothing surviving the scope depends on', () => {
    const layer = new nn.LunaEncoderLayer({ embedDim: 8, numHeads: 2, ffnDim: 16, seed: 1 });
    const x = randn([2, 5, 8], { seed: 2, requiresGrad: true });
    const p = randn([2, 3, 8], { seed: 3 });
    const before = memoryStats();
    tidy(() => {
      // Only X feeds the loss: the updated P's graph never runs its backward.
      const out = layer.forward(x, p);
      ops.sum(out.x).backward();
    });
    x.grad!.dispose();
    x.grad = null;
    for (const q of layer.parameters()) {
      q.grad?.dispose();
      q.grad = null;
    }
    const after = memoryStats();
    expect(after.liveTensors).toBe(before.liveTensors);
    expect(after.liveStorages).toBe(before.liveStorages);
    expect(after.liveBytes).toBe(before.liveBytes);
    layer.dispose();
    x.dispose();
    p.dispose();
  });
});

function ones2(): Tensor {
  return tensor([1, 1]);
}

describe('memoryStats and forgotten tensors', () => {
  it('counts tensors and storages; views share a storage', () => {
    const s0 = memoryStats();
    const a = zeros([10]);
    const v = a.detach();
    const s1 = memoryStats();
    expect(s1.liveTensors - s0.liveTensors).toBe(2);
    expect(s1.liveStorages - s0.liveStorages).toBe(1);
    expect(s1.liveBytes - s0.liveBytes).toBe(40);
    a.dispose();
    expect(memoryStats().liveStorages - s0.liveStorages).toBe(1); // v still holds it
    v.dispose();
    const s2 = memoryStats();
    expect(s2.liveTensors).toBe(s0.liveTensors);
    expect(s2.liveStorages).toBe(s0.liveStorages);
    expect(s2.pool).toEqual(poolStats());
  });

  it('a forgotten tensor is counted gone after collection and its pooled buffer returns to the pool', async () => {
    await settle();
    emptyPool();
    const s0 = memoryStats();
    (() => {
      zeros([POOLED]);
    })();
    const free0 = poolStats().freeBytes;
    expect(memoryStats().liveTensors).toBe(s0.liveTensors + 1);
    await collect(() => memoryStats().liveTensors === s0.liveTensors);
    expect(memoryStats().liveTensors).toBe(s0.liveTensors);
    expect(memoryStats().liveStorages).toBe(s0.liveStorages);
    expect(poolStats().freeBytes - free0).toBe(POOLED * 4);
  });

  it('a forgotten tensor releases only its own reference: a detached view keeps the data', async () => {
    await settle();
    emptyPool();
    const s0 = memoryStats();
    const view = (() => tensor(new Float32Array(POOLED).fill(3)).detach())();
    await collect(() => memoryStats().liveTensors === s0.liveTensors + 1);
    expect(memoryStats().liveTensors).toBe(s0.liveTensors + 1);
    expect(memoryStats().liveStorages).toBe(s0.liveStorages + 1);
    const data = view.dataSync();
    expect(data.every((x) => x === 3)).toBe(true);
    const free0 = poolStats().freeBytes;
    view.dispose();
    expect(poolStats().freeBytes - free0).toBe(POOLED * 4);
  });

  it('dispose() then collection releases the buffer exactly once', async () => {
    emptyPool();
    const free0 = poolStats().freeBytes;
    (() => {
      const t = zeros([POOLED]);
      t.dispose();
      t.dispose();
    })();
    expect(poolStats().freeBytes - free0).toBe(POOLED * 4);
    await collect();
    expect(poolStats().freeBytes - free0).toBe(POOLED * 4);
  });

  it('storages kept by a graph that never ran are uncounted once collected', async () => {
    await settle();
    const s0 = memoryStats();
    (() => {
      const x = randn([64, 64], { seed: 1, requiresGrad: true });
      const y = ops.gelu(ops.mul(x, x)); // the nodes retain x and x*x
      x.dispose();
      y.dispose();
    })();
    expect(memoryStats().liveStorages).toBeGreaterThan(s0.liveStorages);
    await collect(() => memoryStats().liveStorages === s0.liveStorages);
    expect(memoryStats().liveStorages).toBe(s0.liveStorages);
    expect(memoryStats().liveBytes).toBe(s0.liveBytes);
    expect(memoryStats().liveTensors).toBe(s0.liveTensors);
  });
});

describe('impossible sizes are refused before anything is allocated', () => {
  afterEach(() => {
    setAllocationLimit(null);
  });

  it('over 2^31 - 1 elements, from creation and from ops', () => {
    expectLunaError(() => zeros([2 ** 31]), 'ERR_ARGUMENT', /shape/);
    expectLunaError(() => randn([65536, 65536]), 'ERR_ARGUMENT', /2\^31 - 1/);
    expectLunaError(() => tensor([], { shape: [2 ** 20, 2 ** 20] }), 'ERR_ARGUMENT', /options.shape/);
    const col = zeros([65536, 1]);
    const row = zeros([1, 65536]);
    expectLunaError(() => ops.add(col, row), 'ERR_ARGUMENT', /add: the broadcast shape of a and b/);
    expectLunaError(() => ops.matmul(zeros([65536, 64, 1]), zeros([1, 1024])), 'ERR_ARGUMENT', /matmul/);
    const ids = tensor(new Int32Array(65536), { dtype: 'int32' });
    expectLunaError(() => ops.embedding(ids, zeros([2, 65536])), 'ERR_ARGUMENT', /embedding: the output shape/);
    expectLunaError(() => new nn.Linear({ inFeatures: 65536, outFeatures: 65536 }), 'ERR_ARGUMENT', /nn.Linear/);
  });

  it('more bytes than the allocation limit (the machine, or LUNA_MAX_ALLOC_MB)', () => {
    const rss0 = process.memoryUsage().rss;
    setAllocationLimit(64 * 2 ** 20);
    expectLunaError(() => zeros([2 ** 24], { dtype: 'float64' }), 'ERR_ARGUMENT', /zeros: the memory of the result expected at most 64.0 MiB.*128.0 MiB/);
    expectLunaError(() => randn([2 ** 25]), 'ERR_ARGUMENT', /LUNA_MAX_ALLOC_MB/);
    const col = zeros([8192, 1]);
    const row = zeros([1, 8192]);
    expectLunaError(() => ops.add(col, row), 'ERR_ARGUMENT', /add: the memory of the result/);
    expectLunaError(() => ops.matmul(zeros([4096, 64, 1]), zeros([1, 4096])), 'ERR_ARGUMENT', /matmul/);
    expectLunaError(
      () => new nn.LunaEncoderLayer({ embedDim: 8192, numHeads: 1, ffnDim: 16 }),
      'ERR_ARGUMENT',
      /memory of the result/,
    );
    // What a header promises is checked against the file before anything is allocated.
    const header = JSON.stringify({ w: { dtype: 'F64', shape: [2 ** 31 - 1], data_offsets: [0, (2 ** 31 - 1) * 8] } });
    const bytes = new Uint8Array(8 + header.length);
    new DataView(bytes.buffer).setBigUint64(0, BigInt(header.length), true);
    bytes.set(Buffer.from(header), 8);
    expectLunaError(() => deserializeSafetensors(bytes), 'ERR_ARGUMENT', /outside the 0-byte data section/);
    // None of it touched memory: a refused 16 GiB or 4 GiB request would show here.
    expect(process.memoryUsage().rss - rss0).toBeLessThan(200 * 2 ** 20);
    // A possible size still works under the limit.
    expect(zeros([1000]).size).toBe(1000);
  });

  it('LUNA_MAX_ALLOC_MB is read from the environment', () => {
    const r = runChild(
      String.raw`
let code = 'none';
try { lib.zeros([2 ** 24], { dtype: 'float64' }); } catch (e) { code = e.code + ' ' + e.message; }
process.stdout.write(JSON.stringify({ code, small: lib.zeros([1024], { dtype: 'float64' }).size }));
`,
      null,
      { env: { ...process.env, LUNA_MAX_ALLOC_MB: '16' } },
    );
    expect(r.status, describeChild(r)).toBe(0);
    const out = r.json as { code: string; small: number };
    expect(out.code).toMatch(/^ERR_ARGUMENT .*at most 16.0 MiB/);
    expect(out.small).toBe(1024);
  });
});

describe('files', () => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'luna-memory-'));
  afterAll(() => fs.rmSync(dir, { recursive: true, force: true }));

  it('a save that fails on an unserializable or disposed tensor leaves the old file intact', () => {
    const file = path.join(dir, 'model.safetensors');
    const good = { w: randTensor(rngFor('file w'), [4, 3], { dtype: 'float32' }) };
    saveSafetensors(file, good);
    const original = fs.readFileSync(file);
    const gone = zeros([2]);
    gone.dispose();
    const bad: [Record<string, unknown>, string][] = [
      [{ w: good.w, gone }, 'ERR_DISPOSED'],
      [{ w: good.w, junk: new Float32Array(3) }, 'ERR_ARGUMENT'],
      [{ w: good.w, __metadata__: good.w }, 'ERR_ARGUMENT'],
    ];
    for (const [dict, code] of bad) {
      expectLunaError(() => saveSafetensors(file, dict as never), code);
      expect(fs.readFileSync(file).equals(original)).toBe(true);
    }
    expect(fs.readdirSync(dir).filter((f) => f.endsWith('.tmp'))).toEqual([]);
    expect(Array.from(loadSafetensors(file).w.dataSync())).toEqual(Array.from(good.w.dataSync()));
  });

  it('a header that claims more data than the file has is refused before any data is read', () => {
    const file = path.join(dir, 'short.safetensors');
    const full = serializeSafetensors({ a: randn([256], { seed: 3 }), b: randn([1000, 1000], { seed: 4 }) });
    fs.writeFileSync(file, full.subarray(0, full.length - 100));
    const spy = vi.spyOn(fs, 'readSync');
    try {
      expectLunaError(() => loadSafetensors(file), 'ERR_ARGUMENT', /data section/);
      // The length prefix and the header, nothing more.
      expect(spy.mock.calls.length).toBeLessThanOrEqual(2);
    } finally {
      spy.mockRestore();
    }
  });
});

describe('peakBytes', () => {
  it('records the most live bytes since the last resetPeakBytes', () => {
    const base = memoryStats().liveBytes;
    resetPeakBytes();
    expect(memoryStats().peakBytes).toBe(base);
    const a = zeros([1000]); // 4000 bytes
    const b = zeros([500]); // 2000 bytes
    a.dispose();
    const s = memoryStats();
    expect(s.liveBytes).toBe(base + 2000);
    expect(s.peakBytes).toBe(base + 6000);
    resetPeakBytes();
    expect(memoryStats().peakBytes).toBe(base + 2000);
    b.dispose();
    expect(memoryStats().peakBytes).toBe(base + 2000);
  });
});
