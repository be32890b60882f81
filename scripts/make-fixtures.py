#!/usr/bin/env python3
"""Builds the PyTorch parity fixtures in test/fixtures/ (see test/fixtures/README.md).

Each case runs one Luna module of the reference implementation (shared/anchors/luna_ref.py) in
float64 on small fixed-seed inputs, backpropagates a random cotangent and writes everything the
TypeScript suites need to compare against (parameters, inputs, outputs, cotangents, gradients)
into one safetensors file.

Run from the repository root:  /usr/bin/python3 scripts/make-fixtures.py
It needs torch only: the safetensors format is written here by hand (struct + json), because the
Python safetensors package is not installed on these machines. Re-running it rewrites the same
bytes (fixed seeds, deterministic float64 CPU math), up to torch version differences.
"""
import json
import os
import struct
import sys

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
# The anchors live in shared/ beside the repository (or inside it, in some checkouts).
for cand in (os.path.join(ROOT, '..', 'shared', 'anchors'), os.path.join(ROOT, 'shared', 'anchors'),
             '/work/shared/anchors'):
    if os.path.isfile(os.path.join(cand, 'luna_ref.py')):
        sys.path.insert(0, os.path.abspath(cand))
        break
import luna_ref  # noqa: E402  (found through the path set just above)

OUT_DIR = os.path.join(ROOT, 'test', 'fixtures')
DT = torch.float64

# Small sizes with nothing a power of two where it could hide an indexing bug: n = 7 tokens,
# l = 3 P slots, d = 12 with h = 3 unpack heads (dh = 4) and hp = 2 pack heads (dp = 6).
B, N, L, D, H, HP, FFN = 2, 7, 3, 12, 3, 2, 20
M_CROSS = 5  # context length of the cross-attention case

# ---------------------------------------------------------------------------------------------
# safetensors writer


def _st_dtype(t):
    if t.dtype == torch.float64:
        return 'F64', 8
    if t.dtype == torch.float32:
        return 'F32', 4
    if t.dtype == torch.bool:
        return 'BOOL', 1
    raise ValueError(f'unsupported dtype {t.dtype}')


def save_safetensors(path, tensors, metadata):
    """Writes `tensors` (name -> CPU tensor) in the safetensors layout: u64 LE header length,
    a JSON header padded with spaces to a multiple of 8, then the raw little-endian data. Tensors
    are laid out as the reference library does: larger element size first, then by name."""
    items = sorted(tensors.items(), key=lambda kv: (-_st_dtype(kv[1])[1], kv[0]))
    header = {'__metadata__': metadata}
    chunks, offset = [], 0
    for name, t in items:
        code, _ = _st_dtype(t)
        raw = t.detach().contiguous().numpy().astype(t.numpy().dtype.newbyteorder('<')).tobytes()
        header[name] = {'dtype': code, 'shape': list(t.shape), 'data_offsets': [offset, offset + len(raw)]}
        chunks.append(raw)
        offset += len(raw)
    text = json.dumps(header, separators=(',', ':')).encode('utf-8')
    text += b' ' * (-len(text) % 8)
    tmp = path + '.tmp'
    with open(tmp, 'wb') as f:
        f.write(struct.pack('<Q', len(text)))
        f.write(text)
        for c in chunks:
            f.write(c)
    os.replace(tmp, path)


def read_safetensors(path):
    """Reads a file back (a self-check of the writer): returns name -> (code, shape, bytes)."""
    with open(path, 'rb') as f:
        blob = f.read()
    (n,) = struct.unpack('<Q', blob[:8])
    header = json.loads(blob[8:8 + n].decode('utf-8'))
    header.pop('__metadata__', None)
    data = blob[8 + n:]
    spans = sorted((v['data_offsets'][0], v['data_offsets'][1]) for v in header.values())
    assert spans[0][0] == 0 and spans[-1][1] == len(data), path
    assert all(a[1] == b[0] for a, b in zip(spans, spans[1:])), path
    return {k: (v['dtype'], v['shape'], data[v['data_offsets'][0]:v['data_offsets'][1]]) for k, v in header.items()}

# ---------------------------------------------------------------------------------------------
# cases


def perturb_layer_norms(module, gen):
    """LayerNorms start at weight 1, bias 0, where a mix-up of the two (or a missing LN) can go
    unnoticed; move them away so that every LN parameter shows in the outputs."""
    with torch.no_grad():
        for m in module.modules():
            if isinstance(m, torch.nn.LayerNorm):
                m.weight.copy_(1 + 0.2 * torch.randn(m.weight.shape, generator=gen, dtype=DT))
                m.bias.copy_(0.2 * torch.randn(m.bias.shape, generator=gen, dtype=DT))


def masks(gen_len_ctx):
    """Context padding mask: example 1 has its last two tokens padded (example 0 none).
    Pack padding mask: example 0 has P slot 2 masked, example 1 slot 0; no row is all masked."""
    ctx = torch.zeros(B, gen_len_ctx, dtype=torch.bool)
    ctx[1, -2:] = True
    pp = torch.zeros(B, L, dtype=torch.bool)
    pp[0, 2] = True
    pp[1, 0] = True
    return ctx, pp


def run_case(name, seed, build, forward, inputs, out_names, config):
    """Builds the module, runs forward and backward, checks and writes the fixture."""
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed + 1)
    module = build()
    perturb_layer_norms(module, gen)
    float_inputs = {k: v(gen).requires_grad_(True) for k, v in inputs.items() if not k.endswith('mask')}
    mask_inputs = {k: v(gen) for k, v in inputs.items() if k.endswith('mask')}
    outs = forward(module, float_inputs, mask_inputs)
    cots = [torch.randn(o.shape, generator=gen, dtype=DT) for o in outs]
    loss = sum((o * c).sum() for o, c in zip(outs, cots))
    params = dict(module.named_parameters())
    grads = torch.autograd.grad(loss, list(params.values()) + list(float_inputs.values()))
    for g in grads:
        assert torch.isfinite(g).all(), name
    tensors = {}
    for k, p in params.items():
        tensors[f'param.{k}'] = p.detach()
    for k, v in {**float_inputs, **mask_inputs}.items():
        tensors[f'input.{k}'] = v.detach()
    for k, o, c in zip(out_names, outs, cots):
        assert torch.isfinite(o).all(), name
        tensors[f'output.{k}'] = o.detach()
        tensors[f'cotangent.{k}'] = c
    names = [f'grad.{k}' for k in params] + [f'grad.input.{k}' for k in float_inputs]
    for k, g in zip(names, grads):
        tensors[k] = g.detach()
    meta = {
        'config': json.dumps(config, sort_keys=True),
        'generator': 'scripts/make-fixtures.py',
        'torch_version': torch.__version__,
        'loss': 'sum over outputs of sum(output * cotangent)',
    }
    path = os.path.join(OUT_DIR, f'{name}.safetensors')
    save_safetensors(path, tensors, meta)
    back = read_safetensors(path)
    for k, t in tensors.items():
        assert back[k][1] == list(t.shape) and back[k][2] == t.numpy().tobytes(), (name, k)
    size = os.path.getsize(path)
    assert size < 80_000, f'{path} is {size} bytes'
    print(f'{path}: {len(tensors)} tensors, {size} bytes')


def attention_case(name, seed, tie_kv, cross):
    m = M_CROSS if cross else N
    cfg = {'module': 'LunaAttention', 'd': D, 'h': H, 'hp': HP, 'tie_kv': tie_kv, 'B': B, 'n': N, 'l': L,
           'm': m, 'self_attention': not cross, 'seed': seed}
    ctx_mask, pp_mask = masks(m)
    inputs = {
        'x': lambda g: torch.randn(B, N, D, generator=g, dtype=DT),
        'p': lambda g: torch.randn(B, L, D, generator=g, dtype=DT),
        'context_padding_mask': lambda g: ctx_mask,
        'pack_padding_mask': lambda g: pp_mask,
    }
    if cross:
        inputs['context'] = lambda g: torch.randn(B, M_CROSS, D, generator=g, dtype=DT)

    def fwd(mod, f, k):
        return mod(f['x'], f['p'], f.get('context'), k['context_padding_mask'], k['pack_padding_mask'])

    run_case(name, seed, lambda: luna_ref.LunaAttention(D, H, HP, tie_kv=tie_kv, dtype=DT), fwd, inputs,
             ['yx', 'yp'], cfg)


def encoder_case(name, seed, tie_kv, normalize_before, act):
    cfg = {'module': 'LunaEncoderLayer', 'd': D, 'h': H, 'hp': HP, 'ffn': FFN, 'tie_kv': tie_kv,
           'normalize_before': normalize_before, 'activation': act, 'B': B, 'n': N, 'l': L, 'seed': seed}
    ctx_mask, pp_mask = masks(N)
    inputs = {
        'x': lambda g: torch.randn(B, N, D, generator=g, dtype=DT),
        'p': lambda g: torch.randn(B, L, D, generator=g, dtype=DT),
        'context_padding_mask': lambda g: ctx_mask,
        'pack_padding_mask': lambda g: pp_mask,
    }

    def fwd(mod, f, k):
        return mod(f['x'], f['p'], k['context_padding_mask'], k['pack_padding_mask'])

    build = lambda: luna_ref.LunaEncoderLayer(D, H, FFN, HP, tie_kv=tie_kv, act=act,
                                              normalize_before=normalize_before, dtype=DT)
    run_case(name, seed, build, fwd, inputs, ['x', 'p'], cfg)


class DecoderLayer(torch.nn.Module):
    """Luna decoder layer (luna-math.md section 4.4) built from the reference's modules, with our
    (fairseq) parameter names: causal self-attention with P as pack query, cross-attention over
    the encoder output that also updates P, then the FFN; post-norm or pre-norm."""

    def __init__(self, d, h, ffn, hp, tie_kv, act, normalize_before):
        super().__init__()
        self.normalize_before = normalize_before
        self.self_attn = luna_ref.LunaCausalAttention(d, h, tie_kv=tie_kv, dtype=DT)
        self.self_attn_layer_norm = torch.nn.LayerNorm(d, dtype=DT)
        self.encoder_attn = luna_ref.LunaAttention(d, h, hp, tie_kv=tie_kv, dtype=DT)
        self.encoder_attn_layer_norm = torch.nn.LayerNorm(d, dtype=DT)
        self.encoder_atten_proj_layer_norm = torch.nn.LayerNorm(d, dtype=DT)
        self.fc1 = torch.nn.Linear(d, ffn, dtype=DT)
        self.fc2 = torch.nn.Linear(ffn, d, dtype=DT)
        self.final_layer_norm = torch.nn.LayerNorm(d, dtype=DT)
        self.act = torch.nn.functional.gelu if act == 'gelu' else torch.relu

    def ffn(self, x):
        return self.fc2(self.act(self.fc1(x)))

    def forward(self, x, p, enc, enc_pad, p_pad):
        if self.normalize_before:
            x = x + self.self_attn(self.self_attn_layer_norm(x), p, p_pad)
            yx, yp = self.encoder_attn(self.encoder_attn_layer_norm(x), self.encoder_atten_proj_layer_norm(p),
                                       enc, enc_pad, p_pad)
            x = x + yx
            p = p + yp
            return x + self.ffn(self.final_layer_norm(x)), p
        x = self.self_attn_layer_norm(x + self.self_attn(x, p, p_pad))
        yx, yp = self.encoder_attn(x, p, enc, enc_pad, p_pad)
        x = self.encoder_attn_layer_norm(x + yx)
        p = self.encoder_atten_proj_layer_norm(p + yp)
        return self.final_layer_norm(x + self.ffn(x)), p


def causal_case(name, seed, tie_kv):
    cfg = {'module': 'LunaCausalAttention', 'd': D, 'h': H, 'hp': H, 'tie_kv': tie_kv, 'B': B, 'n': N, 'l': L,
           'seed': seed}
    _, pp_mask = masks(N)
    inputs = {
        'x': lambda g: torch.randn(B, N, D, generator=g, dtype=DT),
        'p': lambda g: torch.randn(B, L, D, generator=g, dtype=DT),
        'pack_padding_mask': lambda g: pp_mask,
    }

    def fwd(mod, f, k):
        return [mod(f['x'], f['p'], k['pack_padding_mask'])]

    run_case(name, seed, lambda: luna_ref.LunaCausalAttention(D, H, tie_kv=tie_kv, dtype=DT), fwd, inputs, ['y'], cfg)


def decoder_case(name, seed, tie_kv, normalize_before, act):
    cfg = {'module': 'LunaDecoderLayer', 'd': D, 'h': H, 'hp': HP, 'ffn': FFN, 'tie_kv': tie_kv,
           'normalize_before': normalize_before, 'activation': act, 'B': B, 'n': N, 'l': L, 'm': M_CROSS,
           'seed': seed}
    ctx_mask, pp_mask = masks(M_CROSS)
    inputs = {
        'x': lambda g: torch.randn(B, N, D, generator=g, dtype=DT),
        'p': lambda g: torch.randn(B, L, D, generator=g, dtype=DT),
        'context': lambda g: torch.randn(B, M_CROSS, D, generator=g, dtype=DT),
        'context_padding_mask': lambda g: ctx_mask,
        'pack_padding_mask': lambda g: pp_mask,
    }

    def fwd(mod, f, k):
        return mod(f['x'], f['p'], f['context'], k['context_padding_mask'], k['pack_padding_mask'])

    build = lambda: DecoderLayer(D, H, FFN, HP, tie_kv, act, normalize_before)
    run_case(name, seed, build, fwd, inputs, ['x', 'p'], cfg)


def main():
    os.makedirs(OUT_DIR, exist_ok=True)
    torch.use_deterministic_algorithms(True)
    attention_case('attention_tied', 101, tie_kv=True, cross=False)
    attention_case('attention_untied', 102, tie_kv=False, cross=False)
    attention_case('attention_tied_cross', 103, tie_kv=True, cross=True)
    seed = 200
    for norm in ('post', 'pre'):
        for tie in ('tied', 'untied'):
            for act in ('gelu', 'relu'):
                seed += 1
                encoder_case(f'encoder_{norm}norm_{tie}_{act}', seed, tie_kv=tie == 'tied',
                             normalize_before=norm == 'pre', act=act)
    causal_case('causal_tied', 301, tie_kv=True)
    causal_case('causal_untied', 302, tie_kv=False)
    seed = 400
    for norm in ('post', 'pre'):
        for tie in ('tied', 'untied'):
            seed += 1
            decoder_case(f'decoder_{norm}norm_{tie}', seed, tie_kv=tie == 'tied', normalize_before=norm == 'pre',
                         act='relu' if tie == 'tied' else 'gelu')


if __name__ == '__main__':
    main()
