// CUDA where it cannot run: the addon these tests load (the CPU-only node-gyp build, or a CUDA
// build on a machine without a driver) must load, say why CUDA is unavailable, and refuse
// 'cuda' with ERR_DEVICE_UNAVAILABLE, never crash or fall back silently. The CUDA build made by
// `npm run prebuild` (CI makes it before the tests) is loaded in a child process, with no
// driver on CI's machine, to prove the statically linked runtime reports the missing driver.
import { spawnSync } from 'node:child_process';
import { existsSync } from 'node:fs';
import path from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { LunaError, backendInfo, memoryStats, emptyCache, defaultDevice, nn, ones, randn, tensor, zeros } from '../lib/index';

const available = backendInfo().cuda.available;
const root = path.resolve(__dirname, '..');
const prebuilt = path.join(root, 'prebuilds', 'linux-x64', 'node.napi.glibc.node');

function codeOf(fn: () => unknown): string {
  try {
    fn();
  } catch (err) {
    expect(err).toBeInstanceOf(LunaError);
    return (err as LunaError).code;
  }
  return 'no error';
}

describe.skipIf(available)('without a usable CUDA device (skipped here: this machine has one)', () => {
  const saved = process.env.LUNA_DEVICE;
  afterEach(() => {
    if (saved === undefined) delete process.env.LUNA_DEVICE;
    else process.env.LUNA_DEVICE = saved;
  });

  it('backendInfo says CUDA is unavailable, and why', () => {
    const info = backendInfo().cuda;
    expect(info.available).toBe(false);
    expect(info.deviceCount).toBe(0);
    expect(info.reason.length).toBeGreaterThan(10);
    expect(info.device).toBeNull();
  });

  it("device 'cuda' throws ERR_DEVICE_UNAVAILABLE with the reason, from every entry point", () => {
    const reason = backendInfo().cuda.reason;
    for (const make of [
      () => tensor([1, 2, 3], { device: 'cuda' }),
      () => zeros([2], { device: 'cuda' }),
      () => ones([2], { device: 'cuda' }),
      () => randn([2], { device: 'cuda' }),
      () => randn([2]).to('cuda'),
      () => new nn.Linear({ inFeatures: 2, outFeatures: 2, device: 'cuda' }),
    ]) {
      expect(codeOf(make)).toBe('ERR_DEVICE_UNAVAILABLE');
      expect(() => make()).toThrow(reason);
    }
  });

  it('an unknown device is ERR_DEVICE, a non-string ERR_ARGUMENT', () => {
    expect(codeOf(() => zeros([1], { device: 'gpu' as never }))).toBe('ERR_DEVICE');
    expect(codeOf(() => zeros([1], { device: 0 as never }))).toBe('ERR_ARGUMENT');
  });

  it('LUNA_DEVICE: cpu and auto give the CPU here, cuda refuses, anything else is named', () => {
    for (const v of ['cpu', 'auto', '']) {
      process.env.LUNA_DEVICE = v;
      expect(defaultDevice()).toBe('cpu');
      expect(zeros([2]).device).toBe('cpu');
    }
    process.env.LUNA_DEVICE = 'cuda';
    expect(codeOf(() => zeros([2]))).toBe('ERR_DEVICE_UNAVAILABLE');
    expect(() => zeros([2])).toThrow(/LUNA_DEVICE/);
    process.env.LUNA_DEVICE = 'gpu';
    expect(codeOf(() => zeros([2]))).toBe('ERR_ARGUMENT');
    expect(() => zeros([2])).toThrow(/LUNA_DEVICE.*cpu, cuda or auto.*"gpu"/);
  });

  it('memoryStats().cuda is all zeros and emptyCache() is harmless', () => {
    emptyCache();
    const s = memoryStats().cuda;
    expect(s).toEqual({ allocatedBytes: 0, reservedBytes: 0, peakAllocatedBytes: 0, cachedBlocks: 0, deviceMallocs: 0, deviceFrees: 0 });
  });
});

// The CUDA build, loaded where there is no driver (CI's machine, this one).
const hasPrebuilt = existsSync(prebuilt);
describe.skipIf(available || !hasPrebuilt)(
  `the CUDA prebuilt binary on a machine without a GPU${hasPrebuilt ? '' : ' (skipped: no prebuilds/linux-x64 binary; `npm run prebuild` makes it)'}`,
  () => {
    it('loads, reports CUDA compiled in but unavailable with the runtime error name, and refuses cuda', () => {
      // The compiled package (dist/, built by `npm install`'s prepare step) in a child process,
      // so that LUNA_ADDON picks the binary before anything loads the addon.
      const script = `
        const lib = require(${JSON.stringify(path.join(root, 'dist', 'cjs', 'index.js'))});
        const info = lib.backendInfo().cuda;
        let code = 'none', message = '';
        try { lib.zeros([2], { device: 'cuda' }); } catch (e) { code = e.code; message = e.message; }
        const t = lib.ops.add(lib.ones([3]), lib.ones([3])).dataSync();
        console.log(JSON.stringify({ info, code, message, sum: Array.from(t) }));`;
      const r = spawnSync(process.execPath, ['-e', script], {
        env: { ...process.env, LUNA_ADDON: prebuilt, LUNA_DEVICE: '' },
        encoding: 'utf8',
        cwd: root,
      });
      expect(r.status, r.stderr).toBe(0);
      const out = JSON.parse(r.stdout.trim().split('\n').pop() as string);
      if (!out.info.compiled) return; // a CPU-only prebuilt binary (no nvcc where it was made)
      expect(out.info.available).toBe(false);
      expect(out.info.reason).toMatch(/cudaError\w+|no CUDA device/);
      expect(out.code).toBe('ERR_DEVICE_UNAVAILABLE');
      expect(out.message).toContain(out.info.reason);
      expect(out.sum).toEqual([2, 2, 2]);
    });
  },
);
