// Threads: the addon loads and computes in worker_threads, several at once and beside the main
// thread; a worker terminated mid-computation disturbs nobody; results are bitwise the same
// on every thread (the kernels' results never depend on who runs them or how many threads
// help); the one process-wide thread pool is shared, never multiplied; and async use of
// tensors is safe.
import * as fs from 'node:fs';
import { Worker } from 'node:worker_threads';
import { describe, expect, it } from 'vitest';
import * as lib from '../lib/index';
import { SEED, where } from './helpers';
import { LOAD_LIB, ROOT, compiledLib } from './subprocess';

// The workload every thread runs, as source so that the main thread and the workers run the
// very same code: a GEMM big enough to be split over the pool, fused attention forward and
// backward, and a few AdamW steps of a Luna encoder layer.
const WORKLOAD = String.raw`
const { ops, randn, tidy, nn, optim } = lib;
return tidy(() => {
  const mm = ops.matmul(randn([192, 160], { seed }), randn([160, 224], { seed: seed + 1 })).dataSync();
  const q = randn([2, 4, 64, 16], { seed: seed + 2, requiresGrad: true });
  const k = randn([2, 4, 96, 16], { seed: seed + 3, requiresGrad: true });
  const y = ops.packAttention(q, k, k);
  y.backward(randn(y.shape, { seed: seed + 4 }));
  const attn = y.dataSync(), dq = q.grad.dataSync(), dk = k.grad.dataSync();
  const layer = new nn.LunaEncoderLayer({ embedDim: 16, numHeads: 2, ffnDim: 32, seed });
  const opt = new optim.AdamW(layer.parameters(), { lr: 1e-2 });
  const x = randn([2, 12, 16], { seed: seed + 5 }), p = randn([2, 4, 16], { seed: seed + 6 });
  for (let i = 0; i < 5; i++) {
    tidy(() => {
      const o = layer.forward(x, p);
      ops.mean(ops.mul(o.x, o.x)).backward();
      opt.step();
      opt.zeroGrad();
    });
  }
  const w = layer.parameters()[0].dataSync();
  layer.dispose();
  return { mm, attn, dq, dk, w };
});
`;

type Result = Record<string, Float32Array>;
const workload = new Function('lib', 'seed', WORKLOAD) as (l: typeof lib, seed: number) => Result;

/** The worker side: load lib/, then run `body` with `ARGS`, posting messages through `post`. */
function startWorker(body: string, args: unknown): Worker {
  const prologue = String.raw`
const { workerData, parentPort } = require('node:worker_threads');
const SOURCES = workerData.sources, ROOT = workerData.root, ARGS = workerData.args;
const post = (m) => parentPort.postMessage(m);
` + LOAD_LIB;
  return new Worker(prologue + body, { eval: true, workerData: { sources: compiledLib(), root: ROOT, args } });
}

/** Resolves with the first message a worker posts (rejects on an error or an early exit). */
function firstMessage<T>(w: Worker): Promise<T> {
  return new Promise((resolve, reject) => {
    w.once('message', resolve);
    w.once('error', reject);
    w.once('exit', (code) => reject(new Error(`worker exited with code ${code} before answering`)));
  });
}

const RUN_WORKLOAD = String.raw`
const run = new Function('lib', 'seed', ARGS.workload);
const results = [];
for (let i = 0; i < ARGS.repeat; i++) results.push(run(lib, ARGS.seed));
post({ results, threads: lib.getNumThreads() });
`;

function firstDifference(a: Result, b: Result): string | null {
  for (const key of Object.keys(a)) {
    const x = Buffer.from(a[key].buffer, a[key].byteOffset, a[key].byteLength);
    const y = Buffer.from(b[key].buffer, b[key].byteOffset, b[key].byteLength);
    if (!x.equals(y)) return key;
  }
  return null;
}

/** Names of this process's threads that belong to the addon's pool (Linux only). */
function poolThreads(): number | null {
  if (process.platform !== 'linux') return null;
  let n = 0;
  for (const task of fs.readdirSync('/proc/self/task')) {
    try {
      if (fs.readFileSync(`/proc/self/task/${task}/comm`, 'utf8').trim() === 'luna-pool') n++;
    } catch {
      // The thread ended while we looked.
    }
  }
  return n;
}

const seed = SEED % 100_000;

describe('worker_threads', () => {
  it('four workers and the main thread compute the same bits at the same time, on one shared pool', async () => {
    const expected = workload(lib, seed);
    const workers = Array.from({ length: 4 }, () => startWorker(RUN_WORKLOAD, { workload: WORKLOAD, seed, repeat: 3 }));
    const answers = workers.map((w) => firstMessage<{ results: Result[]; threads: number }>(w));
    // Compute on the main thread meanwhile (the pool is contended), and look at the pool.
    const pools: (number | null)[] = [];
    for (let i = 0; i < 3; i++) {
      expect(firstDifference(workload(lib, seed), expected), where('main during workers')).toBeNull();
      pools.push(poolThreads());
      await new Promise((r) => setTimeout(r, 10));
    }
    const got = await Promise.all(answers);
    await Promise.all(workers.map((w) => w.terminate()));
    got.forEach(({ results, threads }, i) => {
      expect(threads).toBe(lib.getNumThreads());
      results.forEach((r, j) => expect(firstDifference(r, expected), where(`worker ${i} run ${j}`)).toBeNull());
    });
    // One pool for the process: the workers did not start pools of their own.
    if (pools[0] !== null) for (const n of pools) expect(n).toBe(lib.getNumThreads() - 1);
  });

  it('a worker terminated in the middle of its work disturbs neither the others nor the process', async () => {
    const expected = workload(lib, seed);
    const spinner = startWorker(
      String.raw`
const { ops, randn, tidy } = lib;
const a = randn([384, 384], { seed: 1 }), b = randn([384, 384], { seed: 2 });
for (let i = 0; ; i++) {
  tidy(() => ops.matmul(a, b).dataSync());
  if (i === 0) post('busy');
}
`,
      null,
    );
    await firstMessage<string>(spinner);
    const others = [0, 1].map(() => startWorker(RUN_WORKLOAD, { workload: WORKLOAD, seed, repeat: 2 }));
    const answers = others.map((w) => firstMessage<{ results: Result[] }>(w));
    await new Promise((r) => setTimeout(r, 30));
    const code = await spinner.terminate();
    expect(code).toBe(1); // terminated, not crashed or finished
    for (const { results } of await Promise.all(answers)) {
      for (const r of results) expect(firstDifference(r, expected), where('beside a terminated worker')).toBeNull();
    }
    await Promise.all(others.map((w) => w.terminate()));
    // The main thread and a fresh worker still compute the same bits.
    expect(firstDifference(workload(lib, seed), expected), where('main after terminate')).toBeNull();
    const fresh = startWorker(RUN_WORKLOAD, { workload: WORKLOAD, seed, repeat: 1 });
    const { results } = await firstMessage<{ results: Result[] }>(fresh);
    await fresh.terminate();
    expect(firstDifference(results[0], expected), where('fresh worker')).toBeNull();
  });

  it('resizing the pool from a worker while others compute changes no result', async () => {
    const expected = workload(lib, seed);
    const before = lib.getNumThreads();
    const resizer = startWorker(
      String.raw`
for (let i = 0; i < 40; i++) lib.setNumThreads(1 + (i % 3));
lib.setNumThreads(ARGS.restore);
post('done');
`,
      { restore: before },
    );
    const worker = startWorker(RUN_WORKLOAD, { workload: WORKLOAD, seed, repeat: 2 });
    const answer = firstMessage<{ results: Result[] }>(worker);
    const mine = workload(lib, seed);
    await firstMessage<string>(resizer);
    const { results } = await answer;
    await Promise.all([resizer.terminate(), worker.terminate()]);
    expect(firstDifference(mine, expected), where('main while resizing')).toBeNull();
    for (const r of results) expect(firstDifference(r, expected), where('worker while resizing')).toBeNull();
    expect(lib.getNumThreads()).toBe(before);
  });
});

describe('async use', () => {
  it('data() copies at the call, so a dispose right after cannot change what it resolves to', async () => {
    const t = lib.randn([4096], { seed: 9 });
    const want = t.dataSync();
    const pending = t.data();
    t.dispose();
    // The freed buffer goes back to the pool and is handed out (and overwritten) again.
    lib.ones([4096]).dispose();
    expect(await pending).toEqual(want);
    await expect(t.data()).rejects.toMatchObject({ code: 'ERR_DISPOSED' });
  });

  it('many interleaved async tasks compute what a serial loop computes', async () => {
    const inputs = Array.from({ length: 40 }, (_, i) => lib.randn([64, 64], { seed: seed + i }));
    const serial = inputs.map((x) => lib.tidy(() => lib.ops.matmul(x, x).dataSync()));
    const tick = (): Promise<void> => new Promise((r) => setImmediate(r));
    const parallel = await Promise.all(
      inputs.map(async (x, i) => {
        await tick();
        const y = lib.tidy(() => lib.ops.gelu(lib.ops.matmul(x, x)));
        await tick();
        const z = lib.tidy(() => lib.ops.matmul(x, x));
        const [, data] = await Promise.all([y.data(), z.data()]);
        y.dispose();
        z.dispose();
        return [i, data] as const;
      }),
    );
    for (const [i, data] of parallel) expect(data, where(`task ${i}`)).toEqual(serial[i]);
    inputs.forEach((x) => x.dispose());
  });
});
