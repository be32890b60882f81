// Soak: 10,000 training steps of a small Luna encoder layer with AdamW, each step in a tidy
// scope, sampling the resident set size and the library's live counters. A leak of tensors,
// of storages held by graphs, or of native memory shows as a trend between the early and the
// late samples. The numbers are printed so a run can be compared with the last.
import * as v8 from 'node:v8';
import * as vm from 'node:vm';
import { describe, expect, it } from 'vitest';
import { manualSeed, memoryStats, nn, ops, optim, randn, tidy } from '../lib/index';
import { SEED, where } from './helpers';

v8.setFlagsFromString('--expose-gc');
const gc = vm.runInNewContext('gc') as () => void;

const STEPS = 10_000;
const SAMPLE_EVERY = 250;

interface Sample {
  step: number;
  rssMB: number;
  liveTensors: number;
  liveStorages: number;
  liveBytes: number;
}

function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  return s.length % 2 === 1 ? s[(s.length - 1) / 2] : (s[s.length / 2 - 1] + s[s.length / 2]) / 2;
}

describe('soak', () => {
  it(`${STEPS} AdamW steps of nn.LunaEncoderLayer (d=16): no growth in RSS or live tensors`, () => {
    const seed = SEED % 100_000;
    manualSeed(seed); // the dropout masks come from the global stream
    const layer = new nn.LunaEncoderLayer({ embedDim: 16, numHeads: 2, ffnDim: 32, dropout: 0.1, seed });
    const opt = new optim.AdamW(layer.parameters(), { lr: 1e-3 });
    const x = randn([2, 8, 16], { seed: seed + 1 });
    const p = randn([2, 4, 16], { seed: seed + 2 });
    const target = randn([2, 8, 16], { seed: seed + 3 });
    const samples: Sample[] = [];
    const losses: number[] = [];
    const start = performance.now();
    for (let step = 0; step < STEPS; step++) {
      const loss = tidy(() => {
        const out = layer.forward(x, p);
        const diff = ops.sub(out.x, target);
        const l = ops.mean(ops.mul(diff, diff));
        l.backward();
        opt.step();
        opt.zeroGrad();
        return step % SAMPLE_EVERY === 0 ? l.dataSync()[0] : 0;
      });
      if (step % SAMPLE_EVERY === 0) {
        losses.push(loss);
        // A full collection first, so that RSS shows what is retained, not garbage not yet swept.
        gc();
        const m = memoryStats();
        samples.push({
          step,
          rssMB: process.memoryUsage().rss / 2 ** 20,
          liveTensors: m.liveTensors,
          liveStorages: m.liveStorages,
          liveBytes: m.liveBytes,
        });
      }
    }
    const seconds = (performance.now() - start) / 1000;
    // Early: after a warm-up of 1,000 steps (heap and pool grow to their working size); late:
    // the last quarter.
    const early = samples.filter((s) => s.step >= 1000 && s.step < 3500);
    const late = samples.slice(-10);
    const rssEarly = median(early.map((s) => s.rssMB));
    const rssLate = median(late.map((s) => s.rssMB));
    const summary =
      `soak: ${STEPS} steps in ${seconds.toFixed(1)} s (${((seconds / STEPS) * 1000).toFixed(2)} ms/step); ` +
      `RSS first ${samples[0].rssMB.toFixed(1)} MB, early median ${rssEarly.toFixed(1)} MB, late median ${rssLate.toFixed(1)} MB; ` +
      `live tensors ${samples[0].liveTensors} -> ${samples[samples.length - 1].liveTensors}, ` +
      `live storages ${samples[0].liveStorages} -> ${samples[samples.length - 1].liveStorages}; ` +
      `loss ${losses[0].toFixed(4)} -> ${losses[losses.length - 1].toFixed(4)}`;
    console.log(summary);
    const info = `${where('soak')}\n${summary}\n${JSON.stringify(samples)}`;

    // The library's own counters must not move at all: every step frees what it made.
    for (const s of samples) {
      expect(s.liveTensors, info).toBe(samples[0].liveTensors);
      expect(s.liveStorages, info).toBe(samples[0].liveStorages);
      expect(s.liveBytes, info).toBe(samples[0].liveBytes);
    }
    // RSS may wander with the allocator, but a leak of even 2 KB per step would add ~12 MB
    // between the two windows; allow a little more than that for noise, not a trend.
    expect(rssLate - rssEarly, info).toBeLessThan(16);
    // And the model trained (no NaN, the loss went down).
    expect(losses.every((l) => Number.isFinite(l)), info).toBe(true);
    expect(losses[losses.length - 1], info).toBeLessThan(losses[0]);

    layer.dispose();
    for (const t of [x, p, target]) t.dispose();
  });
});
