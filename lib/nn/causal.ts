/**
 * Luna's causal self-attention module (luna-math.md section 3; fairseq's LunarCausalAttention)
 * and its incremental-decoding state. The pack query comes from P, the pack keys from X itself,
 * and every position t sees only the running means of positions 1..t, so one generated token
 * costs O(l·d) per layer instead of a pass over the whole prefix.
 *
 * @packageDocumentation
 */
import { checkBoolean, checkOptions, checkPositiveInt, describe, mismatch } from '../errors';
import { Tensor, checkTensor } from '../tensor';
import { ops } from '../ops';
import { CausalLunaState } from '../ops/causal';
import { Module, ModuleOptions, moduleOptions } from './module';
import { Linear, checkProbability } from './layers';
import { consume } from './luna';
import { noGrad } from '../autograd';

/** Options of {@link LunaCausalAttention}. */
export interface LunaCausalAttentionOptions extends ModuleOptions {
  embedDim: number;
  /** h: the pack and the unpack share the heads and the scale dh^-1/2. */
  numHeads: number;
  /** One projection for key and value (c_proj) instead of two (default true). */
  tieKV?: boolean;
  /** Biases on the projections (default true). */
  bias?: boolean;
  /** Dropout on Φ and on the unpack probabilities (default 0). */
  dropout?: number;
  /** φ of the pack: 'softplus' (β = ln 2, the reference's) or 'elu' (elu + 1, the paper's WMT variant). */
  activation?: 'softplus' | 'elu';
}

/** Per-call inputs of {@link LunaCausalAttention.forward}. */
export interface LunaCausalAttentionInputs {
  /** bool [B,l], 1 = padding P slot (masks unpack logits). */
  packPaddingMask?: Tensor | null;
}

const INPUT_KEYS = ['packPaddingMask'] as const;

/**
 * Causal Luna self-attention: x [B,n,d], p [B,l,d] -> [B,n,d]. P is only read (the pack query);
 * the module returns no P output.
 */
export class LunaCausalAttention extends Module {
  readonly embedDim: number;
  readonly numHeads: number;
  readonly tieKV: boolean;
  readonly attentionDropout: number;
  readonly activation: 'softplus' | 'elu';
  readonly pq_proj: Linear;
  readonly q_proj: Linear;
  readonly pc_proj: Linear;
  readonly c_proj: Linear | null;
  readonly k_proj: Linear | null;
  readonly v_proj: Linear | null;
  readonly out_proj: Linear;

  /** Creates the projections with the reference's initialisation; see {@link LunaCausalAttentionOptions}. */
  constructor(options: LunaCausalAttentionOptions) {
    const where = 'nn.LunaCausalAttention';
    const { opts, resolved } = moduleOptions(where, options, ['embedDim', 'numHeads', 'tieKV', 'bias', 'dropout', 'activation']);
    super(resolved);
    const d = (this.embedDim = checkPositiveInt(where, 'options.embedDim', opts.embedDim));
    this.numHeads = checkPositiveInt(where, 'options.numHeads', opts.numHeads);
    if (d % this.numHeads !== 0) {
      throw mismatch('ERR_ARGUMENT', where, 'options.numHeads', `a divisor of embedDim (${d})`, String(this.numHeads));
    }
    this.tieKV = opts.tieKV === undefined ? true : checkBoolean(where, 'options.tieKV', opts.tieKV);
    this.attentionDropout = checkProbability(where, 'options.dropout', opts.dropout, 0);
    if (opts.activation !== undefined && opts.activation !== 'softplus' && opts.activation !== 'elu') {
      throw mismatch('ERR_ARGUMENT', where, 'options.activation', "'softplus' or 'elu'", describe(opts.activation));
    }
    this.activation = (opts.activation as 'softplus' | 'elu' | undefined) ?? 'softplus';
    const bias = opts.bias === undefined ? true : checkBoolean(where, 'options.bias', opts.bias);
    const rng = resolved.rng;
    const proj = (name: string, gain: number, biasValue?: number): Linear =>
      this.registerModule(
        name,
        new Linear({
          inFeatures: d,
          outFeatures: d,
          bias,
          xavierGain: gain,
          ...(biasValue === undefined ? {} : { biasValue }),
          dtype: resolved.dtype,
          device: resolved.device,
          seed: rng.nextUint32(),
        }),
      );
    // The reference's order and initialisation: input projections xavier-uniform with gain
    // 1/sqrt(2), out_proj gain 1 with a zero bias.
    const g = Math.SQRT1_2;
    this.pq_proj = proj('pq_proj', g);
    this.q_proj = proj('q_proj', g);
    this.pc_proj = proj('pc_proj', g);
    if (this.tieKV) {
      this.c_proj = proj('c_proj', g);
      this.k_proj = this.v_proj = null;
    } else {
      this.k_proj = proj('k_proj', g);
      this.v_proj = proj('v_proj', g);
      this.c_proj = null;
    }
    this.out_proj = proj('out_proj', 1, 0);
  }

  /** x [B,n,d], p [B,l,d] -> [B,n,d]. */
  forward(x: Tensor, p: Tensor, inputs: LunaCausalAttentionInputs = {}): Tensor {
    return this.callForward([x, p, inputs], (xi: Tensor, pi: Tensor, opts: LunaCausalAttentionInputs) => this.compute(xi, pi, opts));
  }

  private checkInputs(where: string, xIn: unknown, pIn: unknown): { x: Tensor; p: Tensor } {
    const d = this.embedDim;
    const x = checkTensor(where, 'x', xIn);
    const p = checkTensor(where, 'p', pIn);
    if (x.rank !== 3 || x.shape[2] !== d) throw mismatch('ERR_SHAPE', where, 'x.shape', `[B,n,${d}]`, `[${x.shape.join(',')}]`);
    if (p.rank !== 3 || p.shape[2] !== d || p.shape[0] !== x.shape[0]) {
      throw mismatch('ERR_SHAPE', where, 'p.shape', `[${x.shape[0]},l,${d}] (batch of x)`, `[${p.shape.join(',')}]`);
    }
    return { x, p };
  }

  /** The per-token projections q, k, v, kc of x [B,s,d], each [B,h,s,dh] (k === v when tied). */
  private tokenProjections(x: Tensor): { q: Tensor; k: Tensor; v: Tensor; kc: Tensor } {
    const h = this.numHeads;
    const split = (lin: Linear): Tensor => consume(lin.forward(x), (t) => ops.splitHeads(t, h));
    const q = split(this.q_proj);
    const kc = split(this.pc_proj);
    if (this.tieKV) {
      const kv = split(this.c_proj as Linear);
      return { q, k: kv, v: kv, kc };
    }
    return { q, k: split(this.k_proj as Linear), v: split(this.v_proj as Linear), kc };
  }

  private static disposeProjections(t: { q: Tensor; k: Tensor; v: Tensor; kc: Tensor }): void {
    t.q.dispose();
    t.kc.dispose();
    t.k.dispose();
    if (t.v !== t.k) t.v.dispose();
  }

  private compute(xIn: Tensor, pIn: Tensor, inputs: LunaCausalAttentionInputs): Tensor {
    const where = 'LunaCausalAttention.forward';
    const { x, p } = this.checkInputs(where, xIn, pIn);
    const opts = checkOptions(where, inputs, INPUT_KEYS);
    const packMask = (opts.packPaddingMask ?? null) as Tensor | null;
    const pq = consume(this.pq_proj.forward(p), (t) => ops.splitHeads(t, this.numHeads));
    const proj = this.tokenProjections(x);
    const o4 = ops.causalLunaAttention(proj.q, proj.k, proj.v, proj.kc, pq, {
      packPaddingMask: packMask,
      activation: this.activation,
      dropout: this.training ? this.attentionDropout : 0,
    });
    LunaCausalAttention.disposeProjections(proj);
    pq.dispose();
    return consume(consume(o4, (t) => ops.mergeHeads(t)), (t) => this.out_proj.forward(t));
  }

  /**
   * Starts incremental decoding: projects P once (the reference's prev_pquery) and returns an
   * empty prefix state. Inference only: nothing is recorded for backward.
   */
  startDecoding(p: Tensor, inputs: LunaCausalAttentionInputs = {}): CausalLunaState {
    const where = 'LunaCausalAttention.startDecoding';
    const pt = checkTensor(where, 'p', p);
    if (pt.rank !== 3 || pt.shape[2] !== this.embedDim) {
      throw mismatch('ERR_SHAPE', where, 'p.shape', `[B,l,${this.embedDim}]`, `[${pt.shape.join(',')}]`);
    }
    const opts = checkOptions(where, inputs, INPUT_KEYS);
    return noGrad(() => {
      const pq = consume(this.pq_proj.forward(pt), (t) => ops.splitHeads(t, this.numHeads));
      const state = new CausalLunaState(pq, { packPaddingMask: (opts.packPaddingMask ?? null) as Tensor | null, activation: this.activation });
      pq.dispose();
      return state;
    });
  }

  /** The outputs [B,s,d] of the next s tokens x [B,s,d], advancing `state` by s positions. */
  step(x: Tensor, state: CausalLunaState): Tensor {
    const where = 'LunaCausalAttention.step';
    const xt = checkTensor(where, 'x', x);
    if (xt.rank !== 3 || xt.shape[2] !== this.embedDim) {
      throw mismatch('ERR_SHAPE', where, 'x.shape', `[B,s,${this.embedDim}]`, `[${xt.shape.join(',')}]`);
    }
    return noGrad(() => {
      const proj = this.tokenProjections(xt);
      const o4 = state.step(proj.q, proj.k, proj.v, proj.kc);
      LunaCausalAttention.disposeProjections(proj);
      return consume(consume(o4, (t) => ops.mergeHeads(t)), (t) => this.out_proj.forward(t));
    });
  }
}
