/**
 * Reading and writing the safetensors format (https://github.com/huggingface/safetensors), the
 * state-dict format PyTorch and the Hugging Face libraries share.
 *
 * Layout of a file:
 * ```
 * [8 bytes]  N, the header length, unsigned 64-bit little-endian
 * [N bytes]  a UTF-8 JSON object, padded with spaces so that the data starts at a multiple of 8:
 *            { "<name>": { "dtype": "F32", "shape": [2, 3], "data_offsets": [begin, end] }, ...,
 *              "__metadata__": { "<key>": "<string value>" } }
 * [rest]     the raw little-endian tensor bytes; offsets are relative to the start of this section
 * ```
 * Tensors are written in the order the Rust/Python library uses (by dtype, larger elements first,
 * then by name), which keeps every tensor aligned to its element size. Readers accept any
 * order as long as the byte ranges tile the data section exactly.
 *
 * A file is a trust boundary: loading checks the whole header against the file's size before
 * it allocates or reads any tensor data, and every defect becomes a LunaError (ERR_ARGUMENT)
 * that names the file and says what is wrong.
 *
 * @packageDocumentation
 */
import fs from 'node:fs';
import path from 'node:path';
import os from 'node:os';
import { randomBytes } from 'node:crypto';
import { LunaError, checkOptions, describe, formatShape, mismatch } from './errors';
import { AnyTypedArray, DType, MAX_ELEMENTS, isFloatDType } from './dtype';
import { Tensor, makeTensor, tensorData } from './tensor';

/** Options of {@link saveSafetensors} and {@link serializeSafetensors}. */
export interface SaveSafetensorsOptions {
  /** Free-form string pairs stored under the header's `__metadata__` key. */
  metadata?: Record<string, string>;
}

/** Options of {@link loadSafetensors} and {@link deserializeSafetensors}. */
export interface LoadSafetensorsOptions {
  /**
   * Convert every floating-point tensor to this dtype while loading (for example a float64
   * checkpoint into a float32 model). Bool and integer tensors are kept as they are.
   */
  dtype?: 'float32' | 'float64';
}

/** A parsed header entry, after validation. */
interface Entry {
  name: string;
  dtype: DType;
  shape: number[];
  size: number;
  begin: number;
  end: number;
}

/** How one of our dtypes is spelled in the file, and its element size in bytes. */
interface FormatDType {
  code: string;
  itemSize: number;
  /** Builds a buffer of `n` elements (the constructor of the dtype's typed array). */
  make: (n: number) => AnyTypedArray;
}

// Our dtypes and their safetensors codes, largest element first (the order files are laid out in).
const FORMAT: ReadonlyMap<string, FormatDType> = new Map<string, FormatDType>([
  ['float64', { code: 'F64', itemSize: 8, make: (n) => new Float64Array(n) }],
  ['float32', { code: 'F32', itemSize: 4, make: (n) => new Float32Array(n) }],
  ['int32', { code: 'I32', itemSize: 4, make: (n) => new Int32Array(n) }],
  ['bool', { code: 'BOOL', itemSize: 1, make: (n) => new Uint8Array(n) }],
]);

/** A dtype's place in the file order: its position in FORMAT. */
function rank(format: FormatDType): number {
  return [...FORMAT.values()].indexOf(format);
}

const FROM_CODE: ReadonlyMap<string, DType> = new Map(
  [...FORMAT].map(([dtype, f]) => [f.code, dtype as DType]),
);

/** The reserved header key for metadata. */
const METADATA_KEY = '__metadata__';

/**
 * The largest header we parse. The reference implementation refuses headers over 100 MB too: a
 * bigger one is either corrupt or hostile, and JSON.parse would spend its memory on it first.
 */
const MAX_HEADER_BYTES = 100_000_000;

const LITTLE_ENDIAN = os.endianness() === 'LE';

function fail(where: string, file: string | null, what: string, cause?: unknown): LunaError {
  const source = file === null ? 'the buffer' : JSON.stringify(file);
  return new LunaError(
    'ERR_ARGUMENT',
    `${where}: ${source} is not a valid safetensors file: ${what}`,
    cause === undefined ? undefined : { cause },
  );
}

/**
 * Sets an own enumerable property. Plain assignment would treat a tensor named `__proto__` as
 * the prototype; names come from users and files, so every name goes through here.
 */
function setOwn<T>(obj: Record<string, T>, key: string, value: T): void {
  Object.defineProperty(obj, key, { value, enumerable: true, writable: true, configurable: true });
}

// ---------------------------------------------------------------------------------------------
// Writing

/** A validated state dict, ready to write: entries in file order and the header bytes. */
interface Plan {
  header: Uint8Array;
  entries: { name: string; tensor: Tensor; bytes: number }[];
  dataBytes: number;
}

function checkSaveOptions(where: string, options: unknown): Record<string, string> | null {
  const opts = checkOptions(where, options, ['metadata']);
  const metadata = opts.metadata;
  if (metadata === undefined) return null;
  if (metadata === null || typeof metadata !== 'object' || Array.isArray(metadata)) {
    throw mismatch('ERR_ARGUMENT', where, 'options.metadata', 'an object of strings', describe(metadata));
  }
  const out: Record<string, string> = {};
  for (const [key, value] of Object.entries(metadata as Record<string, unknown>)) {
    if (typeof value !== 'string') {
      throw mismatch('ERR_ARGUMENT', where, `options.metadata[${JSON.stringify(key)}]`, 'a string', describe(value));
    }
    setOwn(out, key, value);
  }
  return out;
}

function plan(where: string, stateDict: unknown, options: unknown): Plan {
  const metadata = checkSaveOptions(where, options);
  if (stateDict === null || typeof stateDict !== 'object' || Array.isArray(stateDict) || stateDict instanceof Tensor) {
    throw mismatch('ERR_ARGUMENT', where, 'stateDict', 'an object mapping names to tensors', describe(stateDict));
  }
  const items: { name: string; tensor: Tensor; format: FormatDType }[] = [];
  for (const [name, value] of Object.entries(stateDict as Record<string, unknown>)) {
    const arg = `stateDict[${JSON.stringify(name)}]`;
    if (name === METADATA_KEY || name === '') {
      const expected = `a non-empty name other than "${METADATA_KEY}"`;
      throw mismatch('ERR_ARGUMENT', where, 'stateDict key', expected, JSON.stringify(name));
    }
    if (!(value instanceof Tensor)) throw mismatch('ERR_ARGUMENT', where, arg, 'a Tensor', describe(value));
    tensorData(value, where, arg); // throws ERR_DISPOSED
    if (value.device !== 'cpu') {
      throw mismatch('ERR_DEVICE', where, `${arg}.device`, 'cpu (move it with .to("cpu") first)', value.device);
    }
    const format = FORMAT.get(value.dtype);
    if (format === undefined) {
      throw mismatch('ERR_DTYPE', where, `${arg}.dtype`, `one of ${[...FORMAT.keys()].join(', ')}`, value.dtype);
    }
    items.push({ name, tensor: value, format });
  }
  // The reference library's order: by dtype rank (F64, F32, I32, BOOL: larger elements first,
  // which keeps each tensor aligned to its element size), then by name in code-unit order.
  items.sort((a, b) => rank(a.format) - rank(b.format) || (a.name < b.name ? -1 : a.name > b.name ? 1 : 0));

  const header: Record<string, unknown> = {};
  if (metadata !== null) setOwn(header, METADATA_KEY, metadata);
  let offset = 0;
  const entries: Plan['entries'] = [];
  for (const { name, tensor, format } of items) {
    const bytes = tensor.size * format.itemSize;
    setOwn(header, name, { dtype: format.code, shape: [...tensor.shape], data_offsets: [offset, offset + bytes] });
    entries.push({ name, tensor, bytes });
    offset += bytes;
  }
  const json = Buffer.from(JSON.stringify(header), 'utf8');
  // Pad with spaces (valid JSON whitespace) so that the data section starts 8-byte aligned.
  const padded = Math.ceil(json.length / 8) * 8;
  const headerBytes = new Uint8Array(8 + padded).fill(0x20);
  new DataView(headerBytes.buffer).setBigUint64(0, BigInt(padded), true);
  headerBytes.set(json, 8);
  return { header: headerBytes, entries, dataBytes: offset };
}

/** The little-endian bytes of a tensor's data (a view of its buffer on little-endian hosts). */
function tensorBytes(tensor: Tensor, where: string): Uint8Array {
  const data = tensorData(tensor, where);
  // Exactly the tensor's elements, even if the buffer were longer than the shape needs.
  const view = new Uint8Array(data.buffer, data.byteOffset, tensor.size * data.BYTES_PER_ELEMENT);
  return LITTLE_ENDIAN ? view : swapBytes(view.slice(), data.BYTES_PER_ELEMENT);
}

/** Reverses the bytes of each `width`-byte element in place (file order <-> big-endian host order). */
function swapBytes(bytes: Uint8Array, width: number): Uint8Array {
  if (width > 1) for (let i = 0; i < bytes.length; i += width) bytes.subarray(i, i + width).reverse();
  return bytes;
}

/**
 * Serializes a state dict to safetensors bytes in memory.
 *
 * @param stateDict - names to CPU tensors of dtype float32, float64, bool or int32; the name
 *   `__metadata__` is reserved
 * @param options - `metadata`: string pairs stored in the header
 * @returns the complete file content
 * @throws LunaError ERR_ARGUMENT for a bad argument, ERR_DTYPE / ERR_DEVICE / ERR_DISPOSED for
 *   an unsupported tensor
 */
export function serializeSafetensors(
  stateDict: Record<string, Tensor>,
  options?: SaveSafetensorsOptions,
): Uint8Array {
  const where = 'serializeSafetensors';
  const p = plan(where, stateDict, options);
  const out = new Uint8Array(p.header.length + p.dataBytes);
  out.set(p.header, 0);
  let at = p.header.length;
  for (const e of p.entries) {
    out.set(tensorBytes(e.tensor, where), at);
    at += e.bytes;
  }
  return out;
}

function writeAll(fd: number, bytes: Uint8Array): void {
  let done = 0;
  while (done < bytes.length) {
    done += fs.writeSync(fd, bytes, done, bytes.length - done);
  }
}

/**
 * Saves a state dict as a safetensors file that PyTorch (`safetensors.torch.load_file`) and the
 * Hugging Face libraries read.
 *
 * The write is atomic: the bytes go to a temporary file in the same directory, which is flushed
 * to disk and then renamed over `file`. A failure or a crash part-way leaves any previous file
 * at `file` intact, never a truncated one.
 *
 * @param file - the path to write
 * @param stateDict - names to CPU tensors (see {@link serializeSafetensors})
 * @param options - `metadata`: string pairs stored in the header
 * @throws LunaError ERR_ARGUMENT for a bad argument or an I/O failure (with the cause attached)
 */
export function saveSafetensors(
  file: string,
  stateDict: Record<string, Tensor>,
  options?: SaveSafetensorsOptions,
): void {
  const where = 'saveSafetensors';
  checkPath(where, file);
  // Validate everything before touching the file system.
  const p = plan(where, stateDict, options);
  const target = path.resolve(file);
  const dir = path.dirname(target);
  const temp = path.join(dir, `.${path.basename(target)}.${process.pid}.${randomBytes(6).toString('hex')}.tmp`);
  let fd: number | null = null;
  try {
    fd = fs.openSync(temp, 'wx', 0o666); // the umask applies, as for any new file
    // Write the tensors straight from their buffers: no second copy of a large state dict.
    writeAll(fd, p.header);
    for (const e of p.entries) writeAll(fd, tensorBytes(e.tensor, where));
    fs.fsyncSync(fd);
    fs.closeSync(fd);
    fd = null;
    fs.renameSync(temp, target);
  } catch (err) {
    if (fd !== null) {
      try {
        fs.closeSync(fd);
      } catch {
        // Already failing; the original error is the one to report.
      }
    }
    try {
      fs.unlinkSync(temp);
    } catch {
      // The temporary file may never have been created.
    }
    const reason = err instanceof Error ? err.message : String(err);
    throw new LunaError('ERR_ARGUMENT', `${where}: could not write ${JSON.stringify(file)}: ${reason}`, { cause: err });
  }
  // Make the rename itself durable. Directories cannot be opened for fsync everywhere (Windows),
  // and by now the new file is complete either way, so this is best effort.
  try {
    const dfd = fs.openSync(dir, 'r');
    try {
      fs.fsyncSync(dfd);
    } finally {
      fs.closeSync(dfd);
    }
  } catch {
    // See above.
  }
}

// ---------------------------------------------------------------------------------------------
// Reading

function checkLoadOptions(where: string, options: unknown): DType | null {
  const opts = checkOptions(where, options, ['dtype']);
  if (opts.dtype === undefined) return null;
  if (opts.dtype !== 'float32' && opts.dtype !== 'float64') {
    throw mismatch('ERR_DTYPE', where, 'options.dtype', 'float32 or float64', describe(opts.dtype));
  }
  return opts.dtype;
}

/** Reads the 8-byte length prefix and checks it against the total size. */
function headerLength(where: string, file: string | null, prefix: Uint8Array, total: number): number {
  if (total < 8) {
    throw fail(where, file, `it is ${total} bytes long, shorter than the 8-byte header length`);
  }
  const n = new DataView(prefix.buffer, prefix.byteOffset, 8).getBigUint64(0, true);
  if (n > BigInt(total - 8)) {
    throw fail(where, file, `the header length ${n} runs past the end of the file (${total - 8} bytes follow it)`);
  }
  if (n > BigInt(MAX_HEADER_BYTES)) {
    throw fail(where, file, `the header length ${n} is over the ${MAX_HEADER_BYTES}-byte limit`);
  }
  return Number(n);
}

function isPlainObject(v: unknown): v is Record<string, unknown> {
  return v !== null && typeof v === 'object' && !Array.isArray(v);
}

function isCount(v: unknown): v is number {
  return typeof v === 'number' && Number.isSafeInteger(v) && v >= 0;
}

/**
 * Parses and validates the header: every entry well-formed, sizes matching shapes, and the
 * byte ranges tiling [0, dataBytes) exactly (no gap, no overlap, nothing past the end).
 */
function parseHeader(
  where: string,
  file: string | null,
  bytes: Uint8Array,
  dataBytes: number,
): { entries: Entry[]; metadata: Record<string, string> } {
  let text: string;
  try {
    text = new TextDecoder('utf-8', { fatal: true }).decode(bytes);
  } catch (err) {
    throw fail(where, file, 'the header is not valid UTF-8', err);
  }
  let json: unknown;
  try {
    json = JSON.parse(text);
  } catch (err) {
    throw fail(where, file, `the header is not valid JSON (${(err as Error).message})`, err);
  }
  if (!isPlainObject(json)) throw fail(where, file, 'the header is not a JSON object');

  const metadata: Record<string, string> = {};
  const entries: Entry[] = [];
  for (const [name, raw] of Object.entries(json)) {
    const quoted = JSON.stringify(name);
    if (name === METADATA_KEY) {
      if (!isPlainObject(raw)) throw fail(where, file, `"${METADATA_KEY}" is not an object`);
      for (const [k, v] of Object.entries(raw)) {
        if (typeof v !== 'string') throw fail(where, file, `metadata value ${JSON.stringify(k)} is not a string`);
        setOwn(metadata, k, v);
      }
      continue;
    }
    if (!isPlainObject(raw)) throw fail(where, file, `entry ${quoted} is not an object`);
    const extra = Object.keys(raw).filter((k) => k !== 'dtype' && k !== 'shape' && k !== 'data_offsets');
    if (extra.length > 0) throw fail(where, file, `entry ${quoted} has unknown key ${JSON.stringify(extra[0])}`);
    const code = raw.dtype;
    if (typeof code !== 'string') throw fail(where, file, `entry ${quoted} has no dtype string`);
    const dtype = FROM_CODE.get(code);
    if (dtype === undefined) {
      throw fail(where, file, `entry ${quoted} has dtype ${describe(code)}, not one of ${[...FROM_CODE.keys()].join(', ')}`);
    }
    const shape = raw.shape;
    if (!Array.isArray(shape) || !shape.every(isCount)) {
      throw fail(where, file, `entry ${quoted} has shape ${describe(shape)}, not an array of non-negative integers`);
    }
    // Exact element count with an early stop, so a huge shape cannot overflow the check.
    let size = shape.includes(0) ? 0 : 1;
    if (size !== 0) {
      for (const d of shape as number[]) {
        size *= d;
        if (size > MAX_ELEMENTS) {
          const dims = formatShape(shape as number[]);
          throw fail(where, file, `entry ${quoted} has shape ${dims}, over ${MAX_ELEMENTS} elements`);
        }
      }
    }
    const offsets = raw.data_offsets;
    if (!Array.isArray(offsets) || offsets.length !== 2 || !offsets.every(isCount)) {
      throw fail(where, file, `entry ${quoted} has data_offsets ${describe(offsets)}, not two non-negative integers`);
    }
    const [begin, end] = offsets as [number, number];
    if (end < begin || end > dataBytes) {
      throw fail(where, file, `entry ${quoted} has data_offsets [${begin},${end}] outside the ${dataBytes}-byte data section`);
    }
    const itemSize = (FORMAT.get(dtype) as FormatDType).itemSize;
    if (end - begin !== size * itemSize) {
      throw fail(
        where,
        file,
        `entry ${quoted} covers ${end - begin} bytes but shape ${formatShape(shape as number[])} ` +
          `of ${code} needs ${size * itemSize}`,
      );
    }
    entries.push({ name, dtype, shape: shape as number[], size, begin, end });
  }
  // The ranges must tile the data section: sorted by start, each begins where the last ended.
  const sorted = [...entries].sort((a, b) => a.begin - b.begin || a.end - b.end);
  let at = 0;
  for (const e of sorted) {
    if (e.begin !== at) {
      const what = e.begin < at ? 'overlaps the previous tensor' : `leaves a gap after byte ${at}`;
      throw fail(where, file, `entry ${JSON.stringify(e.name)} at data_offsets [${e.begin},${e.end}] ${what}`);
    }
    at = e.end;
  }
  if (at !== dataBytes) {
    throw fail(where, file, `the tensors cover ${at} bytes but the data section has ${dataBytes}`);
  }
  return { entries, metadata };
}

/** Turns the raw bytes of one entry into a tensor, converting byte order and dtype as asked. */
/**
 * Makes the tensor of one entry: allocates its buffer, lets `fill` write the file's raw bytes
 * into it (directly, with no intermediate copy), then fixes byte order and converts the dtype
 * as asked. An impossible allocation becomes ERR_ARGUMENT naming the entry.
 */
function toTensor(
  where: string,
  file: string | null,
  e: Entry,
  fill: (view: Uint8Array) => void,
  want: DType | null,
): Tensor {
  const format = FORMAT.get(e.dtype) as FormatDType;
  let data: AnyTypedArray;
  try {
    data = format.make(e.size);
  } catch (err) {
    throw fail(where, file, `entry ${JSON.stringify(e.name)} (${e.end - e.begin} bytes) could not be allocated`, err);
  }
  const view = new Uint8Array(data.buffer, data.byteOffset, data.byteLength);
  fill(view);
  if (!LITTLE_ENDIAN) swapBytes(view, format.itemSize);
  if (e.dtype === 'bool') {
    for (let i = 0; i < view.length; i++) {
      if (view[i] > 1) {
        throw fail(where, file, `bool entry ${JSON.stringify(e.name)} holds the byte ${view[i]} (only 0 and 1 are allowed)`);
      }
    }
  }
  let dtype = e.dtype;
  if (want !== null && isFloatDType(dtype) && dtype !== want) {
    data = want === 'float32' ? Float32Array.from(data as Float64Array) : Float64Array.from(data as Float32Array);
    dtype = want;
  }
  return makeTensor(data, e.shape, dtype);
}

/** What {@link readSafetensorsHeader} returns: the file's tensor list and metadata, no data. */
export interface SafetensorsHeader {
  /** Each tensor's dtype and shape, by name, in file order. */
  tensors: Record<string, { dtype: DType; shape: number[] }>;
  /** The `__metadata__` string pairs (`{}` when the file has none). */
  metadata: Record<string, string>;
}

function describeHeader(entries: Entry[], metadata: Record<string, string>): SafetensorsHeader {
  const tensors: SafetensorsHeader['tensors'] = {};
  for (const e of [...entries].sort((a, b) => a.begin - b.begin)) {
    setOwn(tensors, e.name, { dtype: e.dtype, shape: [...e.shape] });
  }
  return { tensors, metadata };
}

function checkBytes(where: string, bytes: unknown): Uint8Array {
  if (!(bytes instanceof Uint8Array)) {
    throw mismatch('ERR_ARGUMENT', where, 'bytes', 'a Uint8Array (or Buffer)', describe(bytes));
  }
  return bytes;
}

function checkPath(where: string, file: unknown): string {
  if (typeof file !== 'string' || file === '') {
    throw mismatch('ERR_ARGUMENT', where, 'path', 'a non-empty string', describe(file));
  }
  return file;
}

/** Validates the header of in-memory bytes; returns the entries and where the data starts. */
function parseBytes(
  where: string,
  bytes: Uint8Array,
): { entries: Entry[]; metadata: Record<string, string>; start: number } {
  const n = headerLength(where, null, bytes, bytes.length);
  const start = 8 + n;
  return { ...parseHeader(where, null, bytes.subarray(8, start), bytes.length - start), start };
}

/**
 * Parses safetensors bytes held in memory.
 *
 * @param bytes - the file content
 * @param options - `dtype`: convert float tensors to this dtype
 * @returns names to new CPU tensors (copies: `bytes` is not referenced afterwards)
 * @throws LunaError ERR_ARGUMENT naming the defect when the bytes are not a valid file
 */
export function deserializeSafetensors(bytes: Uint8Array, options?: LoadSafetensorsOptions): Record<string, Tensor> {
  const where = 'deserializeSafetensors';
  checkBytes(where, bytes);
  const want = checkLoadOptions(where, options);
  const { entries, start } = parseBytes(where, bytes);
  const out: Record<string, Tensor> = {};
  for (const e of entries) {
    const raw = bytes.subarray(start + e.begin, start + e.end);
    setOwn(out, e.name, toTensor(where, null, e, (view) => view.set(raw), want));
  }
  return out;
}

function readExactly(fd: number, into: Uint8Array, position: number): number {
  let done = 0;
  while (done < into.length) {
    const got = fs.readSync(fd, into, done, into.length - done, position + done);
    if (got === 0) break;
    done += got;
  }
  return done;
}

/**
 * Opens `file` and runs `body` with its descriptor, the validated header and the data start.
 * Every failure that is not already a LunaError (I/O errors) becomes one naming the file.
 */
function withFile<T>(
  where: string,
  file: string,
  body: (fd: number, parsed: { entries: Entry[]; metadata: Record<string, string>; start: number }) => T,
): T {
  let fd: number;
  try {
    fd = fs.openSync(file, 'r');
  } catch (err) {
    const reason = err instanceof Error ? err.message : String(err);
    throw new LunaError('ERR_ARGUMENT', `${where}: could not open ${JSON.stringify(file)}: ${reason}`, { cause: err });
  }
  try {
    const total = fs.fstatSync(fd).size;
    const prefix = new Uint8Array(8);
    readExactly(fd, prefix, 0);
    const n = headerLength(where, file, prefix, total);
    const headerBytes = new Uint8Array(n);
    if (readExactly(fd, headerBytes, 8) !== n) throw fail(where, file, 'the file ended while reading the header');
    const start = 8 + n;
    return body(fd, { ...parseHeader(where, file, headerBytes, total - start), start });
  } catch (err) {
    if (err instanceof LunaError) throw err;
    const reason = err instanceof Error ? err.message : String(err);
    throw new LunaError('ERR_ARGUMENT', `${where}: could not read ${JSON.stringify(file)}: ${reason}`, { cause: err });
  } finally {
    fs.closeSync(fd);
  }
}

/**
 * Reads and validates only the header of a safetensors file (or of in-memory bytes): the
 * tensors' names, dtypes and shapes, and the metadata. No tensor data is read.
 *
 * @param source - a path, or the file content as bytes
 * @throws LunaError ERR_ARGUMENT naming the file and the defect, for an unreadable or invalid file
 */
export function readSafetensorsHeader(source: string | Uint8Array): SafetensorsHeader {
  const where = 'readSafetensorsHeader';
  if (source instanceof Uint8Array) {
    const { entries, metadata } = parseBytes(where, source);
    return describeHeader(entries, metadata);
  }
  return withFile(where, checkPath(where, source), (_fd, { entries, metadata }) => describeHeader(entries, metadata));
}

/**
 * Loads a safetensors file (as written by PyTorch's `safetensors.torch.save_file`, the Hugging
 * Face libraries or {@link saveSafetensors}). Supported dtypes: F32, F64, BOOL and I32
 * (int32). The metadata is read by {@link readSafetensorsHeader}.
 *
 * The header is read and validated against the file size first; tensor data is read only
 * after every entry checked out, straight into each new tensor's buffer.
 *
 * @param file - the path to read
 * @param options - `dtype`: convert float tensors to this dtype
 * @returns names to new CPU tensors
 * @throws LunaError ERR_ARGUMENT naming the file and the defect, for an unreadable or invalid file
 */
export function loadSafetensors(file: string, options?: LoadSafetensorsOptions): Record<string, Tensor> {
  const where = 'loadSafetensors';
  checkPath(where, file);
  const want = checkLoadOptions(where, options);
  return withFile(where, file, (fd, { entries, start }) => {
    const out: Record<string, Tensor> = {};
    for (const e of entries) {
      const t = toTensor(
        where,
        file,
        e,
        (view) => {
          // The sizes were checked against the file, but the file may shrink under us.
          if (readExactly(fd, view, start + e.begin) !== view.length) {
            throw fail(where, file, `the file ended while reading entry ${JSON.stringify(e.name)}`);
          }
        },
        want,
      );
      setOwn(out, e.name, t);
    }
    return out;
  });
}
