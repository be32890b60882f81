// Optimizers, gradient clipping and learning-rate schedules, checked against PyTorch.
//
// The expected numbers below were produced once with torch 1.13 (float64 unless named f32) by a
// short script: parameters P0 (and Q0) get the gradient g(p) = 2*w*(p - c) + cos(p) with the
// constants below, then `opt.step()`; the arrays hold the parameters after each step. The second
// parameter Q (indices 2..4 of w and c) has no gradient for the first two steps, which checks that
// parameters without a gradient are skipped and keep their own step count (bias correction).
// The test needs no Python.
import { describe, expect, it } from 'vitest';
import { ops, optim, tensor, zeros, type Optimizer, type Tensor } from '../lib/index';
import { expectLunaError } from './helpers';

const W = [1, 0.5, 2, 1.5, 0.25];
const C = [0.3, -0.7, 1.1, 0, 2.5];
const P0 = [0.5, -1.2, 0.8, 2.0, -0.3];
const Q0 = [0.25, -0.5, 1.5];

const TORCH_TRAJECTORIES: Record<string, number[][][]> = {
  sgd_plain: [
    [[0.3722417438109627, -1.1862357754476673, 0.8503293290652836, 1.4416146836547141, -0.2555336489125606]],
    [[0.26464195960243275, -1.1751273799203914, 0.8842240282765943, 0.9962480137758892, -0.21450982120901385]],
    [[0.17519494637006558, -1.1661571957613739, 0.9071454322747049, 0.6430280413449139, -0.17649241567011506]],
    [[0.10168669925166156, -1.1589101821042367, 0.9226875655895204, 0.37009125384730845, -0.1411143549511907]],
    [[0.04186592329749588, -1.1530530079433088, 0.9332445653777404, 0.16583444340063602, -0.10806462529018328]],
    [[-0.006419636385211023, -1.1483175937417853, 0.9404237460479593, 0.017456015113528647, -0.07707806387101238]],
  ],
  sgd_momentum_wd: [
    [[0.37174174381096275, -1.1850357754476673, 0.8495293290652836, 1.4396146836547141, -0.2552336489125606]],
    [[0.14841961370514337, -1.1595057506160762, 0.9274107964069557, 0.48886330674848766, -0.17368745008036843]],
    [[-0.12130324704751323, -1.1293979084537902, 1.0056216343284292, -0.6022475123731573, -0.06493323279972275]],
    [[-0.3789370468881652, -1.1009520887034647, 1.0592007779814128, -1.485377197410296, 0.06146789979966939]],
    [[-0.5675469585136989, -1.0794294307198748, 1.0737255821624625, -1.8416269066756539, 0.19728291191057187]],
    [[-0.6475411583760357, -1.0682198165776469, 1.0485486652794835, -1.5811687627742126, 0.3363947181481655]],
  ],
  sgd_nesterov: [
    [[0.3850175694298664, -1.1876121979029006, 0.8452963961587552, 1.4974532152892428, -0.2599802840213045]],
    [[0.2454204998766781, -1.1729713497143217, 0.8933792186611035, 0.9078625822258516, -0.20852749308108845]],
    [[0.10013706119042755, -1.158107983185622, 0.9356063348029086, 0.3183037932879413, -0.1500756401234097]],
    [[-0.03522845354873893, -1.1445064695499858, 0.9671819824012632, -0.19120356435912117, -0.0880862107388176]],
    [[-0.14931331869845693, -1.1331156582390767, 0.9866012544807538, -0.5593571878248511, -0.025132972273238036]],
    [[-0.23554651955461714, -1.1244086280080057, 0.9947766794519921, -0.7628106998052291, 0.03697221822888127]],
  ],
  adam_default_lr: [
    [[0.4500000003913641, -1.1500000036326052, 0.8499999990065435, 1.9500000000895439, -0.2500000011244457], [0.25, -0.5, 1.5]],
    [[0.40010530585462306, -1.107177081445505, 0.8985927080122911, 1.9000267196748408, -0.20016939793589683], [0.25, -0.5, 1.5]],
    [[0.35040192236121126, -1.0838605116504882, 0.9437745273915186, 1.8500982611196648, -0.15062620715238417], [0.29999999979433073, -0.45000000080331937, 1.5499999988352124]],
    [[0.3009898925747676, -1.0815004802613948, 0.9824650642769576, 1.800232929640584, -0.1014890485530823], [0.3498564596966514, -0.40105280428673434, 1.6000536426770304]],
    [[0.2519852128025487, -1.0922650580004054, 1.0112635191627537, 1.7504492256313655, -0.05287417654051669], [0.3994584267169183, -0.3545097608619885, 1.650194077422461]],
    [[0.20352182255783358, -1.1097306274703478, 1.0282766066039561, 1.7007658401093875, -0.004892344856137938], [0.44868254435816834, -0.3124095326876784, 1.7004522205309647]],
  ],
  adam_l2: [
    [[0.4500000376624127, -1.1500001940667992, 0.8499998818788699, 1.9500000086447546, -0.250000105337557]],
    [[0.4001948022447435, -1.102690559738604, 0.8972465409213746, 1.9000527536599876, -0.2003129632676666]],
    [[0.3507388107930948, -1.0619706883358238, 0.9377188806905559, 1.850193482400178, -0.1511579077149708]],
    [[0.33116584102291646, -1.050366219644142, 0.94909918854803, 1.8302989333558215, -0.13179663117559098]],
    [[0.3117668624423949, -1.0431184001022207, 0.9560259270289398, 1.8104440273633602, -0.11267740428209028]],
    [[0.29253712158717, -1.0397919277541292, 0.9589796559482505, 1.7906265413053253, -0.09378431141727075]],
  ],
  adamw: [
    [[0.4475000003913641, -1.1440000036326055, 0.8459999990065435, 1.9400000000895439, -0.24850000112444573], [0.25, -0.5, 1.5]],
    [[0.3953746553320783, -1.0976103178401113, 0.8905666793693264, 1.880332627522971, -0.19743364040388778], [0.25, -0.5, 1.5]],
    [[0.34371368724700985, -1.0752542504094988, 0.9321057469967996, 1.8210181903315699, -0.14692007017773118], [0.29874999979433076, -0.44750000080331936, 1.5424999988352124]],
    [[0.2926212544220367, -1.0743231172928487, 0.9682241625877399, 1.7620770625848943, -0.09707725857554778], [0.3471174059133229, -0.39641346266606436, 1.5848357728692914]],
    [[0.24221782575063472, -1.085555734610328, 0.9961322386899154, 1.7035296923412004, -0.048018868542586655], [0.3949985575226924, -0.3482385883780272, 1.627037918953687]],
    [[0.1926420662557391, -1.10290498292092, 1.0138277455170763, 1.6453966140743366, 0.0001489176170978504], [0.4422800228021998, -0.3052343076633129, 1.6691349195041216]],
  ],
  adamw_f32: [
    [[0.44749999046325684, -1.1440000534057617, 0.8460000157356262, 1.940000057220459, -0.2485000044107437]],
    [[0.3953746557235718, -1.097610354423523, 0.8905667066574097, 1.8803327083587646, -0.19743363559246063]],
    [[0.3437137007713318, -1.075254201889038, 0.9321057796478271, 1.8210182189941406, -0.14692005515098572]],
    [[0.2926212549209595, -1.074323058128357, 0.9682241678237915, 1.7620770931243896, -0.09707725048065186]],
    [[0.2422178089618683, -1.0855556726455688, 0.9961322546005249, 1.703529715538025, -0.04801885783672333]],
    [[0.19264204800128937, -1.1029049158096313, 1.0138276815414429, 1.6453967094421387, 0.00014893338084220886]],
  ],
};

const TORCH_CLIP: Record<string, { normType: number; maxNorm: number; total: number; grads: number[][] }> = {
  l2: { normType: 2.0, maxNorm: 1.0, total: 5.619441698247256, grads: [[0.08897679482628296, -0.26693038447884887, 0.3559071793051318], [0.5338607689576977, -0.04448839741314148, 0.02224419870657074, -0.7118143586102637]] },
  l1: { normType: 1.0, maxNorm: 2.0, total: 11.375, grads: [[0.0879120801835534, -0.2637362405506602, 0.3516483207342136], [0.5274724811013204, -0.0439560400917767, 0.02197802004588835, -0.7032966414684272]] },
  inf: { normType: Infinity, maxNorm: 1.5, total: 4.0, grads: [[0.18749995312501172, -0.5624998593750352, 0.7499998125000469], [1.1249997187500704, -0.09374997656250586, 0.04687498828125293, -1.4999996250000938]] },
  l3: { normType: 3.0, maxNorm: 0.5, total: 4.680218323954879, grads: [[0.05341630011235136, -0.16024890033705408, 0.21366520044940543], [0.32049780067410816, -0.02670815005617568, 0.01335407502808784, -0.42733040089881086]] },
  l2_noclip: { normType: 2.0, maxNorm: 100.0, total: 5.619441698247256, grads: [[0.5, -1.5, 2.0], [3.0, -0.25, 0.125, -4.0]] },
};

type Dt = 'float32' | 'float64';

/** Sets p.grad to g(p) with the constants starting at `offset`. */
function setGrad(p: Tensor, offset: number): void {
  const x = p.dataSync();
  const g = Array.from(x, (v, i) => 2 * W[offset + i] * (v - C[offset + i]) + Math.cos(v));
  p.grad = tensor(g, { dtype: p.dtype });
}

/** Runs `steps` updates the way the torch script did and returns the trajectory. */
function run(
  make: (params: Tensor[]) => Optimizer,
  opts: { dtype?: Dt; second?: boolean; lrChange?: [number, number]; steps?: number } = {},
): number[][][] {
  const dtype = opts.dtype ?? 'float64';
  const p = tensor(P0, { dtype, requiresGrad: true });
  const q = opts.second ? tensor(Q0, { dtype, requiresGrad: true }) : null;
  const opt = make(q ? [p, q] : [p]);
  const out: number[][][] = [];
  for (let s = 0; s < (opts.steps ?? 6); s++) {
    if (opts.lrChange && s === opts.lrChange[0]) opt.lr = opts.lrChange[1];
    setGrad(p, 0);
    if (q) {
      if (s >= 2) setGrad(q, 2);
      else q.grad = null;
    }
    opt.step();
    out.push([Array.from(p.dataSync()), ...(q ? [Array.from(q.dataSync())] : [])]);
  }
  return out;
}

function expectClose(got: number[][][], want: number[][][], rtol: number, label: string): void {
  expect(got.length).toBe(want.length);
  got.forEach((step, s) =>
    step.forEach((arr, k) =>
      arr.forEach((x, i) => {
        const w = want[s][k][i];
        const err = Math.abs(x - w);
        expect(err, `${label}: step ${s + 1}, param ${k}, element ${i}: got ${x}, torch ${w}`).toBeLessThanOrEqual(
          rtol * Math.max(1, Math.abs(w)),
        );
      }),
    ),
  );
}

describe('optimizers match torch.optim', () => {
  it('SGD without momentum', () => {
    expectClose(run((ps) => new optim.SGD(ps, { lr: 0.1 })), TORCH_TRAJECTORIES.sgd_plain, 1e-13, 'sgd');
  });
  it('SGD with momentum and weight decay', () => {
    const got = run((ps) => new optim.SGD(ps, { lr: 0.1, momentum: 0.9, weightDecay: 0.01 }));
    expectClose(got, TORCH_TRAJECTORIES.sgd_momentum_wd, 1e-13, 'sgd momentum');
  });
  it('SGD with Nesterov momentum', () => {
    const got = run((ps) => new optim.SGD(ps, { lr: 0.05, momentum: 0.8, nesterov: true }));
    expectClose(got, TORCH_TRAJECTORIES.sgd_nesterov, 1e-13, 'nesterov');
  });
  it('Adam, with a parameter that has no gradient for the first steps', () => {
    const got = run((ps) => new optim.Adam(ps, { lr: 0.05 }), { second: true });
    expectClose(got, TORCH_TRAJECTORIES.adam_default_lr, 1e-12, 'adam');
  });
  it('Adam with L2 weight decay, custom betas and eps, and an lr change mid-run', () => {
    const got = run((ps) => new optim.Adam(ps, { lr: 0.05, betas: [0.8, 0.99], eps: 1e-6, weightDecay: 0.1 }), {
      lrChange: [3, 0.02],
    });
    expectClose(got, TORCH_TRAJECTORIES.adam_l2, 1e-12, 'adam l2');
  });
  it('AdamW (decoupled weight decay)', () => {
    const got = run((ps) => new optim.AdamW(ps, { lr: 0.05, weightDecay: 0.1 }), { second: true });
    expectClose(got, TORCH_TRAJECTORIES.adamw, 1e-12, 'adamw');
  });
  it('AdamW on float32 parameters stays float32 and tracks torch in float32', () => {
    const got = run((ps) => new optim.AdamW(ps, { lr: 0.05, weightDecay: 0.1 }), { dtype: 'float32' });
    // torch rounds after every elementary op, we after each update: a few float32 ulps apart.
    expectClose(got, TORCH_TRAJECTORIES.adamw_f32, 2e-6, 'adamw f32');
  });
  it('AdamW defaults to weightDecay 0.01 and Adam to 0', () => {
    const p = zeros([1], { requiresGrad: true });
    expect(new optim.AdamW([p]).weightDecay).toBe(0.01);
    expect(new optim.Adam([p]).weightDecay).toBe(0);
    expect(new optim.Adam([p]).lr).toBe(1e-3);
    expect(new optim.Adam([p]).betas).toEqual([0.9, 0.999]);
  });
});

describe('optimizer mechanics', () => {
  it('the first Adam step moves every coordinate by about lr (bias correction)', () => {
    const p = tensor([1, -2, 3], { dtype: 'float64', requiresGrad: true });
    p.grad = tensor([1e-3, -5, 100], { dtype: 'float64' });
    new optim.Adam([p], { lr: 0.1, eps: 0 }).step();
    expect(Array.from(p.dataSync())).toEqual([0.9, -1.9, 2.9].map((x) => expect.closeTo(x, 12)));
  });

  it('zeroGrad sets grads to null and disposes the old gradient tensors', () => {
    const p = tensor([1, 2], { requiresGrad: true });
    const q = tensor([3], { requiresGrad: true });
    const g = tensor([0.5, 0.5]);
    p.grad = g;
    const opt = new optim.SGD([p, q], { lr: 1 });
    opt.zeroGrad();
    expect(p.grad).toBeNull();
    expect(q.grad).toBeNull();
    expect(g.isDisposed).toBe(true);
    opt.step(); // nothing to do: no parameter has a gradient
    expect(Array.from(p.dataSync())).toEqual([1, 2]);
  });

  it('updates the parameter buffer in place (views see the change)', () => {
    const p = tensor([1, 2], { dtype: 'float64', requiresGrad: true });
    const view = p.detach();
    p.grad = tensor([1, 1], { dtype: 'float64' });
    new optim.SGD([p], { lr: 0.5 }).step();
    expect(Array.from(view.dataSync())).toEqual([0.5, 1.5]);
  });

  it('works with gradients from backward()', () => {
    const p = tensor([1, 2, 3], { dtype: 'float64', requiresGrad: true });
    p.backward(tensor([1, -1, 2], { dtype: 'float64' }));
    new optim.SGD([p], { lr: 0.1 }).step();
    expect(Array.from(p.dataSync()).map((x) => +x.toFixed(12))).toEqual([0.9, 2.1, 2.8]);
  });

  it('stateDict / loadStateDict resume a run exactly', () => {
    const make = (ps: Tensor[]) => new optim.Adam(ps, { lr: 0.05, weightDecay: 0.1 });
    const full = run(make, { steps: 5 });
    // Three steps, save, build a fresh optimizer over a copy of the parameters, load, two more.
    const p = tensor(P0, { dtype: 'float64', requiresGrad: true });
    const a = make([p]);
    for (let s = 0; s < 3; s++) {
      setGrad(p, 0);
      a.step();
    }
    const sd = a.stateDict();
    expect(Object.keys(sd).sort()).toEqual(['lr', 'state.0.exp_avg', 'state.0.exp_avg_sq', 'state.0.step']);
    expect(sd['state.0.step'].dataSync()[0]).toBe(3);
    const p2 = tensor(Array.from(p.dataSync()), { dtype: 'float64', requiresGrad: true });
    const b = make([p2]);
    b.loadStateDict(sd);
    for (let s = 0; s < 2; s++) {
      setGrad(p2, 0);
      b.step();
    }
    expect(Array.from(p2.dataSync())).toEqual(full[4][0]);
  });

  it('loadStateDict is strict and leaves the optimizer unchanged on error', () => {
    const p = tensor([1, 2], { dtype: 'float64', requiresGrad: true });
    const opt = new optim.SGD([p], { lr: 0.1, momentum: 0.9 });
    p.grad = tensor([1, 1], { dtype: 'float64' });
    opt.step();
    const sd = opt.stateDict();
    expectLunaError(() => opt.loadStateDict({ ...sd, extra: tensor([1]) }), 'ERR_ARGUMENT', /unexpected key "extra"/);
    expectLunaError(
      () => opt.loadStateDict({ ...sd, 'state.0.momentum_buffer': tensor([1, 2, 3], { dtype: 'float64' }) }),
      'ERR_SHAPE',
    );
    expectLunaError(
      () => opt.loadStateDict({ ...sd, 'state.0.momentum_buffer': tensor([1, 2], { dtype: 'float32' }) }),
      'ERR_DTYPE',
    );
    const { 'state.0.momentum_buffer': _dropped, ...missing } = sd;
    expectLunaError(() => opt.loadStateDict({ ...missing, lr: tensor(0.5, { dtype: 'float64' }) }), 'ERR_ARGUMENT');
    expect(opt.lr).toBe(0.1);
  });

  it('validates parameters and options', () => {
    const p = tensor([1, 2], { requiresGrad: true });
    expectLunaError(() => new optim.SGD([], { lr: 0.1 }), 'ERR_ARGUMENT', /empty/);
    expectLunaError(() => new optim.SGD([p, p], { lr: 0.1 }), 'ERR_ARGUMENT', /more than once/);
    expectLunaError(() => new optim.SGD([tensor([1, 0], { dtype: 'bool' })], { lr: 0.1 }), 'ERR_DTYPE');
    expectLunaError(() => new optim.SGD([{} as Tensor], { lr: 0.1 }), 'ERR_ARGUMENT', /params\[0\]/);
    expectLunaError(() => new optim.SGD(p as unknown as Tensor[], { lr: 0.1 }), 'ERR_ARGUMENT');
    expectLunaError(() => new optim.SGD([p], {} as { lr: number }), 'ERR_ARGUMENT', /options\.lr/);
    expectLunaError(() => new optim.SGD([p], { lr: -1 }), 'ERR_ARGUMENT', /options\.lr/);
    expectLunaError(() => new optim.SGD([p], { lr: NaN }), 'ERR_ARGUMENT', /options\.lr/);
    expectLunaError(() => new optim.SGD([p], { lr: 0.1, nesterov: true }), 'ERR_ARGUMENT', /momentum/);
    expectLunaError(() => new optim.SGD([p], { lr: 0.1, momentum: -0.5 }), 'ERR_ARGUMENT', /momentum/);
    expectLunaError(() => new optim.Adam([p], { betas: [0.9, 1] }), 'ERR_ARGUMENT', /betas/);
    expectLunaError(() => new optim.Adam([p], { betas: [-0.1, 0.9] }), 'ERR_ARGUMENT', /betas/);
    expectLunaError(() => new optim.Adam([p], { eps: -1 }), 'ERR_ARGUMENT', /eps/);
    expectLunaError(() => new optim.AdamW([p], { weightDecay: Infinity }), 'ERR_ARGUMENT', /weightDecay/);
    expectLunaError(() => new optim.Adam([p], { learningRate: 1 } as never), 'ERR_ARGUMENT', /unknown key/);
    const opt = new optim.Adam([p]);
    expectLunaError(() => {
      opt.lr = -0.1;
    }, 'ERR_ARGUMENT');
    // A computed tensor is not a parameter: an update written into it would reach nothing.
    const x = tensor([1, 2], { shape: [1, 1, 1, 2], requiresGrad: true });
    const y = ops.packAttention(x, x, x);
    expectLunaError(() => new optim.SGD([y], { lr: 0.1 }), 'ERR_ARGUMENT', /not a leaf/);
    p.dispose();
    expectLunaError(() => new optim.SGD([p], { lr: 0.1 }), 'ERR_DISPOSED');
  });
});

describe('clipGradNorm matches torch.nn.utils.clip_grad_norm_', () => {
  const G = [
    [0.5, -1.5, 2.0],
    [3.0, -0.25, 0.125, -4.0],
  ];
  for (const [name, c] of Object.entries(TORCH_CLIP)) {
    it(`${name} (normType ${c.normType}, maxNorm ${c.maxNorm})`, () => {
      const ps = [tensor(G[0], { dtype: 'float64', requiresGrad: true }), zeros([2, 2], { dtype: 'float64', requiresGrad: true })];
      ps[0].grad = tensor(G[0], { dtype: 'float64' });
      ps[1].grad = tensor(G[1], { dtype: 'float64', shape: [2, 2] });
      const total = optim.clipGradNorm(ps, c.maxNorm, { normType: c.normType });
      expect(total).toBeCloseTo(c.total, 12);
      ps.forEach((p, k) =>
        Array.from((p.grad as Tensor).dataSync()).forEach((x, i) => expect(x).toBeCloseTo(c.grads[k][i], 12)),
      );
    });
  }

  it('ignores parameters without gradients; none at all gives 0', () => {
    const a = tensor([1, 2], { requiresGrad: true });
    expect(optim.clipGradNorm([a], 1)).toBe(0);
    a.grad = tensor([3, 4]);
    const b = tensor([5], { requiresGrad: true });
    expect(optim.clipGradNorm([a, b], 1)).toBeCloseTo(5, 6);
    expect(Array.from((a.grad as Tensor).dataSync())).toEqual([expect.closeTo(0.6, 6), expect.closeTo(0.8, 6)]);
    // A single tensor is accepted too.
    expect(optim.clipGradNorm(a, 10)).toBeCloseTo(1, 5);
  });

  it('a non-finite norm spreads NaN like torch, or throws with errorIfNonfinite', () => {
    const a = tensor([1, NaN], { dtype: 'float64', requiresGrad: true });
    a.grad = tensor([1, NaN], { dtype: 'float64' });
    expectLunaError(() => optim.clipGradNorm([a], 1, { errorIfNonfinite: true }), 'ERR_ARGUMENT', /NaN/);
    expect(Number.isNaN(optim.clipGradNorm([a], 1))).toBe(true);
    expect(Number.isNaN((a.grad as Tensor).dataSync()[0])).toBe(true);
  });

  it('validates its arguments', () => {
    const a = tensor([1], { requiresGrad: true });
    expectLunaError(() => optim.clipGradNorm([a], -1), 'ERR_ARGUMENT', /maxNorm/);
    expectLunaError(() => optim.clipGradNorm([a], 1, { normType: 0 }), 'ERR_ARGUMENT', /normType/);
    expectLunaError(() => optim.clipGradNorm([a], 1, { normType: NaN }), 'ERR_ARGUMENT', /normType/);
    expectLunaError(() => optim.clipGradNorm([1 as unknown as Tensor], 1), 'ERR_ARGUMENT', /params\[0\]/);
  });
});

describe('learning-rate schedules', () => {
  const param = () => tensor([1], { requiresGrad: true });

  it('LinearWarmupInverseSqrt follows fairseq inverse_sqrt', () => {
    const opt = new optim.SGD([param()], { lr: 123 });
    const s = new optim.LinearWarmupInverseSqrt(opt, { warmupSteps: 4, peakLr: 1e-3, initLr: 1e-7 });
    // The constructor sets the rate of the first update.
    expect(opt.lr).toBe(1e-7);
    const seen = [opt.lr];
    for (let i = 0; i < 8; i++) seen.push(s.step());
    const want = [0, 1, 2, 3].map((t) => 1e-7 + (t * (1e-3 - 1e-7)) / 4);
    for (const t of [4, 5, 6, 7, 8]) want.push(1e-3 * Math.sqrt(4 / t));
    seen.forEach((x, t) => expect(x).toBeCloseTo(want[t], 15));
    expect(s.lr).toBe(opt.lr);
    expect(s.stepCount).toBe(8);
    expect(s.lrAt(16)).toBeCloseTo(5e-4, 15); // peak * sqrt(4 / 16)
  });

  it('LinearDecay warms up from 0, decays linearly to endLr and stays there', () => {
    const opt = new optim.Adam([param()]);
    const s = new optim.LinearDecay(opt, { warmupSteps: 2, totalSteps: 6, peakLr: 1, endLr: 0.2 });
    const seen = [opt.lr];
    for (let i = 0; i < 8; i++) seen.push(s.step());
    const want = [0, 0.5, 1, 0.8, 0.6, 0.4, 0.2, 0.2, 0.2];
    seen.forEach((x, t) => expect(x, `step ${t}`).toBeCloseTo(want[t], 14));
  });

  it('LinearDecay without warmup starts at the peak', () => {
    const opt = new optim.SGD([param()], { lr: 0 });
    const s = new optim.LinearDecay(opt, { totalSteps: 4, peakLr: 0.4 });
    expect(opt.lr).toBe(0.4);
    expect([s.step(), s.step(), s.step(), s.step(), s.step()].map((x) => +x.toFixed(12))).toEqual([0.3, 0.2, 0.1, 0, 0]);
  });

  it('state round trip sets the optimizer rate', () => {
    const opt = new optim.SGD([param()], { lr: 0 });
    const s = new optim.LinearDecay(opt, { warmupSteps: 2, totalSteps: 6, peakLr: 1 });
    s.step();
    s.step();
    s.step();
    const state = s.stateDict();
    const opt2 = new optim.SGD([param()], { lr: 0 });
    const s2 = new optim.LinearDecay(opt2, { warmupSteps: 2, totalSteps: 6, peakLr: 1 });
    s2.loadStateDict(state);
    expect(s2.stepCount).toBe(3);
    expect(opt2.lr).toBe(opt.lr);
  });

  it('validates options', () => {
    const opt = new optim.SGD([param()], { lr: 0 });
    expectLunaError(() => new optim.LinearWarmupInverseSqrt(opt, { warmupSteps: 0, peakLr: 1 }), 'ERR_ARGUMENT', /warmupSteps/);
    expectLunaError(() => new optim.LinearWarmupInverseSqrt(opt, { warmupSteps: 1.5, peakLr: 1 }), 'ERR_ARGUMENT');
    expectLunaError(() => new optim.LinearWarmupInverseSqrt(opt, { warmupSteps: 4, peakLr: -1 }), 'ERR_ARGUMENT', /peakLr/);
    expectLunaError(() => new optim.LinearDecay(opt, { warmupSteps: 5, totalSteps: 4, peakLr: 1 }), 'ERR_ARGUMENT', /totalSteps/);
    expectLunaError(() => new optim.LinearDecay(opt, { totalSteps: 4 } as never), 'ERR_ARGUMENT', /peakLr/);
    expectLunaError(() => new optim.LinearDecay({} as never, { totalSteps: 4, peakLr: 1 }), 'ERR_ARGUMENT', /optimizer/);
  });
});
