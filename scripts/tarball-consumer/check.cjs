// The package as `require` gives it.
'use strict';
const assert = require('node:assert/strict');
const check = require('./check-body.cjs');

const resolved = require.resolve('luna-attention');
assert.ok(resolved.endsWith('/dist/cjs/index.js'), `require resolved to ${resolved}`);
check(require('luna-attention'), 'require');
