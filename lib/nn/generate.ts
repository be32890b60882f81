/**
 * Generation with a LunaSeq2Seq model: greedy and beam search, both on incremental decoding
 * (one token costs O(l·d) per layer in the attention, whatever the prefix length).
 *
 * @packageDocumentation
 */
import { checkFinite, checkNonNegativeInt, checkOptions, checkPositiveInt, mismatch } from '../errors';
import { Tensor, checkTensor, floatData, makeTensor } from '../tensor';
import { noGrad } from '../autograd';
import { EncoderContext, LunaSeq2Seq, LunaDecoderState, disposeContext } from './seq2seq';
import { selectRows } from './select';

/** Options of {@link generate}. */
export interface GenerateOptions {
  /** The first decoder input (beginning of sequence). */
  bos: number;
  /** Generation of a sequence stops after this token (it is not part of the result); default none. */
  eos?: number;
  /** Most tokens generated per sequence (EOS included). */
  maxLength: number;
  /** 1 = greedy (default); more keeps that many hypotheses per sequence. */
  beamSize?: number;
  /** Beam scores are summed log-probabilities / length^lengthPenalty (default 1). */
  lengthPenalty?: number;
}

const GENERATE_KEYS = ['bos', 'eos', 'maxLength', 'beamSize', 'lengthPenalty'] as const;

/** log-softmax of row `r` of logits [rows, V] into `out`. */
function logSoftmaxRow(logits: Float32Array | Float64Array, r: number, V: number, out: Float64Array): void {
  let max = -Infinity;
  for (let j = 0; j < V; j++) max = Math.max(max, logits[r * V + j]);
  let sum = 0;
  for (let j = 0; j < V; j++) sum += Math.exp(logits[r * V + j] - max);
  const lse = max + Math.log(sum);
  for (let j = 0; j < V; j++) out[j] = logits[r * V + j] - lse;
}

/** The next-token logits [rows, V] for the tokens [rows] fed at this step. */
function stepLogits(model: LunaSeq2Seq, state: LunaDecoderState, tokens: Int32Array): { data: Float32Array | Float64Array; V: number } {
  const input = makeTensor(tokens, [tokens.length, 1], 'int32', model.device);
  const logits = model.decoder.step(input, state);
  input.dispose();
  const V = logits.shape[2];
  const data = logits.dataSync() as Float32Array | Float64Array;
  logits.dispose();
  return { data, V };
}

function greedy(model: LunaSeq2Seq, enc: EncoderContext, o: Required<Omit<GenerateOptions, 'eos'>> & { eos: number | null }): number[][] {
  const B = enc.x.shape[0];
  const state = model.decoder.startDecoding(enc);
  const out: number[][] = Array.from({ length: B }, () => []);
  const done = new Array<boolean>(B).fill(false);
  let tokens = new Int32Array(B).fill(o.bos);
  try {
    for (let t = 0; t < o.maxLength && done.some((d) => !d); t++) {
      const { data, V } = stepLogits(model, state, tokens);
      const next = new Int32Array(B);
      for (let b = 0; b < B; b++) {
        let best = 0;
        for (let j = 1; j < V; j++) if (data[b * V + j] > data[b * V + best]) best = j;
        next[b] = best;
        if (done[b]) continue;
        if (o.eos !== null && best === o.eos) done[b] = true;
        else out[b].push(best);
      }
      tokens = next;
    }
  } finally {
    state.dispose();
  }
  return out;
}

interface Hypothesis {
  tokens: number[];
  score: number;
}

function beam(model: LunaSeq2Seq, enc: EncoderContext, o: Required<Omit<GenerateOptions, 'eos'>> & { eos: number | null }): number[][] {
  const B = enc.x.shape[0];
  const K = o.beamSize;
  // Every source row repeated K times: row b*K + k is hypothesis k of sequence b.
  const expand = [...Array(B * K).keys()].map((r) => Math.floor(r / K));
  const wide: EncoderContext = {
    x: selectRows(enc.x, expand),
    p: selectRows(enc.p, expand),
    paddingMask: enc.paddingMask === null ? null : selectRows(enc.paddingMask, expand),
    packPaddingMask: enc.packPaddingMask === null ? null : selectRows(enc.packPaddingMask, expand),
  };
  const state = model.decoder.startDecoding(wide);
  disposeContext(wide);
  const norm = (score: number, len: number): number => score / Math.max(1, len) ** o.lengthPenalty;
  const alive: Hypothesis[][] = Array.from({ length: B }, () => [{ tokens: [], score: 0 }]);
  const finished: Hypothesis[][] = Array.from({ length: B }, () => []);
  const closed = new Array<boolean>(B).fill(false);
  let tokens = new Int32Array(B * K).fill(o.bos);
  try {
    for (let t = 0; t < o.maxLength && closed.some((c) => !c); t++) {
      const { data, V } = stepLogits(model, state, tokens);
      const row = new Float64Array(V);
      const parents: number[] = [];
      const nextTokens: number[] = [];
      for (let b = 0; b < B; b++) {
        const kept: Hypothesis[] = [];
        const keptParents: number[] = [];
        if (!closed[b]) {
          const candidates: { parent: number; token: number; score: number }[] = [];
          alive[b].forEach((hyp, k) => {
            if (hyp.score === -Infinity) return; // a filler row (fewer live hypotheses than K)
            logSoftmaxRow(data, b * K + k, V, row);
            for (let j = 0; j < V; j++) candidates.push({ parent: k, token: j, score: hyp.score + row[j] });
          });
          candidates.sort((x, y) => y.score - x.score);
          // Among the best 2K, ended hypotheses are set aside and up to K others go on.
          for (const c of candidates.slice(0, 2 * K)) {
            const prefix = alive[b][c.parent].tokens;
            if (o.eos !== null && c.token === o.eos) {
              finished[b].push({ tokens: prefix.slice(), score: norm(c.score, prefix.length + 1) });
            } else if (kept.length < K) {
              kept.push({ tokens: [...prefix, c.token], score: c.score });
              keptParents.push(c.parent);
            }
          }
          // Like fairseq: a sequence is done once K of its hypotheses have ended.
          if (finished[b].length >= K || kept.length === 0) closed[b] = true;
        }
        if (closed[b]) kept.length = keptParents.length = 0;
        for (let k = 0; k < K; k++) {
          // Rows without a live hypothesis decode a copy of the first row; their results are ignored.
          parents.push(b * K + (k < keptParents.length ? keptParents[k] : 0));
          nextTokens.push(k < kept.length ? kept[k].tokens[kept[k].tokens.length - 1] : o.bos);
        }
        alive[b] = kept.length > 0 ? kept : [];
        while (alive[b].length > 0 && alive[b].length < K) alive[b].push({ tokens: [], score: -Infinity });
      }
      state.reorder(parents);
      tokens = Int32Array.from(nextTokens);
    }
  } finally {
    state.dispose();
  }
  return finished.map((done, b) => {
    // Hypotheses still alive at maxLength compete with the ended ones.
    const open = alive[b].filter((h) => h.score > -Infinity).map((h) => ({ tokens: h.tokens, score: norm(h.score, h.tokens.length) }));
    const pool = [...done, ...open];
    pool.sort((x, y) => y.score - x.score);
    return pool.length > 0 ? pool[0].tokens : [];
  });
}

/**
 * Generates target sequences for src int32 [B,m]: greedy (beamSize 1) or beam search, with
 * incremental decoding. Returns one token list per source (without BOS and EOS). The model
 * should be in eval mode (dropout off); nothing is recorded for backward.
 */
export function generate(model: LunaSeq2Seq, src: Tensor, options: GenerateOptions): number[][] {
  const where = 'generate';
  if (!(model instanceof LunaSeq2Seq)) throw mismatch('ERR_ARGUMENT', where, 'model', 'an nn.LunaSeq2Seq', String(model));
  checkTensor(where, 'src', src);
  const opts = checkOptions(where, options, GENERATE_KEYS);
  const o = {
    bos: checkNonNegativeInt(where, 'options.bos', opts.bos),
    eos: opts.eos === undefined ? null : checkNonNegativeInt(where, 'options.eos', opts.eos),
    maxLength: checkPositiveInt(where, 'options.maxLength', opts.maxLength),
    beamSize: opts.beamSize === undefined ? 1 : checkPositiveInt(where, 'options.beamSize', opts.beamSize),
    lengthPenalty: opts.lengthPenalty === undefined ? 1 : checkFinite(where, 'options.lengthPenalty', opts.lengthPenalty),
  };
  const V = model.decoder.vocabSize;
  for (const [name, id] of [['bos', o.bos], ['eos', o.eos]] as const) {
    if (id !== null && id >= V) throw mismatch('ERR_ARGUMENT', where, `options.${name}`, `a token id below vocabSize (${V})`, String(id));
  }
  if (o.maxLength > model.decoder.maxPositions) {
    throw mismatch('ERR_ARGUMENT', where, 'options.maxLength', `at most the decoder's maxPositions (${model.decoder.maxPositions})`, String(o.maxLength));
  }
  return noGrad(() => {
    const enc = model.encode(src);
    try {
      return o.beamSize === 1 ? greedy(model, enc, o) : beam(model, enc, o);
    } finally {
      disposeContext(enc);
    }
  });
}
