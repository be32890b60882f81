// safetensors I/O: round trips, the exact byte layout, rejection of malformed files (always a
// LunaError, never a crash), atomic saves, and the PyTorch parity fixtures written by
// scripts/make-fixtures.py.
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { afterAll, afterEach, describe, expect, it, vi } from 'vitest';
import {
  deserializeSafetensors,
  loadSafetensors,
  readSafetensorsHeader,
  saveSafetensors,
  serializeSafetensors,
  tensor,
  type Tensor,
} from '../lib/index';
import { expectLunaError, firstBitwiseDifference } from './helpers';

const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'luna-safetensors-'));
afterAll(() => fs.rmSync(dir, { recursive: true, force: true }));
afterEach(() => vi.restoreAllMocks());

/** A state dict covering every dtype, odd shapes, a scalar, empty tensors and special values. */
function sample(): Record<string, Tensor> {
  const f64 = new Float64Array(3 * 5 * 7).map((_, i) => Math.sin(i) * 10 ** (i % 7));
  f64[0] = NaN;
  f64[1] = -0;
  f64[2] = Infinity;
  f64[3] = 5e-324; // subnormal
  const f32 = new Float32Array(2 * 3).map((_, i) => i / 3 - 1);
  f32[5] = -Infinity;
  const sd: Record<string, Tensor> = {
    'encoder.layers.0.fc1.weight': tensor(f64, { shape: [3, 5, 7] }),
    'w32': tensor(f32, { shape: [2, 3] }),
    scalar: tensor(2.5, { dtype: 'float64' }),
    'scalar32': tensor(-1.25),
    empty: tensor(new Float32Array(0), { shape: [0] }),
    'empty.middle': tensor(new Float64Array(0), { shape: [2, 0, 3] }),
    mask: tensor(new Uint8Array([1, 0, 0, 1, 1]), { shape: [5], dtype: 'bool' }),
    'mask.empty': tensor(new Uint8Array(0), { shape: [1, 0], dtype: 'bool' }),
    ids: tensor(new Int32Array([0, -1, 2147483647, -2147483648, 42, 7]), { shape: [2, 1, 3], dtype: 'int32' }),
    'ünïcødé/name with spaces': tensor([1, 2, 3], { dtype: 'float64' }),
  };
  // A name that plain assignment would take for the prototype must survive too.
  Object.defineProperty(sd, '__proto__', { value: tensor([7], { dtype: 'float64' }), enumerable: true });
  return sd;
}

function expectSameDict(got: Record<string, Tensor>, want: Record<string, Tensor>): void {
  expect(Object.keys(got).sort()).toEqual(Object.keys(want).sort());
  for (const name of Object.keys(want)) {
    const a = got[name];
    const b = want[name];
    expect(a.dtype, name).toBe(b.dtype);
    expect(a.shape, name).toEqual(b.shape);
    const da = a.dataSync();
    const db = b.dataSync();
    if (da instanceof Float32Array || da instanceof Float64Array) {
      expect(firstBitwiseDifference(da, db as typeof da), `${name} differs bitwise`).toBe(-1);
    } else {
      expect(Array.from(da), name).toEqual(Array.from(db));
    }
  }
}

/** Builds a file from a header object and raw data bytes, with the length prefix. */
function craft(header: unknown, data: Uint8Array | number = 0, headerText?: string | Uint8Array): Uint8Array {
  const text =
    headerText instanceof Uint8Array ? headerText : Buffer.from(headerText ?? JSON.stringify(header), 'utf8');
  const body = typeof data === 'number' ? new Uint8Array(data) : data;
  const out = new Uint8Array(8 + text.length + body.length);
  new DataView(out.buffer).setBigUint64(0, BigInt(text.length), true);
  out.set(text, 8);
  out.set(body, 8 + text.length);
  return out;
}

describe('round trip', () => {
  it('in memory, every dtype and shape, bit for bit', () => {
    const sd = sample();
    expectSameDict(deserializeSafetensors(serializeSafetensors(sd)), sd);
  });

  it('through a file, with metadata', () => {
    const sd = sample();
    const file = path.join(dir, 'round.safetensors');
    const metadata = { format: 'pt', note: 'ünï "quoted" \n text', empty: '' };
    saveSafetensors(file, sd, { metadata });
    expectSameDict(loadSafetensors(file), sd);
    const header = readSafetensorsHeader(file);
    expect(header.metadata).toEqual(metadata);
    expect(header.tensors.ids).toEqual({ dtype: 'int32', shape: [2, 1, 3] });
    expect(header.tensors.scalar).toEqual({ dtype: 'float64', shape: [] });
    // File order: F64, F32, I32, BOOL (the reference library's), each group by name.
    expect(Object.keys(header.tensors)).toEqual([
      '__proto__', 'empty.middle', 'encoder.layers.0.fc1.weight', 'scalar', 'ünïcødé/name with spaces',
      'empty', 'scalar32', 'w32',
      'ids',
      'mask', 'mask.empty',
    ]);
    // Bytes and file agree, and the header reader works on bytes too.
    expect(new Uint8Array(fs.readFileSync(file))).toEqual(serializeSafetensors(sd, { metadata }));
    expect(readSafetensorsHeader(fs.readFileSync(file)).metadata).toEqual(metadata);
  });

  it('an empty state dict', () => {
    const bytes = serializeSafetensors({});
    expect(Object.keys(deserializeSafetensors(bytes))).toEqual([]);
  });

  it('converts float tensors on load when options.dtype is given', () => {
    const bytes = serializeSafetensors({
      a: tensor([1 / 3, 2], { dtype: 'float64' }),
      b: tensor([0.5]),
      m: tensor([true, false]),
    });
    const f32 = deserializeSafetensors(bytes, { dtype: 'float32' });
    expect(f32.a.dtype).toBe('float32');
    expect(f32.a.dataSync()[0]).toBe(Math.fround(1 / 3));
    expect(f32.m.dtype).toBe('bool');
    const f64 = deserializeSafetensors(bytes, { dtype: 'float64' });
    expect(f64.b.dtype).toBe('float64');
    expectLunaError(() => deserializeSafetensors(bytes, { dtype: 'bool' } as never), 'ERR_DTYPE');
    expectLunaError(() => deserializeSafetensors(bytes, { dtpye: 'float32' } as never), 'ERR_ARGUMENT', /unknown key/);
  });

  it('loaded tensors own their data (the source bytes can change)', () => {
    const bytes = serializeSafetensors({ a: tensor([1, 2], { dtype: 'float64' }) });
    const sd = deserializeSafetensors(bytes);
    bytes.fill(0xff);
    expect(Array.from(sd.a.dataSync())).toEqual([1, 2]);
  });
});

describe('byte layout', () => {
  it('matches the format, checked by hand', () => {
    const bytes = serializeSafetensors(
      {
        b: tensor([1, 2], { dtype: 'float32' }),
        a: tensor([true, false, true]),
        c: tensor([-2], { dtype: 'float64' }),
      },
      { metadata: { k: 'v' } },
    );
    const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
    const n = Number(view.getBigUint64(0, true));
    expect(n % 8).toBe(0);
    const text = Buffer.from(bytes.subarray(8, 8 + n)).toString('utf8');
    // Larger elements first (F64, F32, BOOL), then by name; offsets relative to the data start.
    const json =
      '{"__metadata__":{"k":"v"},' +
      '"c":{"dtype":"F64","shape":[1],"data_offsets":[0,8]},' +
      '"b":{"dtype":"F32","shape":[2],"data_offsets":[8,16]},' +
      '"a":{"dtype":"BOOL","shape":[3],"data_offsets":[16,19]}}';
    expect(text.trimEnd()).toBe(json);
    expect(text.slice(json.length)).toMatch(/^ {0,7}$/);
    const data = 8 + n;
    expect(bytes.length).toBe(data + 19);
    expect(view.getFloat64(data, true)).toBe(-2);
    expect(view.getFloat32(data + 8, true)).toBe(1);
    expect(view.getFloat32(data + 12, true)).toBe(2);
    expect(Array.from(bytes.subarray(data + 16))).toEqual([1, 0, 1]);
  });

  it('accepts any tensor order and whitespace that a valid file may have', () => {
    // Written by another tool: data in name order, pretty-printed header, no padding.
    const data = new Uint8Array(12);
    new DataView(data.buffer).setFloat32(8, 3.5, true);
    data.set([1, 0, 0, 0, 2, 0, 0, 0]);
    const header = {
      a: { dtype: 'I32', shape: [2], data_offsets: [0, 8] },
      b: { dtype: 'F32', shape: [], data_offsets: [8, 12] },
    };
    const sd = deserializeSafetensors(craft(null, data, JSON.stringify(header, null, 2)));
    expect(Array.from(sd.a.dataSync())).toEqual([1, 2]);
    expect(sd.b.shape).toEqual([]);
    expect(sd.b.dataSync()[0]).toBe(3.5);
  });
});

describe('rejects malformed files with a LunaError naming the defect', () => {
  const f32 = (shape: number[], offsets: [number, number]) => ({ dtype: 'F32', shape, data_offsets: offsets });
  const cases: [string, Uint8Array, RegExp][] = [
    ['shorter than the length prefix', new Uint8Array(5), /shorter than the 8-byte/],
    ['header length past the end', craft({}).subarray(0, 8 + 1), /runs past the end/],
    ['a huge header length', (() => {
      const b = craft({});
      new DataView(b.buffer).setBigUint64(0, 2n ** 63n, true);
      return b;
    })(), /runs past the end/],
    ['invalid UTF-8', craft(null, 0, new Uint8Array([0x7b, 0xff, 0xfe, 0x7d])), /not valid UTF-8/],
    ['bad JSON', craft(null, 0, '{"a": {'), /not valid JSON/],
    ['a JSON array', craft([1, 2]), /not a JSON object/],
    ['an entry that is not an object', craft({ a: 3 }), /entry "a" is not an object/],
    ['an unknown dtype', craft({ a: { dtype: 'F16', shape: [1], data_offsets: [0, 2] } }, 2), /dtype "F16"/],
    ['a missing dtype', craft({ a: { shape: [1], data_offsets: [0, 4] } }, 4), /no dtype/],
    ['an unknown entry key', craft({ a: { ...f32([1], [0, 4]), extra: 1 } }, 4), /unknown key "extra"/],
    ['a negative dimension', craft({ a: f32([-1], [0, 4]) }, 4), /shape/],
    ['a fractional dimension', craft({ a: f32([1.5], [0, 4]) }, 4), /shape/],
    ['too many elements', craft({ a: f32([65536, 65536], [0, 4]) }, 4), /over 2147483647 elements/],
    ['malformed offsets', craft({ a: { dtype: 'F32', shape: [1], data_offsets: [0] } }, 4), /data_offsets/],
    ['offsets out of range', craft({ a: f32([1], [0, 4]) }, 2), /outside the 2-byte data section/],
    ['reversed offsets', craft({ a: f32([0], [4, 0]) }, 4), /outside/],
    ['a size mismatch', craft({ a: f32([3], [0, 8]) }, 8), /covers 8 bytes but shape \[3\] of F32 needs 12/],
    ['overlapping tensors', craft({ a: f32([2], [0, 8]), b: f32([2], [4, 12]) }, 12), /overlaps/],
    ['a gap between tensors', craft({ a: f32([1], [0, 4]), b: f32([1], [8, 12]) }, 12), /gap/],
    ['trailing bytes', craft({ a: f32([1], [0, 4]) }, 6), /cover 4 bytes but the data section has 6/],
    ['a truncated data section', craft({ a: f32([4], [0, 16]) }, 10), /outside the 10-byte data section/],
    ['a non-string metadata value', craft({ __metadata__: { n: 1 } }), /metadata value "n"/],
    ['a bool byte other than 0 or 1', craft({ m: { dtype: 'BOOL', shape: [2], data_offsets: [0, 2] } }, new Uint8Array([1, 2])), /byte 2/],
  ];

  for (const [what, bytes, message] of cases) {
    it(`${what} (bytes and file)`, () => {
      expectLunaError(() => deserializeSafetensors(bytes), 'ERR_ARGUMENT', message, what);
      const file = path.join(dir, `bad-${what.replace(/\W+/g, '-')}.safetensors`);
      fs.writeFileSync(file, bytes);
      const err = expectLunaError(() => loadSafetensors(file), 'ERR_ARGUMENT', message, what);
      expect(err.message).toContain(file);
      // The header reader sees every defect except those in the tensor data itself.
      if (!what.startsWith('a bool byte')) expectLunaError(() => readSafetensorsHeader(file), 'ERR_ARGUMENT', undefined, what);
    });
  }

  it('a real file cut short at any byte is refused', () => {
    const good = serializeSafetensors({ a: tensor([1, 2, 3], { dtype: 'float64' }), m: tensor([true]) });
    for (let cut = 0; cut < good.length; cut++) {
      expectLunaError(() => deserializeSafetensors(good.subarray(0, cut)), 'ERR_ARGUMENT', undefined, `cut at ${cut}`);
    }
    const file = path.join(dir, 'truncated.safetensors');
    fs.writeFileSync(file, good.subarray(0, good.length - 3));
    expectLunaError(() => loadSafetensors(file), 'ERR_ARGUMENT', /data section/);
  });

  it('a missing file or a bad argument', () => {
    const missing = path.join(dir, 'no-such-file.safetensors');
    expectLunaError(() => loadSafetensors(missing), 'ERR_ARGUMENT', /could not open .*no-such-file/);
    expectLunaError(() => loadSafetensors(''), 'ERR_ARGUMENT', /path/);
    expectLunaError(() => loadSafetensors(3 as never), 'ERR_ARGUMENT', /path/);
    expectLunaError(() => loadSafetensors(dir), 'ERR_ARGUMENT', /could not read/);
    expectLunaError(() => deserializeSafetensors([1, 2] as never), 'ERR_ARGUMENT', /Uint8Array/);
  });
});

describe('saving', () => {
  it('validates the state dict and options before writing anything', () => {
    const file = path.join(dir, 'never.safetensors');
    const t = tensor([1]);
    expectLunaError(() => saveSafetensors(file, { a: [1, 2] as never }), 'ERR_ARGUMENT', /stateDict\["a"\]/);
    expectLunaError(() => saveSafetensors(file, { __metadata__: t }), 'ERR_ARGUMENT', /__metadata__/);
    expectLunaError(() => saveSafetensors(file, { '': t }), 'ERR_ARGUMENT');
    expectLunaError(() => saveSafetensors(file, t as never), 'ERR_ARGUMENT', /stateDict/);
    expectLunaError(() => saveSafetensors(file, { a: t }, { metadata: { n: 1 as never } }), 'ERR_ARGUMENT', /metadata/);
    expectLunaError(() => saveSafetensors(file, { a: t }, { meta: {} } as never), 'ERR_ARGUMENT', /unknown key/);
    expectLunaError(() => saveSafetensors('', { a: t }), 'ERR_ARGUMENT', /path/);
    const gone = tensor([1]);
    gone.dispose();
    expectLunaError(() => saveSafetensors(file, { gone }), 'ERR_DISPOSED', /gone/);
    expect(fs.existsSync(file)).toBe(false);
  });

  it('is atomic: a failure part-way leaves the previous file intact and no temporary file', () => {
    const file = path.join(dir, 'atomic.safetensors');
    const before = { a: tensor([1, 2, 3], { dtype: 'float64' }) };
    saveSafetensors(file, before);
    const original = fs.readFileSync(file);
    // Fail the second write (the first tensor's data, after the header went out).
    const real = fs.writeSync;
    let calls = 0;
    vi.spyOn(fs, 'writeSync').mockImplementation(((...args: Parameters<typeof fs.writeSync>) => {
      if (++calls === 2) throw Object.assign(new Error('ENOSPC: no space left on device'), { code: 'ENOSPC' });
      return (real as (...a: unknown[]) => number)(...args);
    }) as typeof fs.writeSync);
    const big = { a: tensor(new Float64Array(1000).fill(9), { shape: [10, 100] }) };
    expectLunaError(() => saveSafetensors(file, big), 'ERR_ARGUMENT', /could not write .*ENOSPC/);
    expect(calls).toBe(2);
    vi.restoreAllMocks();
    expect(fs.readFileSync(file).equals(original)).toBe(true);
    expectSameDict(loadSafetensors(file), before);
    expect(fs.readdirSync(dir).filter((f) => f.endsWith('.tmp'))).toEqual([]);
    // And a later save goes through.
    saveSafetensors(file, big);
    expectSameDict(loadSafetensors(file), big);
  });

  it('reports a directory that does not exist', () => {
    const file = path.join(dir, 'missing-dir', 'x.safetensors');
    expectLunaError(() => saveSafetensors(file, { a: tensor([1]) }), 'ERR_ARGUMENT', /could not write/);
  });
});

describe('PyTorch parity fixtures (scripts/make-fixtures.py)', () => {
  const fixtures = path.join(__dirname, 'fixtures');
  const files = fs.readdirSync(fixtures).filter((f) => f.endsWith('.safetensors'));

  it('are all present', () => {
    expect(files.sort()).toEqual(
      [
        'attention_tied',
        'attention_tied_cross',
        'attention_untied',
        ...['postnorm', 'prenorm'].flatMap((n) =>
          ['tied', 'untied'].flatMap((t) => ['gelu', 'relu'].map((a) => `encoder_${n}_${t}_${a}`)),
        ),
        'causal_tied',
        'causal_untied',
        ...['postnorm', 'prenorm'].flatMap((n) => ['tied', 'untied'].map((t) => `decoder_${n}_${t}`)),
      ]
        .map((f) => `${f}.safetensors`)
        .sort(),
    );
  });

  for (const file of files) {
    it(`${file} loads with consistent keys, shapes and config`, () => {
      const full = path.join(fixtures, file);
      const sd = loadSafetensors(full);
      const { metadata } = readSafetensorsHeader(full);
      const cfg = JSON.parse(metadata.config) as {
        module: string; d: number; h: number; hp: number; ffn?: number; tie_kv: boolean;
        normalize_before?: boolean; activation?: string; B: number; n: number; l: number; m?: number;
      };
      const { B, n, l, d } = cfg;
      expect(cfg.d % cfg.h).toBe(0);
      expect(cfg.d % cfg.hp).toBe(0);
      expect(sd['input.x'].shape).toEqual([B, n, d]);
      expect(sd['input.p'].shape).toEqual([B, l, d]);
      expect(sd['input.pack_padding_mask'].dtype).toBe('bool');
      expect(sd['input.pack_padding_mask'].shape).toEqual([B, l]);
      const causal = cfg.module === 'LunaCausalAttention';
      if (!causal) expect(sd['input.context_padding_mask'].shape).toEqual([B, cfg.m ?? n]);
      const outs = cfg.module === 'LunaAttention' ? ['yx', 'yp'] : causal ? ['y'] : ['x', 'p'];
      expect(sd[`output.${outs[0]}`].shape).toEqual([B, n, d]);
      if (!causal) expect(sd[`output.${outs[1]}`].shape).toEqual([B, l, d]);
      for (const o of outs) expect(sd[`cotangent.${o}`].shape).toEqual(sd[`output.${o}`].shape);
      // Every parameter has its gradient, and each input its own.
      const params = Object.keys(sd).filter((k) => k.startsWith('param.'));
      for (const k of params) expect(sd[`grad.${k.slice(6)}`].shape, k).toEqual(sd[k].shape);
      for (const k of Object.keys(sd).filter((k) => k.startsWith('input.') && !k.endsWith('mask'))) {
        expect(sd[`grad.${k}`].shape, k).toEqual(sd[k].shape);
      }
      // Projections per attention module, by the reference's names.
      const lunaKV = cfg.tie_kv ? ['pc_proj', 'c_proj'] : ['pk_proj', 'pv_proj', 'k_proj', 'v_proj'];
      const causalKV = cfg.tie_kv ? ['pc_proj', 'c_proj'] : ['pc_proj', 'k_proj', 'v_proj'];
      const modules: [string, string[]][] = {
        LunaAttention: [['', lunaKV]],
        LunaEncoderLayer: [['self_attn.', lunaKV]],
        LunaCausalAttention: [['', causalKV]],
        LunaDecoderLayer: [['self_attn.', causalKV], ['encoder_attn.', lunaKV]],
      }[cfg.module] as [string, string[]][];
      expect(modules, cfg.module).toBeDefined();
      let projections = 0;
      for (const [attn, kv] of modules) {
        for (const proj of ['pq_proj', 'q_proj', 'out_proj', ...kv]) {
          expect(sd[`param.${attn}${proj}.weight`].shape).toEqual([d, d]);
          expect(sd[`param.${attn}${proj}.bias`].shape).toEqual([d]);
          projections++;
        }
      }
      // Besides the projections: fc1, fc2 and 3 LayerNorms (encoder) or 4 (decoder), weight and bias each.
      const extra = { LunaAttention: 0, LunaCausalAttention: 0, LunaEncoderLayer: 10, LunaDecoderLayer: 12 }[cfg.module] as number;
      expect(params.length).toBe(projections * 2 + extra);
      if (cfg.module === 'LunaEncoderLayer' || cfg.module === 'LunaDecoderLayer') {
        expect(sd['param.fc1.weight'].shape).toEqual([cfg.ffn, d]);
        const pNorm = cfg.module === 'LunaEncoderLayer' ? 'self_atten_proj_layer_norm' : 'encoder_atten_proj_layer_norm';
        expect(sd[`param.${pNorm}.weight`].shape).toEqual([d]);
        // The LayerNorms were moved away from 1/0 so that they matter.
        expect(Array.from(sd['param.final_layer_norm.weight'].dataSync()).some((x) => Math.abs(x - 1) > 0.01)).toBe(true);
      }
      for (const [k, t] of Object.entries(sd)) {
        if (t.dtype === 'bool') continue;
        expect(t.dtype, k).toBe('float64');
        expect(Array.from(t.dataSync()).every(Number.isFinite), `${k} is finite`).toBe(true);
      }
    });
  }
});
