// `npm run check:tarball` (CI runs it after the build): the package as users get it from npm.
//
//  1. `npm pack`, which runs prepack (`npm run prebuild`: the CUDA-enabled linux-x64 binary) and
//     prepare (the TypeScript build), exactly as `npm publish` would;
//  2. the tarball's size (at most 30 MB) and contents: what an install needs, no tests, benches,
//     build folders or scripts;
//  3. a PATH holding nothing but node, npm and sh, so no compiler, make, Python or nvcc is found;
//  4. `npm install --ignore-scripts <tarball>` into an empty project, then the package used from
//     `import` and from `require` (scripts/tarball-consumer/: fused attention with gradients
//     against plain JavaScript, a LunaEncoderLayer training step), its typings checked with tsc
//     under nodenext and node10 resolution, and `luna-attention doctor` run through its bin link;
//  5. the same install with install scripts on: node-gyp-build must find the prebuilt binary and
//     compile nothing (there is nothing to compile with).
//
// Slow (a pack and two installs), so it is not a vitest suite. Options: --keep leaves the work
// folder for inspection. LUNA_PREBUILD_ALLOW_CPU=1 accepts a linux-x64 binary without CUDA.
import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { fileURLToPath } from 'node:url';

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const consumerSrc = path.join(root, 'scripts', 'tarball-consumer');
const MAX_TARBALL_BYTES = 30_000_000; // 30 MB, the limit the issue sets
const keep = process.argv.includes('--keep');
const tuple = `${process.platform}-${process.arch}`;
const linuxX64 = tuple === 'linux-x64';
const expectCuda = linuxX64 && process.env.LUNA_PREBUILD_ALLOW_CPU !== '1';
const work = fs.mkdtempSync(path.join(os.tmpdir(), 'luna-tarball-'));
const started = Date.now();

function step(msg) {
  console.log(`\n--> ${msg}`);
}

function fail(msg) {
  console.error(`\ncheck-tarball: FAILED: ${msg}`);
  console.error(`(work folder kept: ${work})`);
  process.exit(1);
}

/** Runs a command; returns its output, or fails the check with everything it printed. */
function run(cmd, args, { cwd, env = process.env, inherit = false, expectStatus = 0 } = {}) {
  const r = spawnSync(cmd, args, {
    cwd,
    env,
    encoding: 'utf8',
    stdio: inherit ? 'inherit' : 'pipe',
    maxBuffer: 64 * 2 ** 20,
  });
  if (r.error) fail(`could not run ${cmd}: ${r.error.message}`);
  if (r.status !== expectStatus) {
    const output = inherit ? '' : `\n--- stdout\n${r.stdout}\n--- stderr\n${r.stderr}`;
    fail(`${path.basename(cmd)} ${args.join(' ')} (in ${cwd}) exited with ${r.status ?? r.signal}, expected ${expectStatus}${output}`);
  }
  return r.stdout ?? '';
}

/** Is `name` an executable file somewhere on `pathVar`? */
function onPath(name, pathVar) {
  return pathVar.split(path.delimiter).some((dir) => {
    try {
      fs.accessSync(path.join(dir, name), fs.constants.X_OK);
      return true;
    } catch {
      return false;
    }
  });
}

/** The npm CLI script that runs this machine's `npm` (through however many symlinks). */
function npmCli() {
  const fromEnv = process.env.npm_execpath; // set when run through `npm run`
  if (fromEnv && /npm-cli\.js$/.test(fromEnv)) return fromEnv;
  for (const dir of (process.env.PATH ?? '').split(path.delimiter)) {
    const candidate = path.join(dir, 'npm');
    if (fs.existsSync(candidate)) return fs.realpathSync(candidate);
  }
  const beside = path.join(path.dirname(process.execPath), '..', 'lib', 'node_modules', 'npm', 'bin', 'npm-cli.js');
  if (fs.existsSync(beside)) return beside;
  fail('npm not found');
}

// ---- 1. pack ------------------------------------------------------------------------------------
step('npm pack (prepack builds the prebuilt binary, prepare the TypeScript)');
const packDir = path.join(work, 'pack');
fs.mkdirSync(packDir);
run(process.execPath, [npmCli(), 'pack', '--pack-destination', packDir], { cwd: root, inherit: true });
const tarballs = fs.readdirSync(packDir).filter((f) => f.endsWith('.tgz'));
if (tarballs.length !== 1) fail(`expected one tarball in ${packDir}, found ${tarballs.join(', ') || 'none'}`);
const tarball = path.join(packDir, tarballs[0]);

// ---- 2. size and contents -----------------------------------------------------------------------
step('tarball size and contents');
const size = fs.statSync(tarball).size;
const files = run('tar', ['-tzf', tarball], { cwd: work })
  .split('\n')
  .filter(Boolean)
  .map((f) => f.replace(/^package\//, ''));
const unpacked = run('tar', ['-tzvf', tarball], { cwd: work })
  .split('\n')
  .filter(Boolean)
  .reduce((sum, line) => sum + Number(line.trim().split(/\s+/)[2] || 0), 0);
const mb = (n) => (n / 1e6).toFixed(2);
console.log(`${tarballs[0]}: ${mb(size)} MB packed, ${mb(unpacked)} MB unpacked, ${files.length} files`);
if (size > MAX_TARBALL_BYTES) fail(`the tarball is ${mb(size)} MB, over the ${mb(MAX_TARBALL_BYTES)} MB limit`);

const sources = JSON.parse(fs.readFileSync(path.join(root, 'native', 'sources.json'), 'utf8'));
const required = [
  'package.json',
  'README.md',
  'LICENSE',
  'bin/luna-attention.cjs',
  'dist/index.mjs',
  'dist/index.d.mts',
  'dist/cjs/index.js',
  'dist/cjs/index.d.ts',
  'dist/cjs/native.js',
  // The compile fallback: binding.gyp and every source it lists; CMake for the CUDA build.
  'binding.gyp',
  'CMakeLists.txt',
  'native/sources.json',
  ...sources.kernels,
  ...sources.bindings,
  ...sources.cudaStub,
  ...sources.cuda,
];
if (linuxX64) required.push('prebuilds/linux-x64/node.napi.glibc.node');
const missing = required.filter((f) => !files.includes(f));
if (missing.length > 0) fail(`the tarball lacks ${missing.join(', ')}`);
// Development-only paths: tests, benches, build folders, scripts, examples, docs, TS sources.
const forbidden = /^(test|bench|build|scripts|examples|docs|lib|node_modules|\.ci|anchors)\/|\.safetensors$|^tsconfig|^vitest|^typedoc/;
const leaked = files.filter((f) => forbidden.test(f));
if (leaked.length > 0) fail(`the tarball ships development files: ${leaked.slice(0, 10).join(', ')}`);
console.log(`contents ok: ${required.length} required files present, nothing from test/, bench/, build/, scripts/`);

// ---- 3. a PATH without build tools --------------------------------------------------------------
step('a PATH with only node, npm and sh');
const binDir = path.join(work, 'bin');
fs.mkdirSync(binDir);
fs.symlinkSync(process.execPath, path.join(binDir, 'node'));
fs.symlinkSync(npmCli(), path.join(binDir, 'npm'));
// npm runs install scripts through sh; every machine has one, compiler or not.
fs.symlinkSync('/bin/sh', path.join(binDir, 'sh'));
const tools = ['cc', 'gcc', 'g++', 'c++', 'clang', 'make', 'python', 'python3', 'nvcc', 'cmake', 'node-gyp'];
const found = tools.filter((t) => onPath(t, binDir));
if (found.length > 0) fail(`build tools are reachable: ${found.join(', ')}`);
// The parent's npm settings (when run through `npm run`) and compiler variables must not leak in:
// CC=/usr/bin/gcc would let node-gyp compile whatever PATH says.
const cleanEnv = {};
for (const [k, v] of Object.entries(process.env)) {
  if (/^npm_/i.test(k) && !/^npm_config_(cache|registry|userconfig)$/i.test(k)) continue;
  if (/^(CC|CXX|LINK|CUDACXX|PYTHON|NODE_GYP_FORCE_PYTHON|PREBUILDS_ONLY|LUNA_ATTENTION_PREBUILD|INIT_CWD)$/.test(k)) continue;
  cleanEnv[k] = v;
}
cleanEnv.PATH = binDir;
cleanEnv.LUNA_CHECK_EXPECT_CUDA = expectCuda ? '1' : '0';
console.log(`PATH=${binDir}: none of ${tools.join(', ')} found`);

const npmArgs = ['--no-audit', '--no-fund', '--prefer-offline', '--loglevel=error'];
function makeProject(name) {
  const dir = path.join(work, name);
  fs.mkdirSync(dir);
  fs.writeFileSync(path.join(dir, 'package.json'), JSON.stringify({ name, version: '1.0.0', private: true }));
  return dir;
}
const installed = (dir) => path.join(dir, 'node_modules', 'luna-attention');
const expectedBinary = (dir) => path.join(installed(dir), 'prebuilds', tuple, 'node.napi.glibc.node');

function checkNothingCompiled(dir) {
  if (fs.existsSync(path.join(installed(dir), 'build'))) {
    fail(`${installed(dir)}/build exists: the install compiled something`);
  }
}

/** `luna-attention doctor` through the bin link npm made: exit 0, the prebuilt binary in use. */
function checkDoctor(dir) {
  const bin = path.join(dir, 'node_modules', '.bin', 'luna-attention');
  if (!fs.existsSync(bin)) fail(`npm did not link the bin: ${bin}`);
  const text = run(bin, ['doctor'], { cwd: dir, env: cleanEnv });
  console.log(text.trimEnd().replace(/^/gm, '    '));
  const report = JSON.parse(run(bin, ['doctor', '--json'], { cwd: dir, env: cleanEnv }));
  if (!report.ok) fail(`doctor says not ok: ${report.error}`);
  if (linuxX64 && report.binary !== expectedBinary(dir)) {
    fail(`doctor reports the binary ${report.binary}, expected ${expectedBinary(dir)}`);
  }
  if (expectCuda && !report.cuda.compiled) fail('doctor: the loaded binary has no CUDA kernels');
}

// ---- 4. install with scripts off, use it ----------------------------------------------------------
step('npm install --ignore-scripts <tarball> into an empty project');
const app = makeProject('consumer');
run(path.join(binDir, 'npm'), ['install', '--ignore-scripts', ...npmArgs, tarball], { cwd: app, env: cleanEnv });
checkNothingCompiled(app);
for (const f of fs.readdirSync(consumerSrc)) fs.copyFileSync(path.join(consumerSrc, f), path.join(app, f));

step('use it from import and from require');
for (const entry of ['check.mjs', 'check.cjs']) {
  process.stdout.write(run(path.join(binDir, 'node'), [entry], { cwd: app, env: cleanEnv }));
}

step('typings: tsc on an ESM and a CommonJS consumer');
const tsc = path.join(root, 'node_modules', 'typescript', 'bin', 'tsc');
const tsBase = {
  strict: true,
  noEmit: true,
  target: 'ES2022',
  lib: ['ES2022'],
  // Checks the package's own .d.ts files too: a broken declaration must fail here.
  skipLibCheck: false,
  typeRoots: [path.join(root, 'node_modules', '@types')],
  types: ['node'],
};
const tsConfigs = {
  // How Node.js itself resolves: the exports map, import and require conditions.
  'tsconfig.nodenext.json': { module: 'nodenext', moduleResolution: 'nodenext', files: ['types-esm.mts', 'types-cjs.cts'] },
  // Older CommonJS set-ups that ignore the exports map and read "types".
  'tsconfig.node10.json': { module: 'commonjs', moduleResolution: 'node10', files: ['types-cjs.cts'] },
};
for (const [name, { files: tsFiles, ...opts }] of Object.entries(tsConfigs)) {
  fs.writeFileSync(path.join(app, name), JSON.stringify({ compilerOptions: { ...tsBase, ...opts }, files: tsFiles }, null, 2));
  run(path.join(binDir, 'node'), [tsc, '-p', name], { cwd: app, env: cleanEnv });
  console.log(`${name}: ${tsFiles.join(', ')} type-check`);
}

step('npx luna-attention doctor');
checkDoctor(app);
// And the failure path: pointing node-gyp-build at an empty folder must give exit status 1.
const empty = path.join(work, 'empty');
fs.mkdirSync(empty);
const broken = spawnSync(path.join(app, 'node_modules', '.bin', 'luna-attention'), ['doctor'], {
  cwd: app,
  env: { ...cleanEnv, LUNA_ATTENTION_PREBUILD: empty },
  encoding: 'utf8',
});
if (broken.status !== 1 || !/not ok: .*could not load the native addon/.test(broken.stdout)) {
  fail(`doctor without a binary: expected exit 1 and the load error, got ${broken.status}:\n${broken.stdout}${broken.stderr}`);
}
console.log('doctor without a usable binary: exit 1 with the reason');

// ---- 5. install with scripts on ---------------------------------------------------------------------
step('npm install <tarball> with install scripts on, still no compiler');
const app2 = makeProject('consumer-scripts');
run(path.join(binDir, 'npm'), ['install', ...npmArgs, tarball], { cwd: app2, env: cleanEnv });
checkNothingCompiled(app2);
checkDoctor(app2);

if (!keep) fs.rmSync(work, { recursive: true, force: true });
console.log(
  `\ncheck-tarball: ok (${mb(size)} MB tarball, ${((Date.now() - started) / 1000).toFixed(0)} s)` +
    (keep ? `; work folder: ${work}` : ''),
);
