"""PyTorch timings of the same work as the GPU check's rows (their `anchor` keys), on the same card.

bench/gpu-check.sh runs this after build/gpu/gpu_check; bench/gpu/make_table.py sets each row beside
the timing its anchor names. Float32 everywhere with TF32 off (matmul and cuDNN), so PyTorch does
the same arithmetic as our float32 kernels. Each workload: two untimed calls, then the median of
N timed calls (N chosen so a workload takes about --target-s seconds, within [--min-reps,
--max-reps]); each call is timed as gpu_check's time_row times ours: wall clock from the call to
the end of its device work (torch.cuda.synchronize).

    python3 bench/gpu/torch_anchors.py --out anchors.json            # CUDA, the full shapes
    python3 bench/gpu/torch_anchors.py --device cpu --quick          # a dry run on a CPU (small shapes)

The Luna math comes from ../shared/anchors/luna_ref.py when it can be imported (LUNA_ANCHORS_DIR,
or shared/anchors beside or inside the repository); otherwise from the same eager math written out
below (the GPU machine may have no copy of shared/). `--self-test` checks that the two agree.
The causal workload always uses the local copy of luna_ref's cumsum form: luna_ref builds its
position vector on the CPU, which fails for CUDA tensors.

Output (--out FILE, else printed): one JSON object {key: median ms}, plus "_meta": {key shapes,
repetitions, device, versions, which implementation was used, failures}. Keys that failed (out of
memory, an op missing in this PyTorch) are absent and listed in _meta.failed; the exit code is 1
then."""
import argparse
import importlib
import json
import math
import os
import re
import statistics
import sys
import time

import torch
import torch.nn.functional as F

LN_EPS = 1e-5


# ---- the eager Luna math (the same as ../shared/anchors/luna_ref.py) ------------------------------
def local_attn(q, k, v, scale, key_pad=None):
    """softmax(q k^T * scale) v over [B,h,L,dh]; key_pad [B,Lk] bool, True = padding."""
    s = torch.matmul(q, k.transpose(-1, -2)) * scale
    if key_pad is not None:
        s = s.masked_fill(key_pad[:, None, None, :], float('-inf'))
    return torch.matmul(torch.softmax(s, dim=-1), v)


def _split(x, h):
    B, L, d = x.shape
    return x.view(B, L, h, d // h).transpose(1, 2)


def _merge(x):
    B, h, L, dh = x.shape
    return x.transpose(1, 2).reshape(B, L, h * dh)


class LocalLunaAttention(torch.nn.Module):
    """Tied Luna attention as luna_ref.LunaAttention(d, h) (same parameter names and order)."""

    def __init__(self, d, h):
        super().__init__()
        self.d, self.h = d, h
        self.pq_proj = torch.nn.Linear(d, d)
        self.pc_proj = torch.nn.Linear(d, d)
        self.c_proj = torch.nn.Linear(d, d)
        self.q_proj = torch.nn.Linear(d, d)
        self.out_proj = torch.nn.Linear(d, d)

    def forward(self, x, p):
        h, s = self.h, (self.d // self.h) ** -0.5
        qp = _split(self.pq_proj(p), h)
        kp = _split(self.pc_proj(x), h)
        yp = _merge(local_attn(qp, kp, kp, s))
        ku = _split(self.c_proj(yp), h)
        yx = self.out_proj(_merge(local_attn(_split(self.q_proj(x), h), ku, ku, s)))
        return yx, yp


class LocalLunaEncoderLayer(torch.nn.Module):
    """Post-norm Luna encoder layer as luna_ref.LunaEncoderLayer(d, h, ffn): tied, exact GELU."""

    def __init__(self, d, h, ffn):
        super().__init__()
        self.self_attn = LocalLunaAttention(d, h)
        self.self_attn_layer_norm = torch.nn.LayerNorm(d, eps=LN_EPS)
        self.self_atten_proj_layer_norm = torch.nn.LayerNorm(d, eps=LN_EPS)
        self.fc1 = torch.nn.Linear(d, ffn)
        self.fc2 = torch.nn.Linear(ffn, d)
        self.final_layer_norm = torch.nn.LayerNorm(d, eps=LN_EPS)

    def forward(self, x, p):
        yx, yp = self.self_attn(x, p)
        xa = self.self_attn_layer_norm(x + yx)
        p_out = self.self_atten_proj_layer_norm(p + yp)
        return self.final_layer_norm(xa + self.fc2(F.gelu(self.fc1(xa)))), p_out


def causal_luna_attention(q, k, v, pq, pk, scale=None):
    """luna_ref.causal_luna_attention (the explicit cumsum form, O(n*l*dh) memory), with the
    position vector made on the inputs' device. q,k,v,pk [B,h,n,dh] unscaled, pq [B,h,l,dh]."""
    s = q.shape[-1] ** -0.5 if scale is None else scale
    qp, q = pq * s, q * s
    n = q.shape[2]
    phi = F.softplus(torch.matmul(pk, qp.transpose(-1, -2)), beta=math.log(2.0))  # [B,h,n,l]
    t = torch.arange(1, n + 1, dtype=q.dtype, device=q.device)[None, None, :, None, None]
    kbar = torch.cumsum(phi[..., :, None] * k[..., None, :], dim=2) / t  # [B,h,n,l,dh]
    vbar = torch.cumsum(phi[..., :, None] * v[..., None, :], dim=2) / t
    bm = torch.softmax(torch.einsum('bhnd,bhnld->bhnl', q, kbar), dim=-1)
    return torch.einsum('bhnl,bhnld->bhnd', bm, vbar)


def find_luna_ref():
    """luna_ref imported from the first directory that has it, else None (LUNA_ANCHORS_DIR=none:
    always None)."""
    if os.environ.get('LUNA_ANCHORS_DIR') == 'none':
        return None, None
    here = os.path.dirname(os.path.abspath(__file__))
    repo = os.path.normpath(os.path.join(here, '..', '..'))
    dirs = [os.environ.get('LUNA_ANCHORS_DIR', ''), os.path.join(repo, '..', 'shared', 'anchors'),
            os.path.join(repo, 'shared', 'anchors')]
    for d in dirs:
        if d and os.path.isfile(os.path.join(d, 'luna_ref.py')):
            sys.path.insert(0, os.path.abspath(d))
            try:
                return importlib.import_module('luna_ref'), os.path.abspath(d)
            except Exception as e:  # an old torch, a syntax error: fall back to the local math
                print(f'luna_ref in {d} does not import ({e}); using the local eager math', file=sys.stderr)
            finally:
                sys.path.pop(0)
    return None, None


# ---- timing ---------------------------------------------------------------------------------------
class Timer:
    def __init__(self, device, args):
        self.device, self.args = device, args
        self.cuda = device.type == 'cuda'

    def sync(self):
        if self.cuda:
            torch.cuda.synchronize()

    def once(self, fn):
        # As gpu_check's time_row: wall clock from the call to the end of its device work.
        self.sync()
        t = time.perf_counter()
        fn()
        self.sync()
        return (time.perf_counter() - t) * 1e3

    def median_ms(self, fn):
        """Two untimed calls, then the median of N timed ones; returns (ms, N)."""
        fn()
        first = self.once(fn)
        a = self.args
        reps = a.reps or max(a.min_reps, min(a.max_reps, int(a.target_s * 1e3 / max(first, 1e-3))))
        return statistics.median(self.once(fn) for _ in range(reps)), reps


def grads_fn(outputs, inputs, grads):
    """A step that runs backward from `outputs` with upstream `grads` (random, fixed) and returns
    the input gradients without accumulating them anywhere."""
    return lambda: torch.autograd.grad(outputs(), inputs, grads)


# ---- the workloads --------------------------------------------------------------------------------
def workloads(dev, quick, ref):
    """Yields (key, shape text, flops or 0, make) where make() builds the inputs and returns the
    step to time. Shapes follow the GPU check's rows (and ../shared/anchors/torch_bench.py)."""
    attn = ref.attn if ref else local_attn
    Layer = ref.LunaEncoderLayer if ref else LocalLunaEncoderLayer
    rn = lambda *s, g=False: torch.randn(*s, device=dev, requires_grad=g)
    # The shapes of the performance goals; --quick shrinks them for a dry run on a CPU.
    B, n, h, dh = (1, 256, 2, 64) if quick else (4, 4096, 4, 64)
    R, V = (1024, 1024) if quick else (16384, 8192)   # tokens (B x n), cross-entropy classes
    big = (1 << 20) if quick else (16 << 20)           # "16M" elements
    d_model, ffn = 256, 1024

    # pack (l queries over n keys) + unpack (n queries over l keys), k === v: torch_bench.ops.
    for l in (16, 64, 256):
        def make_ops(l=l, grad=False):
            qp, kc, q, ku = rn(B, h, l, dh, g=grad), rn(B, h, n, dh, g=grad), rn(B, h, n, dh, g=grad), rn(B, h, l, dh, g=grad)
            s = dh ** -0.5
            fwd = lambda: (attn(qp, kc, kc, s), attn(q, ku, ku, s))
            if not grad:
                return lambda: fwd()
            return grads_fn(fwd, (qp, kc, q, ku), (rn(B, h, l, dh), rn(B, h, n, dh)))
        shape = f'B={B} n={n} h={h} dh={dh} l={l}'
        yield f'attention_l{l}_fwd', shape, 8 * B * h * n * l * dh, make_ops
        yield f'attention_l{l}_fwdbwd', shape, 28 * B * h * n * l * dh, lambda l=l: make_ops(l, True)

    # causal Luna, the cumsum reference form (it materialises [B,h,n,l,dh]), k === v: torch_bench.causal.
    def make_causal(grad=False, l=16):
        q, k, kc = rn(B, h, n, dh, g=grad), rn(B, h, n, dh, g=grad), rn(B, h, n, dh, g=grad)
        pq = rn(B, h, l, dh, g=grad)
        fwd = lambda: causal_luna_attention(q, k, k, pq, kc)
        if not grad:
            return fwd
        return grads_fn(fwd, (q, k, kc, pq), rn(B, h, n, dh))
    shape = f'B={B} n={n} h={h} dh={dh} l=16 (cumsum form)'
    yield 'causal_l16_fwd', shape, 0, make_causal
    yield 'causal_l16_fwdbwd', shape, 0, lambda: make_causal(True)

    # softmax attention: torch's fused kernel (in float32 on Hopper: the memory-efficient one).
    sdpa = getattr(F, 'scaled_dot_product_attention', None)
    for ns in ((256, 512) if quick else (1024, 4096)):
        def make_sdpa(ns=ns, grad=False):
            if sdpa is None and not quick:
                raise RuntimeError('this PyTorch has no scaled_dot_product_attention (needs 2.0)')
            q, k, v = (rn(B, h, ns, dh, g=grad) for _ in range(3))
            # (a dry run on an old PyTorch times the eager math instead; the shape says so)
            fwd = (lambda: sdpa(q, k, v)) if sdpa else (lambda: local_attn(q, k, v, dh ** -0.5))
            if not grad:
                return fwd
            return grads_fn(fwd, (q, k, v), rn(B, h, ns, dh))
        key = 1024 if ns in (256, 1024) else 4096
        shape = f'B={B} n={ns} h={h} dh={dh}' + ('' if sdpa else ' (eager math: no sdpa here)')
        yield f'sdpa_{key}_fwd', shape, 4 * B * h * ns * ns * dh, make_sdpa
        yield f'sdpa_{key}_fwdbwd', shape, 14 * B * h * ns * ns * dh, lambda ns=ns: make_sdpa(ns, True)

    # linear fwd+bwd without bias, as torch_bench.linear and the gemm row: y = x W^T, dX, dW.
    for N in (256, 1024):
        def make_linear(N=N):
            w, x = (rn(N, d_model) * d_model ** -0.5).requires_grad_(), rn(R, d_model, g=True)
            return grads_fn(lambda: F.linear(x, w), (x, w), rn(R, N))
        yield f'linear_{N}_fwdbwd', f'[{R},{d_model}]x[{d_model},{N}] no bias', 6 * R * d_model * N, make_linear

    M = 512 if quick else 4096
    def make_mm():
        a, b = rn(M, M), rn(M, M)
        return lambda: torch.mm(a, b)
    yield 'mm_4096', f'{M}^3', 2 * M ** 3, make_mm

    # one LunaEncoderLayer training step: forward + backward into every parameter, x and p.
    def make_layer():
        torch.manual_seed(1)
        m = Layer(d_model, 4, ffn).to(dev)
        x, p = rn(B, n, d_model, g=True), rn(B, 16, d_model, g=True)
        gx, gp = rn(B, n, d_model), rn(B, 16, d_model)
        params = [x, p] + list(m.parameters())
        def step():
            for t in params:
                t.grad = None
            y, q = m(x, p)
            torch.autograd.backward((y, q), (gx, gp))
        return step
    yield 'encoder_layer_step', f'B={B} n={n} d={d_model} h=4 ffn={ffn} l=16 (fwd+bwd)', 0, make_layer

    def make_ln():
        x, w, b = rn(R, d_model, g=True), rn(d_model, g=True), rn(d_model, g=True)
        return grads_fn(lambda: F.layer_norm(x, (d_model,), w, b, LN_EPS), (x, w, b), rn(R, d_model))
    yield 'layer_norm_256_fwdbwd', f'[{R},{d_model}]', 0, make_ln

    def make_gelu():
        x = rn(R, ffn, g=True)
        return grads_fn(lambda: F.gelu(x), (x,), rn(R, ffn))
    yield 'gelu_1024_fwdbwd', f'[{R},{ffn}] exact', 0, make_gelu

    def make_ce():
        z = rn(R, V, g=True)
        t = torch.randint(0, V, (R,), device=dev)
        return grads_fn(lambda: F.cross_entropy(z, t, label_smoothing=0.1), (z,), torch.ones((), device=dev))
    yield 'cross_entropy_fwdbwd', f'[{R},{V}] s=0.1 mean', 0, make_ce

    # one AdamW update (decoupled weight decay), as the optim row.
    def make_adam():
        p = torch.nn.Parameter(rn(big))
        p.grad = rn(big)
        opt = torch.optim.AdamW([p], lr=1e-4, weight_decay=0.01)
        return opt.step
    yield 'adam_16M', f'[{big}] torch.optim.AdamW', 0, make_adam

    def make_add():
        a, b = rn(big), rn(big)
        return lambda: a + b
    yield 'add_16M', f'[{big}] out of place', 0, make_add

    T = 512 if quick else 4096
    def make_transpose():
        x = rn(T, T)
        return lambda: x.t().contiguous()
    yield 'transpose_4096', f'[{T},{T}] -> [{T},{T}]^T', 0, make_transpose

    def make_sum_rows():
        x = rn(big // ffn, ffn)
        return lambda: x.sum(dim=0)
    yield 'sum_rows_16M', f'[{big // ffn},{ffn}] -> [{ffn}] (column sums)', 0, make_sum_rows

    # a device-to-device copy of 1 GiB (torch's view of the copy bandwidth we measure ourselves).
    cb = (16 << 20) if quick else (1 << 30)
    def make_copy():
        src = torch.empty(cb // 4, device=dev).normal_()
        dst = torch.empty_like(src)
        return lambda: dst.copy_(src)
    yield 'copy_1G', f'{cb >> 20} MiB', 0, make_copy


def self_test(ref, dev):
    """The local eager math against luna_ref on small inputs (float64): they must agree."""
    if ref is None:
        print('self-test: luna_ref is not importable; nothing to compare with')
        return True
    torch.manual_seed(3)
    ok = True
    q, k = torch.randn(2, 2, 5, 8, dtype=torch.float64), torch.randn(2, 2, 7, 8, dtype=torch.float64)
    ok &= torch.allclose(local_attn(q, k, k, 0.3), ref.attn(q, k, k, 0.3), atol=1e-12)
    a = ref.LunaEncoderLayer(16, 2, 24, dtype=torch.float64)
    b = LocalLunaEncoderLayer(16, 2, 24).double()
    b.load_state_dict(a.state_dict(), strict=True)
    x, p = torch.randn(2, 9, 16, dtype=torch.float64), torch.randn(2, 3, 16, dtype=torch.float64)
    ok &= all(torch.allclose(u, v, atol=1e-10) for u, v in zip(a(x, p), b(x, p)))
    qc, kc, vc, pk = (torch.randn(2, 2, 11, 8, dtype=torch.float64) for _ in range(4))
    pq = torch.randn(2, 2, 4, 8, dtype=torch.float64)
    ok &= torch.allclose(causal_luna_attention(qc, kc, vc, pq, pk), ref.causal_luna_attention(qc, kc, vc, pq, pk), atol=1e-10)
    print(f'self-test: local eager math {"agrees with" if ok else "DIFFERS from"} luna_ref')
    return bool(ok)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    ap.add_argument('--device', default='cuda', choices=('cuda', 'cpu'))
    ap.add_argument('--quick', action='store_true', help='small shapes and few repetitions (a dry run)')
    ap.add_argument('--out', default='', help='write the JSON here (else print it)')
    ap.add_argument('--only', default='', help='a regular expression: time just the keys it matches')
    ap.add_argument('--reps', type=int, default=0, help='timed calls per workload (0: adaptive)')
    ap.add_argument('--min-reps', type=int, default=5)
    ap.add_argument('--max-reps', type=int, default=50)
    ap.add_argument('--target-s', type=float, default=0.4, help='about this long per workload')
    ap.add_argument('--self-test', action='store_true', help='check the local math against luna_ref first')
    args = ap.parse_args()
    if args.quick:
        args.min_reps, args.max_reps, args.target_s = 3, 5, 0.05

    if args.device == 'cuda' and not torch.cuda.is_available():
        print('torch_anchors: CUDA is not available to this PyTorch (use --device cpu for a dry run)', file=sys.stderr)
        return 2
    dev = torch.device(args.device)
    # Plain float32: TF32 would do the matmuls (and cuDNN's convolutions) in 10-bit mantissas.
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    if hasattr(torch, 'set_float32_matmul_precision'):
        torch.set_float32_matmul_precision('highest')
    torch.manual_seed(0)

    ref, ref_dir = find_luna_ref()
    if args.self_test and not self_test(ref, dev):
        return 1
    meta = {
        'device': torch.cuda.get_device_name(dev) if dev.type == 'cuda' else f'cpu ({torch.get_num_threads()} threads)',
        'torch': torch.__version__, 'cuda': torch.version.cuda, 'quick': args.quick, 'tf32': False,
        'luna_math': f'luna_ref from {ref_dir}' if ref else 'local eager copy of luna_ref',
        'timing': 'wall clock per call, synchronised; median',
        'shapes': {}, 'reps': {}, 'gflops': {}, 'failed': {},
    }
    print(f"torch_anchors: {meta['device']}, torch {meta['torch']}, {meta['luna_math']}", flush=True)
    results = {}
    only = re.compile(args.only) if args.only else None
    for key, shape, flops, make in workloads(dev, args.quick, ref):
        if only and not only.search(key):
            continue
        meta['shapes'][key] = shape
        try:
            # Forward-only workloads run without autograd; make() returns a step built for grads
            # where it needs them.
            grad = key.endswith('fwdbwd') or key in ('encoder_layer_step',)
            with torch.set_grad_enabled(grad):
                step = make()
                ms, reps = Timer(dev, args).median_ms(step)
            results[key] = round(ms, 5)
            meta['reps'][key] = reps
            rate = f'{flops / ms / 1e6:9.1f} GFLOP/s' if flops else ''
            if flops:
                meta['gflops'][key] = round(flops / ms / 1e6, 2)
            print(f'  {key:24s} {shape:44s} {ms:10.3f} ms  {rate}', flush=True)
        except Exception as e:  # out of memory, an op this PyTorch lacks: record and go on
            meta['failed'][key] = f'{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ""}'
            print(f'  {key:24s} FAILED {meta["failed"][key]}', flush=True)
        finally:
            step = None
            if dev.type == 'cuda':
                torch.cuda.empty_cache()
    results['_meta'] = meta
    text = json.dumps(results, indent=1)
    if args.out:
        with open(args.out, 'w') as f:
            f.write(text + '\n')
        print(f'torch_anchors: {len(results) - 1} timings -> {args.out}')
    else:
        print(text)
    return 1 if meta['failed'] else 0


if __name__ == '__main__':
    sys.exit(main())
