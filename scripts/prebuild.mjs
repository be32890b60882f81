// `npm run prebuild`: makes the prebuilt binary that ships in the npm tarball.
//
// It builds the addon with cmake-js into build/cmake (CPU kernels plus, where nvcc is found, the
// CUDA kernels for sm_75..sm_90 with the CUDA runtime linked statically), strips it, and puts it
// where node-gyp-build looks for prebuilt binaries:
//
//   prebuilds/<platform>-<arch>/node.napi[.glibc|.musl].node
//
// That is prebuildify's name for a Node-API build: "node" (the runtime) and "napi" tell
// node-gyp-build that the binary fits every Node.js with a new enough Node-API, whatever its ABI
// number. On Linux the libc is part of the name (prebuildify --tag-libc), so node-gyp-build on
// Alpine (musl) skips a glibc binary and the install compiles one instead of loading one that
// cannot work.
//
// On linux-x64 the binary users get must have CUDA in it, so the script fails when the build has
// no CUDA (no nvcc) unless LUNA_PREBUILD_ALLOW_CPU=1 is set. Other platforms get a CPU build.
//
// npm runs this from `prepack`, so `npm pack` and `npm publish` always ship a binary built from
// the sources being packed; the cmake-js build is incremental, so a repeat costs seconds.
import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { createRequire } from 'node:module';
import { fileURLToPath } from 'node:url';

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const require = createRequire(path.join(root, 'package.json'));
const allowCpu = process.env.LUNA_PREBUILD_ALLOW_CPU === '1';
const OUT_DIR = path.join(root, 'build', 'cmake');
// The architectures CMakeLists.txt builds for when CUDAARCHS does not narrow them.
// (sm_86 and sm_89 GPUs run the sm_80 code.)
const EXPECTED_SM = [75, 80, 90];

function fail(message) {
  console.error(`prebuild: ${message}`);
  process.exit(1);
}

function run(cmd, args, opts = {}) {
  const r = spawnSync(cmd, args, { cwd: root, stdio: 'inherit', ...opts });
  if (r.error) fail(`could not run ${cmd}: ${r.error.message}`);
  if (r.status !== 0) fail(`${cmd} ${args.join(' ')} exited with ${r.status ?? r.signal}`);
}

/** The libc tag node-gyp-build matches against (glibc unless this is Alpine), on Linux only. */
function libcTag() {
  if (process.platform !== 'linux') return null;
  return fs.existsSync('/etc/alpine-release') ? 'musl' : 'glibc';
}

/** Runs `code` in a fresh node (a crash in the addon must not look like a script bug). */
function nodeEval(code, args, env = {}) {
  const r = spawnSync(process.execPath, ['-e', code, ...args], {
    cwd: root,
    encoding: 'utf8',
    env: { ...process.env, ...env },
  });
  if (r.status !== 0) fail(`checking the binary failed (${r.status ?? r.signal}):\n${r.stderr}`);
  return JSON.parse(r.stdout);
}

/**
 * The SM versions of the device code in an ELF file's .nv_fatbin section, or null when the file
 * has none. The section is a run of fat-binary containers (magic 0xBA55ED50, a 16-byte header and
 * a payload size); each holds entries whose header keeps the target SM at byte 28. Read here
 * because cuobjdump is not part of every CUDA install.
 */
function fatbinArchs(file) {
  const buf = fs.readFileSync(file);
  if (buf.readUInt32BE(0) !== 0x7f454c46 || buf[4] !== 2) return null; // ELF64 only
  const shoff = Number(buf.readBigUInt64LE(0x28));
  const shentsize = buf.readUInt16LE(0x3a);
  const shnum = buf.readUInt16LE(0x3c);
  const strtab = shoff + buf.readUInt16LE(0x3e) * shentsize;
  const namesAt = Number(buf.readBigUInt64LE(strtab + 0x18));
  for (let i = 0; i < shnum; i++) {
    const sh = shoff + i * shentsize;
    const nameAt = namesAt + buf.readUInt32LE(sh);
    const name = buf.toString('latin1', nameAt, buf.indexOf(0, nameAt));
    if (name !== '.nv_fatbin') continue;
    const start = Number(buf.readBigUInt64LE(sh + 0x18));
    const end = start + Number(buf.readBigUInt64LE(sh + 0x20));
    const archs = new Set();
    let at = start;
    while (at + 16 <= end && buf.readUInt32LE(at) === 0xba55ed50) {
      const headerSize = buf.readUInt16LE(at + 6);
      const containerEnd = at + headerSize + Number(buf.readBigUInt64LE(at + 8));
      let entry = at + headerSize;
      while (entry + 32 <= containerEnd) {
        const entryHeader = buf.readUInt32LE(entry + 4);
        const payload = buf.readUInt32LE(entry + 8);
        if (entryHeader === 0) break;
        archs.add(buf.readUInt32LE(entry + 28));
        entry += entryHeader + payload;
      }
      at = (containerEnd + 7) & ~7; // containers are 8-byte aligned
    }
    return [...archs].sort((a, b) => a - b);
  }
  return null;
}

/** The newest GLIBC_x.y symbol version a binary needs (what the target system must have). */
function glibcFloor(file) {
  const text = fs.readFileSync(file).toString('latin1');
  const versions = [...new Set(text.match(/GLIBC_2\.\d+/g) ?? [])].map((v) => Number(v.split('.')[1]));
  return versions.length ? `2.${Math.max(...versions)}` : null;
}

// ---- build ------------------------------------------------------------------------------------
const cmakeJs = path.join(path.dirname(require.resolve('cmake-js/package.json')), 'bin', 'cmake-js');
console.log(`prebuild: cmake-js build into ${path.relative(root, OUT_DIR)}`);
run(process.execPath, [cmakeJs, 'build', '--out', OUT_DIR, '--target', 'luna_attention']);
const built = path.join(OUT_DIR, 'Release', 'luna_attention.node');
if (!fs.existsSync(built)) fail(`the build did not produce ${built}`);

const info = nodeEval(
  'const a = require(process.argv[1]); process.stdout.write(JSON.stringify({ cuda: a.cudaInfo(), cpu: a.cpuInfo() }));',
  [built],
);
const wantCuda = process.platform === 'linux' && process.arch === 'x64';
if (wantCuda && !info.cuda.compiled && !allowCpu) {
  fail(
    'the build has no CUDA kernels (nvcc was not found when build/cmake was configured). The ' +
      'linux-x64 binary in the package must have them: install the CUDA toolkit (nvcc on PATH), ' +
      'delete build/cmake and run again, or set LUNA_PREBUILD_ALLOW_CPU=1 for a CPU-only binary.',
  );
}

// ---- strip and install into prebuilds/ ----------------------------------------------------------
const tuple = `${process.platform}-${process.arch}`;
const name = ['node', 'napi', libcTag()].filter(Boolean).join('.') + '.node';
const destDir = path.join(root, 'prebuilds', tuple);
const dest = path.join(destDir, name);
fs.mkdirSync(destDir, { recursive: true });
const staged = path.join(destDir, `.${name}.tmp`);
fs.copyFileSync(built, staged);
if (process.platform !== 'win32') {
  // --strip-unneeded drops the symbol tables and debug sections but keeps the dynamic symbols
  // and every allocated section, the CUDA fat binary (.nv_fatbin) among them. macOS strip
  // spells it -x.
  const args = process.platform === 'darwin' ? ['-x', staged] : ['--strip-unneeded', staged];
  const r = spawnSync('strip', args, { stdio: 'inherit' });
  if (r.error || r.status !== 0) {
    fs.rmSync(staged, { force: true });
    fail(`strip failed (${r.error?.message ?? `exit ${r.status}`}); binutils must be installed`);
  }
}
// The device code must have survived stripping, for every architecture CMake was asked for.
let archs = null;
if (info.cuda.compiled) {
  archs = fatbinArchs(staged);
  const missing = archs === null ? EXPECTED_SM : EXPECTED_SM.filter((sm) => !archs.includes(sm));
  // CUDAARCHS narrows the list on purpose (see CMakeLists.txt); then any device code will do.
  const narrowed = process.env.CUDAARCHS !== undefined && archs !== null && archs.length > 0;
  if (missing.length > 0 && !narrowed) {
    fs.rmSync(staged, { force: true });
    fail(`the binary reports CUDA but lacks device code for sm_${missing.join(', sm_')}`);
  }
}
// Only one binary per folder: node-gyp-build would pick among several by name alone.
for (const old of fs.readdirSync(destDir)) {
  if (old.endsWith('.node') && old !== name) fs.rmSync(path.join(destDir, old));
}
fs.renameSync(staged, dest);

// ---- check what node-gyp-build will load --------------------------------------------------------
// A throwaway package root that holds nothing but package.json and prebuilds/, so the lookup
// cannot fall back to build/Release: node-gyp-build must find this file under this name.
const probeRoot = fs.mkdtempSync(path.join(os.tmpdir(), 'luna-prebuild-'));
try {
  fs.writeFileSync(path.join(probeRoot, 'package.json'), JSON.stringify({ name: 'luna-attention' }));
  fs.mkdirSync(path.join(probeRoot, 'prebuilds', tuple), { recursive: true });
  fs.copyFileSync(dest, path.join(probeRoot, 'prebuilds', tuple, name));
  const loaded = nodeEval(
    `const ngb = require(${JSON.stringify(require.resolve('node-gyp-build'))});
     const file = ngb.resolve(process.argv[1]);
     const a = require(file);
     process.stdout.write(JSON.stringify({ file, cuda: a.cudaInfo(), threads: a.getNumThreads() }));`,
    [probeRoot],
  );
  const expected = path.join(probeRoot, 'prebuilds', tuple, name);
  let problem = null;
  if (loaded.file !== expected) problem = `node-gyp-build picked ${loaded.file}, not ${expected}`;
  else if (loaded.cuda.compiled !== info.cuda.compiled) problem = 'stripping changed what cudaInfo() reports';
  if (problem !== null) {
    fs.rmSync(dest, { force: true }); // a binary that fails its check must not get packed
    fail(problem);
  }
} finally {
  fs.rmSync(probeRoot, { recursive: true, force: true });
}

const sizeMb = (fs.statSync(dest).size / 2 ** 20).toFixed(1);
const glibc = process.platform === 'linux' ? glibcFloor(dest) : null;
console.log(
  `prebuild: ${path.relative(root, dest)} (${sizeMb} MiB, stripped); CUDA: ` +
    (info.cuda.compiled ? `compiled in, sm_${archs.join(' sm_')}` : 'not compiled in') +
    (glibc ? `; needs glibc ${glibc}+` : ''),
);
