"""One table from the GPU check: our CUDA rows (build/gpu/gpu_check --json) beside the PyTorch
timings of the same work (bench/gpu/torch_anchors.py), with rates, fractions of the measured peaks
and the speed-ups the performance goals of issue 4 are about.

    python3 bench/gpu/make_table.py --rows OUT/rows.json --torch OUT/torch.json [--out OUT]

Prints the table and writes it as markdown (OUT/gpu-check.md) and JSON (OUT/gpu-check.json); OUT is
--out, else $OUT, else ./gpu-check-out. Either input may be missing (a failed step): the table
then says so and shows what there is. Needs only the Python standard library.

Columns: ms (median), GB/s (the fewest bytes the op must move / ms), TFLOP/s, %copy (GB/s over
the device-to-device copy bandwidth measured in the same run), %sgemm (TFLOP/s over our own sgemm
at 4096^3, there being no cuBLAS in our build), torch ms (the row's anchor), speed-up (torch ms /
ms; above 1 we are faster)."""
import argparse
import json
import os
import sys

# The performance goals of issue 4: (what, anchor keys, kind, threshold).
GOALS = [
    ('pack+unpack forward, l=16: >= 60% of the copy bandwidth', ['attention_l16_fwd'], 'copy_fraction', 0.60),
    ('pack+unpack fwd+bwd, l=16: >= 3x PyTorch eager', ['attention_l16_fwdbwd'], 'speedup', 3.0),
    ('pack+unpack fwd+bwd, l=64: >= 3x PyTorch eager', ['attention_l64_fwdbwd'], 'speedup', 3.0),
    ('pack+unpack fwd+bwd, l=256: >= 3x PyTorch eager', ['attention_l256_fwdbwd'], 'speedup', 3.0),
    ('LunaEncoderLayer training step: >= 1.5x PyTorch eager', ['encoder_layer_step'], 'speedup', 1.5),
]


def load(path, what):
    if not path:
        return None, f'{what}: not given'
    if not os.path.isfile(path):
        return None, f'{what}: no file {path}'
    try:
        with open(path) as f:
            return json.load(f), None
    except (OSError, ValueError) as e:
        return None, f'{what}: {path} does not parse ({e})'


def fmt(v, spec, none='-'):
    return none if v is None else format(v, spec)


def enrich(rows, copy_gbs, gemm_tflops, torch_ms):
    out = []
    for r in rows:
        ms = r.get('ms') or 0
        e = dict(r)
        e['gbs'] = r['bytes'] / ms / 1e6 if ms > 0 and r.get('bytes') else None
        e['tflops'] = r['flops'] / ms / 1e9 if ms > 0 and r.get('flops') else None
        e['copy_fraction'] = e['gbs'] / copy_gbs if e['gbs'] and copy_gbs else None
        e['sgemm_fraction'] = e['tflops'] / gemm_tflops if e['tflops'] and gemm_tflops else None
        t = torch_ms.get(r.get('anchor') or '')
        e['torch_ms'] = t
        e['speedup'] = t / ms if t and ms > 0 else None
        out.append(e)
    return out


def goal_rows(rows, anchor):
    """The rows a goal is judged on: the one row named pack+unpack (or the only one) with this
    anchor; several separate rows (pack, unpack) together."""
    hits = [r for r in rows if r.get('anchor') == anchor and r.get('ms')]
    fused = [r for r in hits if 'pack+unpack' in r.get('kernel', '') or 'layer' in r.get('kernel', '')]
    return fused[:1] if fused else hits


def judge_goals(rows, copy_gbs, torch_ms, emulated, quick_torch):
    results = []
    for what, anchors, kind, threshold in GOALS:
        rs = [r for a in anchors for r in goal_rows(rows, a)]
        res = {'goal': what, 'threshold': threshold, 'kind': kind, 'rows': [r['kernel'] for r in rs]}
        if not rs:
            res.update(value=None, status='no row')
        else:
            ms = sum(r['ms'] for r in rs)
            if kind == 'copy_fraction':
                by = sum(r.get('bytes') or 0 for r in rs)
                value = by / ms / 1e6 / copy_gbs if by and copy_gbs else None
            else:
                t = torch_ms.get(anchors[0])
                value = t / ms if t else None
            res.update(value=value, status='n/a' if value is None else ('MET' if value >= threshold else 'not met'))
            if value is not None and (emulated or (quick_torch and kind == 'speedup')):
                res['status'] = 'dry run'  # emulator timings, or PyTorch at small shapes: judge nothing
        results.append(res)
    return results


def text_table(header, lines, nleft=3):
    widths = [max(len(str(x)) for x in col) for col in zip(header, *lines)]
    right = [i >= nleft for i in range(len(header))]
    def row(cells):
        return '  '.join(str(c).rjust(w) if r else str(c).ljust(w) for c, w, r in zip(cells, widths, right)).rstrip()
    return '\n'.join([row(header), row(['-' * w for w in widths])] + [row(l) for l in lines])


def md_table(header, lines, nleft=3):
    out = ['| ' + ' | '.join(header) + ' |', '|' + '|'.join('---' if i < nleft else '---:' for i in range(len(header))) + '|']
    out += ['| ' + ' | '.join(str(c).replace('|', '\\|') for c in l) + ' |' for l in lines]
    return '\n'.join(out)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    ap.add_argument('--rows', help="gpu_check's --json file")
    ap.add_argument('--torch', help="torch_anchors.py's --out file")
    ap.add_argument('--out', default=os.environ.get('OUT') or 'gpu-check-out', help='folder for gpu-check.md/.json')
    args = ap.parse_args()

    problems = []
    check, p = load(args.rows, 'gpu_check rows')
    if p:
        problems.append(p)
    anchors, p = load(args.torch, 'PyTorch anchors')
    if p:
        problems.append(p)
    check = check or {}
    if isinstance(check, list):  # a bare list of rows
        check = {'rows': check}
    anchors = anchors or {}
    meta = anchors.get('_meta', {})
    torch_ms = {k: v for k, v in anchors.items() if not k.startswith('_') and isinstance(v, (int, float))}
    copy_gbs, gemm_tflops = check.get('copy_gbs') or 0, check.get('gemm_tflops') or 0
    rows = enrich(check.get('rows', []), copy_gbs, gemm_tflops, torch_ms)

    notes = []
    if check:
        notes.append(f"device: {check.get('device', '?')}{' (EMULATOR: timings are meaningless)' if check.get('emulated') else ''}; "
                     f"validation: {check.get('cases', '?')} checks, {check.get('failures', '?')} failed (seed {check.get('seed', '?')})")
    notes.append(f'device-to-device copy: {copy_gbs:.1f} GB/s (read + write, best of the timed copies); '
                 f'our sgemm 4096^3: {gemm_tflops:.2f} TFLOP/s' if copy_gbs or gemm_tflops else
                 'no peaks measured (validate-only run, or the runtime / gemm benches did not run)')
    if meta:
        t = [f"PyTorch {meta.get('torch', '?')} (CUDA {meta.get('cuda')}) on {meta.get('device', '?')}",
             'TF32 off', meta.get('luna_math', '')]
        if torch_ms.get('mm_4096') and not meta.get('quick'):
            t.append(f"torch.mm 4096^3: {2 * 4096 ** 3 / torch_ms['mm_4096'] / 1e9:.2f} TFLOP/s")
        if torch_ms.get('copy_1G') and not meta.get('quick'):
            t.append(f"torch copy 1 GiB: {2 * (1 << 30) / torch_ms['copy_1G'] / 1e6:.1f} GB/s")
        if meta.get('quick'):
            t.append('QUICK (small shapes: not comparable with the rows)')
        notes.append('; '.join(x for x in t if x))
        if meta.get('failed'):
            notes.append('PyTorch workloads that failed: ' + ', '.join(f'{k} ({v})' for k, v in meta['failed'].items()))
    notes += problems

    header = ['family', 'kernel', 'shape', 'ms', 'GB/s', 'TFLOP/s', '%copy', '%sgemm', 'torch ms', 'speed-up']
    lines = [[r.get('family', ''), r.get('kernel', ''), r.get('shape', ''), fmt(r.get('ms'), '.3f'), fmt(r['gbs'], '.1f'),
              fmt(r['tflops'], '.2f'), fmt(r['copy_fraction'] and 100 * r['copy_fraction'], '.0f'),
              fmt(r['sgemm_fraction'] and 100 * r['sgemm_fraction'], '.0f'), fmt(r['torch_ms'], '.3f'),
              fmt(r['speedup'], '.2f') + ('x' if r['speedup'] else '')] for r in rows]
    missing = sorted({r['anchor'] for r in rows if r.get('anchor') and r['anchor'] not in torch_ms})
    used = {r.get('anchor') for r in rows}
    torch_only = [[k, meta.get('shapes', {}).get(k, ''), f'{v:.3f}'] for k, v in torch_ms.items() if k not in used]
    goals = judge_goals(rows, copy_gbs, torch_ms, bool(check.get('emulated')), bool(meta.get('quick'))) if rows else []
    shapes = meta.get('shapes', {})
    anchor_notes = [f'{a}: {shapes[a]}' for a in sorted(used) if a and a in shapes]

    # ---- print ----
    print('\n'.join(notes))
    print()
    print(text_table(header, lines) if lines else '(no timed rows: gpu_check ran --validate-only or failed before its benchmarks)')
    if missing:
        print(f"\nanchors with no PyTorch timing: {', '.join(missing)}")
    if goals:
        print('\nperformance goals (issue 4):')
        for g in goals:
            v = '-' if g['value'] is None else (f"{100 * g['value']:.0f}%" if g['kind'] == 'copy_fraction' else f"{g['value']:.2f}x")
            print(f"  {g['status']:8s} {g['goal']}: {v}")
    if torch_only:
        print('\nPyTorch timings no row refers to:')
        print(text_table(['key', 'torch shape', 'ms'], torch_only, nleft=2))

    # ---- write ----
    os.makedirs(args.out, exist_ok=True)
    md = ['# GPU check', ''] + [f'- {n}' for n in notes] + ['']
    md.append(md_table(header, lines) if lines else '_No timed rows: gpu_check ran --validate-only or failed before its benchmarks._')
    if missing:
        md += ['', f"Anchors with no PyTorch timing: {', '.join(missing)}."]
    if goals:
        md += ['', '## Performance goals (issue 4)', '', md_table(
            ['goal', 'rows', 'value', 'status'],
            [[g['goal'], ', '.join(g['rows']) or '-',
              '-' if g['value'] is None else (f"{100 * g['value']:.0f}% of copy" if g['kind'] == 'copy_fraction' else f"{g['value']:.2f}x"),
              g['status']] for g in goals], nleft=4)]
    if anchor_notes:
        md += ['', '## PyTorch anchor shapes', ''] + [f'- {a}' for a in anchor_notes]
    if torch_only:
        md += ['', '## PyTorch timings no row refers to', '', md_table(['key', 'torch shape', 'ms'], torch_only, nleft=2)]
    md_path, json_path = os.path.join(args.out, 'gpu-check.md'), os.path.join(args.out, 'gpu-check.json')
    with open(md_path, 'w') as f:
        f.write('\n'.join(md) + '\n')
    with open(json_path, 'w') as f:
        json.dump({'check': {k: v for k, v in check.items() if k != 'rows'}, 'torch_meta': meta, 'notes': notes,
                   'rows': rows, 'goals': goals, 'torch_only': {k: torch_ms[k] for k, *_ in torch_only},
                   'missing_anchors': missing}, f, indent=1)
    print(f'\ntable: {md_path}, {json_path}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
