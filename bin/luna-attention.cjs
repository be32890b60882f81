#!/usr/bin/env node
// `npx luna-attention doctor`: what a bug report needs in one screen. The versions involved, which
// native binary was loaded and from where (a prebuilt one from prebuilds/, or one compiled at
// install time in build/), the CPU features the kernels dispatch to, the thread count, and
// whether CUDA is usable and, when not, why. Exit status 0 when the addon loads and a tiny op
// gives the right answer, 1 otherwise (with the reason), 2 for a usage error.
//
// CommonJS and plain JavaScript on purpose: it must run from the installed package as it is,
// with no build step, on the oldest Node.js the package supports.
'use strict';

const fs = require('node:fs');
const path = require('node:path');

const root = path.resolve(__dirname, '..');

const USAGE = `usage: luna-attention <command>

commands:
  doctor [--json]   versions, the native binary in use and where it came from, CPU features,
                    threads and CUDA status; exit 1 when the addon cannot be loaded
  --version         the package version`;

function readPackage() {
  try {
    return JSON.parse(fs.readFileSync(path.join(root, 'package.json'), 'utf8'));
  } catch {
    return { name: 'luna-attention', version: 'unknown' };
  }
}

/** The glibc version of this process, or null (not Linux, or musl). */
function glibcVersion() {
  if (process.platform !== 'linux') return null;
  try {
    // Excluding the network interfaces keeps getReport() quick and quiet.
    process.report.excludeNetwork = true;
    return process.report.getReport().header.glibcVersionRuntime ?? null;
  } catch {
    return null;
  }
}

/** Where a binary came from, judged by the folder node-gyp-build found it in. */
function describeBinary(file) {
  const rel = path.relative(root, file);
  if (rel.startsWith(`prebuilds${path.sep}`)) return 'prebuilt (shipped in the package)';
  if (rel.startsWith(`build${path.sep}`)) return 'compiled on this machine (node-gyp or cmake-js)';
  return 'from outside the package (LUNA_ATTENTION_PREBUILD or next to the node executable)';
}

/**
 * Runs one small pack attention and compares it with the answer worked out by hand: with equal
 * keys every probability is 1/2, so the single output row is the mean of the two value rows.
 */
function selfTest(lib) {
  const q = lib.tensor([[[[1, 1]]]]); // [1,1,1,2]
  const k = lib.zeros([1, 1, 2, 2]);
  const v = lib.tensor([[[[1, 2], [3, 4]]]]); // [1,1,2,2]
  const out = Array.from(lib.ops.packAttention(q, k, v).dataSync());
  const want = [2, 3];
  const ok = out.length === 2 && out.every((x, i) => Math.abs(x - want[i]) < 1e-6);
  return ok ? null : `packAttention gave [${out.join(', ')}], expected [${want.join(', ')}]`;
}

function collect() {
  const pkg = readPackage();
  const report = {
    package: { name: pkg.name, version: pkg.version, root },
    node: process.version,
    napi: process.versions.napi ?? null,
    napiRequired: null,
    platform: `${process.platform}-${process.arch}`,
    glibc: glibcVersion(),
    binary: null,
    binarySource: null,
    cpu: null,
    threads: null,
    threadsFrom: null,
    cuda: null,
    ok: false,
    error: null,
  };
  let lib;
  let native;
  try {
    native = require(path.join(root, 'dist', 'cjs', 'native.js'));
    lib = require(path.join(root, 'dist', 'cjs', 'index.js'));
  } catch (err) {
    report.error =
      `the compiled library (dist/) could not be loaded: ${err.message}\n` +
      'In a clone of the repository, run `npm run build:ts` first.';
    return report;
  }
  report.napiRequired = native.MIN_NAPI_VERSION;
  try {
    const info = lib.backendInfo();
    report.binary = native.nativeBinaryPath();
    report.binarySource = report.binary ? describeBinary(report.binary) : null;
    report.cpu = { isa: info.cpu.isa, avx2: info.cpu.avx2, avx512f: info.cpu.avx512f, fma: info.cpu.fma };
    report.threads = info.cpu.threads;
    report.threadsFrom = process.env.LUNA_NUM_THREADS
      ? `LUNA_NUM_THREADS=${process.env.LUNA_NUM_THREADS}`
      : `the default, one per core; LUNA_NUM_THREADS overrides`;
    report.cuda = info.cuda;
  } catch (err) {
    report.error = err.message;
    return report;
  }
  try {
    report.error = selfTest(lib);
  } catch (err) {
    report.error = `the self-test threw: ${err.message}`;
  }
  report.ok = report.error === null;
  return report;
}

function cudaLine(cuda) {
  if (!cuda.compiled) return `not compiled in: ${cuda.reason || 'a CPU-only binary'}`;
  if (cuda.available) return `usable: ${cuda.deviceCount} device(s)`;
  return `compiled in, not usable here: ${cuda.reason || 'no reason given'}`;
}

function printText(r) {
  const lines = [
    ['package', `${r.package.name} ${r.package.version} (${r.package.root})`],
    ['node', `${r.node}, Node-API ${r.napi ?? 'none'}${r.napiRequired ? ` (needs ${r.napiRequired}+)` : ''}`],
    ['platform', r.platform + (r.glibc ? `, glibc ${r.glibc}` : '')],
  ];
  if (r.binary) lines.push(['binary', `${r.binary}`], ['', r.binarySource]);
  if (r.cpu) {
    const flags = ['avx2', 'avx512f', 'fma'].map((f) => `${f} ${r.cpu[f] ? 'yes' : 'no'}`).join(', ');
    lines.push(['cpu', `${r.cpu.isa} kernels (${flags})`]);
    lines.push(['threads', `${r.threads} (${r.threadsFrom})`]);
  }
  if (r.cuda) lines.push(['cuda', cudaLine(r.cuda)]);
  const width = Math.max(...lines.map(([k]) => k.length));
  console.log('luna-attention doctor');
  for (const [k, v] of lines) console.log(`  ${k.padEnd(width)}  ${v}`);
  if (r.ok) {
    console.log('\nok: the native addon loads and computes');
  } else {
    console.log(`\nnot ok: ${r.error}`);
  }
}

function main(argv) {
  const [command, ...rest] = argv;
  if (command === undefined || command === 'help' || command === '--help' || command === '-h') {
    console.log(USAGE);
    return 0;
  }
  if (command === '--version' || command === '-v') {
    console.log(readPackage().version);
    return 0;
  }
  if (command !== 'doctor') {
    console.error(`luna-attention: unknown command "${command}"\n\n${USAGE}`);
    return 2;
  }
  const unknown = rest.filter((a) => a !== '--json');
  if (unknown.length > 0) {
    console.error(`luna-attention doctor: unknown option ${unknown[0]}\n\n${USAGE}`);
    return 2;
  }
  const report = collect();
  if (rest.includes('--json')) console.log(JSON.stringify(report, null, 2));
  else printText(report);
  return report.ok ? 0 : 1;
}

process.exitCode = main(process.argv.slice(2));
