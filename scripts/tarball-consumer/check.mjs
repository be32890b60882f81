// The package as `import` gives it. It must be the same instance as `require` gives (the ESM
// entry re-exports the CommonJS build), so tensors made through one work with the other.
import * as luna from 'luna-attention';
import lunaDefault from 'luna-attention';
import { createRequire } from 'node:module';
import { fileURLToPath } from 'node:url';
import assert from 'node:assert/strict';

const require = createRequire(import.meta.url);
const check = require('./check-body.cjs');

const resolved = fileURLToPath(import.meta.resolve('luna-attention'));
assert.ok(resolved.endsWith('/dist/index.mjs'), `import resolved to ${resolved}`);
assert.equal(luna.Tensor, require('luna-attention').Tensor, 'import and require load two copies');
assert.equal(lunaDefault.ops, luna.ops);
check(luna, 'import');
