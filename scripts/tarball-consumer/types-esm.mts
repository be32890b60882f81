// Type-checked, never run: the ESM typings (exports["."].import.types) resolve and say what the
// README says.
import { ops, nn, optim, randn, backendInfo, LunaError } from 'luna-attention';
import type { Tensor, BackendInfo, Optimizer } from 'luna-attention';
import luna from 'luna-attention';

const q: Tensor = randn([1, 2, 3, 4], { requiresGrad: true });
const out: Tensor = ops.packAttention(q, q, q, { scale: 0.5 });
out.backward(randn(out.shape));
const grad: Tensor | null = q.grad;
const layer = new nn.LunaEncoderLayer({ embedDim: 8, numHeads: 2, ffnDim: 16 });
const step: { x: Tensor; p: Tensor } = layer.forward(randn([1, 5, 8]), randn([1, 2, 8]));
const opt: Optimizer = new optim.AdamW(layer.parameters(), { lr: 1e-3 });
const info: BackendInfo = backendInfo();
const cudaReason: string = info.cuda.reason;
const code: string = new LunaError('ERR_SHAPE', 'x').code;
const same: typeof ops = luna.ops;
// @ts-expect-error: an unknown dtype is a type error
randn([1], { dtype: 'float16' });
export { grad, step, opt, cudaReason, code, same };
