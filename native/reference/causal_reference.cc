// Plain-loop causal Luna attention (see causal_reference.h). One (batch, head) at a time, one
// position at a time, accumulation in T: the double instantiation is the truth, the float one is
// the "plain float32 implementation" whose error bounds the fused kernels' error.
#include "causal_reference.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "../kernels/counter_rng.h"

namespace luna {

namespace {

// φ(z) and φ'(z) exactly as luna-math.md 3 states them (softplus in PyTorch's thresholded form,
// written stably as max(z, 0) + log1p(exp(-β|z|)) / β).
template <typename T>
T phi_value(CausalActivation a, T z) {
  if (a == CausalActivation::Softplus) {
    const T beta = T(0.693147180559945309417);
    if (z * beta > T(20)) return z;
    return std::max(z, T(0)) + std::log1p(std::exp(-beta * std::fabs(z))) / beta;
  }
  return z > 0 ? z + T(1) : std::exp(z);
}

template <typename T>
T phi_slope(CausalActivation a, T z) {
  if (a == CausalActivation::Softplus) {
    const T beta = T(0.693147180559945309417);
    if (z * beta > T(20)) return T(1);
    return T(1) / (T(1) + std::exp(-beta * z));
  }
  return z > 0 ? T(1) : std::exp(z);
}

// Everything the forward computes for one (batch, head), kept for the backward: the pack logits
// Z, the dropped Φ, the states S^K_t and S^V_t after every position, the probabilities Bm, the
// dropped B̃ and the output rows.
template <typename T>
struct Prefix {
  std::vector<T> z, phi, sk, sv, bm, bt, out, lse;
};

template <typename T>
Prefix<T> run_prefix(const CausalParams<T>& p, int64_t bh) {
  const int64_t n = p.n, l = p.l, dh = p.dh, b = bh / p.h;
  const T* q = p.q + bh * n * dh;
  const T* k = p.k + bh * n * dh;
  const T* v = p.v + bh * n * dh;
  const T* kc = p.kc + bh * n * dh;
  const T* pq = p.pq + bh * l * dh;
  const uint8_t* mask = p.mask ? p.mask + b * l : nullptr;
  bool all_masked = mask != nullptr;
  for (int64_t r = 0; r < l && mask; ++r) all_masked = all_masked && mask[r];
  const DropoutMask<T> drop_phi(p.dropout, p.seed), drop_bm(p.dropout, p.seed + kBmSeedOffset);

  Prefix<T> f;
  f.z.assign(n * l, 0);
  f.phi.assign(n * l, 0);
  for (int64_t j = 0; j < n; ++j)
    for (int64_t r = 0; r < l; ++r) {
      T acc = 0;
      for (int64_t e = 0; e < dh; ++e) acc += kc[j * dh + e] * pq[r * dh + e];
      const int64_t x = j * l + r;
      f.z[x] = T(p.pack_scale) * acc;
      const T keep = drop_phi.active ? drop_phi.factor(uint64_t(bh * n + j) * l + r) : T(1);
      f.phi[x] = phi_value(p.activation, f.z[x]) * keep;
    }

  f.sk.assign(n * dh * l, 0);
  f.sv.assign(n * l * dh, 0);
  f.bm.assign(n * l, 0);
  f.bt.assign(n * l, 0);
  f.out.assign(n * dh, 0);
  f.lse.assign(n, 0);
  std::vector<T> sk(dh * l, 0), sv(l * dh, 0), logit(l);
  for (int64_t j = 0; j < n; ++j) {
    const T t = T(j + 1);
    // S^K_t = S^K_{t-1} + K_tᵀ Φ_t, S^V_t = S^V_{t-1} + Φ_tᵀ V_t.
    for (int64_t e = 0; e < dh; ++e)
      for (int64_t r = 0; r < l; ++r) {
        sk[e * l + r] += k[j * dh + e] * f.phi[j * l + r];
        sv[r * dh + e] += f.phi[j * l + r] * v[j * dh + e];
      }
    std::copy(sk.begin(), sk.end(), f.sk.begin() + j * dh * l);
    std::copy(sv.begin(), sv.end(), f.sv.begin() + j * l * dh);
    if (all_masked) {  // every P slot masked: output 0, lse -inf
      f.lse[j] = -std::numeric_limits<T>::infinity();
      continue;
    }
    // T_t = scale q_t S^K_t / t, then the softmax over the l slots.
    T top = -std::numeric_limits<T>::infinity();
    for (int64_t r = 0; r < l; ++r) {
      if (mask && mask[r]) {
        logit[r] = -std::numeric_limits<T>::infinity();
        continue;
      }
      T acc = 0;
      for (int64_t e = 0; e < dh; ++e) acc += q[j * dh + e] * sk[e * l + r];
      logit[r] = T(p.scale) * acc / t;
      top = std::max(top, logit[r]);
    }
    T sum = 0;
    for (int64_t r = 0; r < l; ++r) sum += std::exp(logit[r] - top);
    f.lse[j] = top + std::log(sum);
    // O_t = B̃_t S^V_t / t.
    for (int64_t r = 0; r < l; ++r) {
      const T bm = std::exp(logit[r] - top) / sum;
      const T keep = drop_bm.active ? drop_bm.factor(uint64_t(bh * n + j) * l + r) : T(1);
      f.bm[j * l + r] = bm;
      f.bt[j * l + r] = bm * keep;
      for (int64_t e = 0; e < dh; ++e) f.out[j * dh + e] += f.bt[j * l + r] * sv[r * dh + e] / t;
    }
  }
  return f;
}

}  // namespace

// q, k, v, kc are (B, h, n, dh), pq is (B, h, l, dh), mask is (B, l); out is (B, h, n, dh),
// lse is (B, h, n).
template <typename T>
void causal_reference_forward(const CausalParams<T>& p) {
  for (int64_t bh = 0; bh < p.B * p.h; ++bh) {
    const Prefix<T> f = run_prefix(p, bh);
    std::copy(f.out.begin(), f.out.end(), p.out + bh * p.n * p.dh);
    if (p.lse) std::copy(f.lse.begin(), f.lse.end(), p.lse + bh * p.n);
  }
}

// luna-math.md 5.3, position by position in reverse with the suffix sums
//   R^V_j = Σ_{t≥j} B̃_tᵀ dO_t / t,   R^K_j = Σ_{t≥j} Q̂_tᵀ dT_t / t   (Q̂ = scale q),
// then dV_j = Φ_j R^V_j, dK_j = Φ_j R^Kᵀ_j, dΦ_j = V_j R^Vᵀ_j + K_j R^K_j, dZ = dΦ M_Φ/(1-p) φ'(Z).
template <typename T>
void causal_reference_backward(const CausalParams<T>& p) {
  const int64_t n = p.n, l = p.l, dh = p.dh;
  const T s = T(p.scale), ps = T(p.pack_scale);
  const bool tied = p.dk == p.dv;
  for (int64_t bh = 0; bh < p.B * p.h; ++bh) {
    const Prefix<T> f = run_prefix(p, bh);
    const T* q = p.q + bh * n * dh;
    const T* k = p.k + bh * n * dh;
    const T* v = p.v + bh * n * dh;
    const T* kc = p.kc + bh * n * dh;
    const T* pq = p.pq + bh * l * dh;
    const T* dout = p.dout + bh * n * dh;
    T* dq = p.dq + bh * n * dh;
    T* dk = p.dk + bh * n * dh;
    T* dv = p.dv + bh * n * dh;
    T* dkc = p.dkc + bh * n * dh;
    T* dpq = p.dpq + bh * l * dh;
    const DropoutMask<T> drop_phi(p.dropout, p.seed), drop_bm(p.dropout, p.seed + kBmSeedOffset);
    std::vector<T> rk(dh * l, 0), rv(l * dh, 0), dphi(n * l, 0), dt(l);

    for (int64_t j = n - 1; j >= 0; --j) {
      const T t = T(j + 1);
      const T* skt = f.sk.data() + j * dh * l;
      const T* svt = f.sv.data() + j * l * dh;
      const T* dO = dout + j * dh;
      for (int64_t e = 0; e < dh; ++e) dq[j * dh + e] = 0;
      if (f.lse[j] != -std::numeric_limits<T>::infinity()) {
        // dB̃_t = dO_t S^Vᵀ_t / t;  dBm = dB̃ M_B/(1-p);  D = dO_t·O_t;  dT = Bm (dBm - D).
        T D = 0;
        for (int64_t e = 0; e < dh; ++e) D += dO[e] * f.out[j * dh + e];
        for (int64_t r = 0; r < l; ++r) {
          T acc = 0;
          for (int64_t e = 0; e < dh; ++e) acc += dO[e] * svt[r * dh + e];
          const T keep = drop_bm.active ? drop_bm.factor(uint64_t(bh * n + j) * l + r) : T(1);
          dt[r] = f.bm[j * l + r] * (acc / t * keep - D);
        }
        // dq_t = scale dT S^Kᵀ_t / t.
        for (int64_t e = 0; e < dh; ++e) {
          T acc = 0;
          for (int64_t r = 0; r < l; ++r) acc += dt[r] * skt[e * l + r];
          dq[j * dh + e] = s * acc / t;
        }
        for (int64_t r = 0; r < l; ++r)
          for (int64_t e = 0; e < dh; ++e) {
            rv[r * dh + e] += f.bt[j * l + r] * dO[e] / t;
            rk[e * l + r] += s * q[j * dh + e] * dt[r] / t;
          }
      }
      // Position j as a key: it reaches every t >= j through the suffix sums.
      for (int64_t e = 0; e < dh; ++e) {
        T gk = 0, gv = 0;
        for (int64_t r = 0; r < l; ++r) {
          gk += f.phi[j * l + r] * rk[e * l + r];
          gv += f.phi[j * l + r] * rv[r * dh + e];
        }
        if (tied) {
          dk[j * dh + e] = gk + gv;
        } else {
          dk[j * dh + e] = gk;
          dv[j * dh + e] = gv;
        }
      }
      for (int64_t r = 0; r < l; ++r) {
        T acc = 0;
        for (int64_t e = 0; e < dh; ++e) acc += v[j * dh + e] * rv[r * dh + e] + k[j * dh + e] * rk[e * l + r];
        dphi[j * l + r] = acc;
      }
    }
    // Through the dropout on Φ and the activation: dZ; then dkc = ps dZ pq, dpq = ps dZᵀ kc.
    for (int64_t j = 0; j < n; ++j)
      for (int64_t r = 0; r < l; ++r) {
        const T keep = drop_phi.active ? drop_phi.factor(uint64_t(bh * n + j) * l + r) : T(1);
        dphi[j * l + r] *= keep * phi_slope(p.activation, f.z[j * l + r]);
      }
    for (int64_t j = 0; j < n; ++j)
      for (int64_t e = 0; e < dh; ++e) {
        T acc = 0;
        for (int64_t r = 0; r < l; ++r) acc += dphi[j * l + r] * pq[r * dh + e];
        dkc[j * dh + e] = ps * acc;
      }
    for (int64_t r = 0; r < l; ++r)
      for (int64_t e = 0; e < dh; ++e) {
        T acc = 0;
        for (int64_t j = 0; j < n; ++j) acc += dphi[j * l + r] * kc[j * dh + e];
        dpq[r * dh + e] = ps * acc;
      }
  }
}

template void causal_reference_forward<float>(const CausalParams<float>&);
template void causal_reference_forward<double>(const CausalParams<double>&);
template void causal_reference_backward<float>(const CausalParams<float>&);
template void causal_reference_backward<double>(const CausalParams<double>&);

}  // namespace luna
