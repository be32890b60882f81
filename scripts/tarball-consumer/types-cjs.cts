// Type-checked, never run: the CommonJS typings (exports["."].require.types) resolve.
import luna = require('luna-attention');

const q: luna.Tensor = luna.randn([1, 2, 3, 4], { requiresGrad: true });
const out: luna.Tensor = luna.ops.unpackAttention(q, q, q);
const threads: number = luna.backendInfo().cpu.threads;
// @ts-expect-error: packAttention needs three tensors
luna.ops.packAttention(q, q);
export { out, threads };
