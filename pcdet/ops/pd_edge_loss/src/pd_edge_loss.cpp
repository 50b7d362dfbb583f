// Fused PointDistiller graph loss (CPU): both graph layers' BatchNorm + ReLU over the kNN edges and the
// phi-weighted squared error, forward and backward, without materialising any (Q, K, C') tensor.
//
// Inputs per side (teacher t, student s): rows (M, C) = F W_j^T and centre (Q, C) = F[query] W_i^T, the two halves
// of the 1x1 edge convolution (so the edge (i, k) with neighbour j = idx[i, k] has pre-activation
// y = rows[j] + centre[i]); gamma, beta (C) of the BatchNorm (ones / zeros without affine). Edges: idx (Q, K),
// valid (Q, K), phi (Q,). BatchNorm uses the batch statistics over all Q*K edges (biased variance), as the
// reference BatchNorm1d over the (Q*K, C) edge matrix in training mode; the loss is
//     L = lam * sum_{valid (i,k)} phi_i sum_c (z_t - z_s)^2 / max(1, #valid * C),  z = relu(gamma * yhat + beta).
// Determinism: reductions run over fixed blocks of queries whose partial sums are added in block order, and the
// gradient of each row is summed over its edges in edge order (a counting sort of idx), so results do not depend
// on the number of threads.
#include <torch/extension.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <vector>

#ifdef WITH_CUDA
std::vector<at::Tensor> pd_edge_loss_forward_cuda(const std::vector<at::Tensor>& side_s,
                                                  const std::vector<at::Tensor>& side_t, const at::Tensor& idx,
                                                  const at::Tensor& valid, const at::Tensor& phi, double lam,
                                                  double eps);
std::vector<at::Tensor> pd_edge_loss_backward_cuda(const at::Tensor& grad_loss, const std::vector<at::Tensor>& side_s,
                                                   const std::vector<at::Tensor>& side_t, const at::Tensor& idx,
                                                   const at::Tensor& valid, const at::Tensor& phi,
                                                   const at::Tensor& stats, double lam, double eps, bool need_s,
                                                   bool need_t);
#endif

namespace {

constexpr int64_t kBlock = 32;  // queries per reduction block

struct SideView {
  const float* rows;
  const float* centre;
  const float* gamma;
  const float* beta;
};

SideView view_of(const std::vector<at::Tensor>& side) {
  return {side[0].data_ptr<float>(), side[1].data_ptr<float>(), side[2].data_ptr<float>(),
          side[3].data_ptr<float>()};
}

void check_side(const std::vector<at::Tensor>& side, const char* who, int64_t q, int64_t c, const at::Device& device) {
  TORCH_CHECK(side.size() == 4, "pd_edge_loss: ", who, " side needs (rows, centre, gamma, beta)");
  TORCH_CHECK(side[0].dim() == 2 && side[0].size(1) == c, "pd_edge_loss: ", who, " rows must be (M, ", c, "), got ",
              side[0].sizes());
  TORCH_CHECK(side[1].dim() == 2 && side[1].size(0) == q && side[1].size(1) == c, "pd_edge_loss: ", who,
              " centre must be (", q, ", ", c, "), got ", side[1].sizes());
  TORCH_CHECK(side[2].numel() == c && side[3].numel() == c, "pd_edge_loss: ", who, " gamma / beta must have ", c,
              " values");
  for (const auto& t : side) {
    TORCH_CHECK(t.scalar_type() == at::kFloat && t.is_contiguous(), "pd_edge_loss: ", who,
                " tensors must be contiguous float32");
    TORCH_CHECK(t.device() == device, "pd_edge_loss: ", who, " tensors must be on ", device, ", got ", t.device());
  }
}

// Per block: sum and sum of squares of y - pivot over the block's edges, per channel (float within a query,
// double across queries). The pivot (the first edge's value) keeps E[(y-p)^2] - E[y-p]^2 accurate when a channel's
// mean is large against its spread.
void edge_moments(const SideView& v, const int64_t* idx, int64_t q, int64_t k, int64_t c, double* mean,
                  double* var) {
  const int64_t nb = (q + kBlock - 1) / kBlock;
  std::vector<double> part(static_cast<size_t>(nb * 2 * c), 0.0);
  std::vector<float> pivot(c);
  for (int64_t ch = 0; ch < c; ++ch) pivot[ch] = v.rows[idx[0] * c + ch] + v.centre[ch];
  at::parallel_for(0, nb, 1, [&](int64_t b0, int64_t b1) {
    std::vector<float> s1(c), s2(c);
    for (int64_t b = b0; b < b1; ++b) {
      double* p1 = part.data() + b * 2 * c;
      double* p2 = p1 + c;
      for (int64_t i = b * kBlock; i < std::min(q, (b + 1) * kBlock); ++i) {
        std::fill(s1.begin(), s1.end(), 0.f);
        std::fill(s2.begin(), s2.end(), 0.f);
        const float* ci = v.centre + i * c;
        for (int64_t kk = 0; kk < k; ++kk) {
          const float* rj = v.rows + idx[i * k + kk] * c;
          for (int64_t ch = 0; ch < c; ++ch) {
            const float y = rj[ch] + ci[ch] - pivot[ch];
            s1[ch] += y;
            s2[ch] += y * y;
          }
        }
        for (int64_t ch = 0; ch < c; ++ch) {
          p1[ch] += s1[ch];
          p2[ch] += s2[ch];
        }
      }
    }
  });
  const double n = static_cast<double>(q * k);
  for (int64_t ch = 0; ch < c; ++ch) {
    double a = 0.0, b = 0.0;
    for (int64_t blk = 0; blk < nb; ++blk) {
      a += part[blk * 2 * c + ch];
      b += part[blk * 2 * c + c + ch];
    }
    const double shifted = a / n;
    mean[ch] = pivot[ch] + shifted;
    var[ch] = std::max(0.0, b / n - shifted * shifted);
  }
}

// The affine map of the normalised pre-activation: a = y * scale + shift, scale = gamma * rstd,
// shift = beta - mean * scale; yhat = (y - mean) * rstd.
struct Norm {
  std::vector<float> scale, shift, mean, rstd, gamma;
};

Norm norm_of(const SideView& v, const double* mean, const double* var, int64_t c, double eps) {
  Norm nm{std::vector<float>(c), std::vector<float>(c), std::vector<float>(c), std::vector<float>(c),
          std::vector<float>(c)};
  for (int64_t ch = 0; ch < c; ++ch) {
    const double rstd = 1.0 / std::sqrt(var[ch] + eps);
    nm.mean[ch] = static_cast<float>(mean[ch]);
    nm.rstd[ch] = static_cast<float>(rstd);
    nm.gamma[ch] = v.gamma[ch];
    nm.scale[ch] = static_cast<float>(v.gamma[ch] * rstd);
    nm.shift[ch] = static_cast<float>(v.beta[ch] - mean[ch] * v.gamma[ch] * rstd);
  }
  return nm;
}

int64_t count_valid(const bool* valid, int64_t n) {
  int64_t total = 0;
  for (int64_t e = 0; e < n; ++e) total += valid[e] ? 1 : 0;
  return total;
}

// stats (4, C) float64: mean_s, var_s, mean_t, var_t
at::Tensor moments_both(const SideView& s, const SideView& t, const int64_t* idx, int64_t q, int64_t k, int64_t c) {
  auto stats = at::zeros({4, c}, at::TensorOptions().dtype(at::kDouble));
  double* st = stats.data_ptr<double>();
  if (q * k > 0) {
    edge_moments(s, idx, q, k, c, st, st + c);
    edge_moments(t, idx, q, k, c, st + 2 * c, st + 3 * c);
  }
  return stats;
}

// The loss sweep (query-major), which also gathers what the backward needs (when need_s / need_t):
// with the unit upstream gradient g = phi_i * (z_s - z_t) on a valid edge (dL/dz_s up to the scalar
// coef = grad * 2 * lam / denom) and da = g where a > 0 (the teacher's da = -g where a_t > 0), per side
//   da_q[i] = sum_k da(i, k), yc_q[i] = sum_k (y(i, k) - mean) (every edge: the statistics include invalid ones),
//   ab = {sum_e da, sum_e da * (y - mean)} (2, C).
// Returns the unscaled loss sum sum_valid phi_i sum_c (z_t - z_s)^2.
// acc += row + centre - mean over the C channels: one edge's centred pre-activation (both sweeps of the backward's
// sums add it for every edge, invalid ones included)
inline void add_centred(float* acc, const float* row, const float* centre, const float* mean, int64_t c) {
  for (int64_t ch = 0; ch < c; ++ch) acc[ch] += row[ch] + centre[ch] - mean[ch];
}

struct SideGrad {
  float* da_q = nullptr;   // (Q, C)
  float* yc_q = nullptr;   // (Q, C)
  double* ab = nullptr;    // (2, C)
};

double loss_sweep(const SideView& s, const SideView& t, const Norm& ns, const Norm& nt, const int64_t* ip,
                  const bool* vp, const float* pp, int64_t q, int64_t k, int64_t c, SideGrad gs, SideGrad gt) {
  const bool need_s = gs.da_q != nullptr, need_t = gt.da_q != nullptr;
  const int64_t nb = (q + kBlock - 1) / kBlock;
  std::vector<double> part(static_cast<size_t>(std::max<int64_t>(nb, 1)), 0.0);
  const bool need_any = need_s || need_t;
  std::vector<double> abp(need_any ? static_cast<size_t>(std::max<int64_t>(nb, 1) * 4 * c) : 0, 0.0);
  at::parallel_for(0, nb, 1, [&](int64_t b0, int64_t b1) {
    std::vector<float> ab_i(need_any ? 4 * c : 0);
    for (int64_t b = b0; b < b1; ++b) {
      double acc = 0.0;
      double* abb = need_any ? abp.data() + b * 4 * c : nullptr;
      for (int64_t i = b * kBlock; i < std::min(q, (b + 1) * kBlock); ++i) {
        float acc_i = 0.f;
        const float w = pp[i];
        const float* cs = s.centre + i * c;
        const float* ct = t.centre + i * c;
        float* das_i = need_s ? gs.da_q + i * c : nullptr;
        float* ycs_i = need_s ? gs.yc_q + i * c : nullptr;
        float* dat_i = need_t ? gt.da_q + i * c : nullptr;
        float* yct_i = need_t ? gt.yc_q + i * c : nullptr;
        if (need_any) std::fill(ab_i.begin(), ab_i.end(), 0.f);
        for (int64_t kk = 0; kk < k; ++kk) {
          const int64_t j = ip[i * k + kk];
          const float* rs = s.rows + j * c;
          const float* rt = t.rows + j * c;
          if (need_s) add_centred(ycs_i, rs, cs, ns.mean.data(), c);
          if (need_t) add_centred(yct_i, rt, ct, nt.mean.data(), c);
          if (!vp[i * k + kk]) continue;
          float acc_k = 0.f;
          for (int64_t ch = 0; ch < c; ++ch) {
            const float ys = rs[ch] + cs[ch], yt = rt[ch] + ct[ch];
            const float as = ys * ns.scale[ch] + ns.shift[ch], at_ = yt * nt.scale[ch] + nt.shift[ch];
            const float zs = std::max(0.f, as), zt = std::max(0.f, at_);
            const float d = zt - zs;
            acc_k += d * d;
            const float g = -w * d;
            if (need_s && as > 0.f) {
              das_i[ch] += g;
              ab_i[ch] += g;
              ab_i[c + ch] += g * (ys - ns.mean[ch]);
            }
            if (need_t && at_ > 0.f) {
              dat_i[ch] -= g;
              ab_i[2 * c + ch] -= g;
              ab_i[3 * c + ch] -= g * (yt - nt.mean[ch]);
            }
          }
          acc_i += acc_k;
        }
        acc += static_cast<double>(w) * acc_i;
        if (need_any)
          for (int64_t x = 0; x < 4 * c; ++x) abb[x] += ab_i[x];
      }
      part[b] = acc;
    }
  });
  double total = 0.0;
  for (int64_t b = 0; b < nb; ++b) total += part[b];
  for (int64_t x = 0; need_any && x < 2 * c; ++x) {
    double a = 0.0, bt = 0.0;
    for (int64_t b = 0; b < nb; ++b) {
      a += abp[b * 4 * c + x];
      bt += abp[b * 4 * c + 2 * c + x];
    }
    if (need_s) gs.ab[x] = a;
    if (need_t) gt.ab[x] = bt;
  }
  return total;
}

// {da_q (Q, C), yc_q (Q, C), ab (2, C) float64} of one side, zeroed (empty tensors when not needed)
std::vector<at::Tensor> side_cache(bool need, int64_t q, int64_t c) {
  const auto f = at::TensorOptions().dtype(at::kFloat);
  if (!need) return {at::empty({0}, f), at::empty({0}, f), at::empty({0}, f.dtype(at::kDouble))};
  return {at::zeros({q, c}, f), at::zeros({q, c}, f), at::zeros({2, c}, f.dtype(at::kDouble))};
}

SideGrad grad_view(const std::vector<at::Tensor>& cache, bool need) {
  SideGrad g;
  if (need) {
    g.da_q = cache[0].data_ptr<float>();
    g.yc_q = cache[1].data_ptr<float>();
    g.ab = cache[2].data_ptr<double>();
  }
  return g;
}

void check_forward_args(const std::vector<at::Tensor>& side_s, const std::vector<at::Tensor>& side_t,
                        const at::Tensor& idx, const at::Tensor& valid, const at::Tensor& phi) {
  TORCH_CHECK(idx.dim() == 2 && idx.scalar_type() == at::kLong && idx.is_contiguous(),
              "pd_edge_loss: idx must be a contiguous (Q, K) int64 tensor");
  const int64_t q = idx.size(0);
  TORCH_CHECK(side_s.size() == 4 && side_s[1].dim() == 2, "pd_edge_loss: bad student side");
  const int64_t c = side_s[1].size(1);
  check_side(side_s, "student", q, c, idx.device());
  check_side(side_t, "teacher", q, c, idx.device());
  TORCH_CHECK(valid.device() == idx.device() && phi.device() == idx.device(),
              "pd_edge_loss: valid and phi must be on the device of idx");
  TORCH_CHECK(valid.sizes() == idx.sizes() && valid.scalar_type() == at::kBool && valid.is_contiguous(),
              "pd_edge_loss: valid must be a contiguous (Q, K) bool tensor");
  TORCH_CHECK(phi.dim() == 1 && phi.size(0) == q && phi.scalar_type() == at::kFloat && phi.is_contiguous(),
              "pd_edge_loss: phi must be a contiguous (Q,) float32 tensor");
  TORCH_CHECK(side_t[0].size(0) == side_s[0].size(0), "pd_edge_loss: teacher and student rows differ in count");
  if (idx.is_cuda()) return;   // the CUDA kernels get idx checked by the Python wrapper (check_pd_args)
  const int64_t m = side_s[0].size(0);
  const int64_t* ip = idx.data_ptr<int64_t>();
  for (int64_t e = 0; e < idx.numel(); ++e) {
    TORCH_CHECK(ip[e] >= 0 && ip[e] < m, "pd_edge_loss: idx holds ", ip[e], " outside [0, ", m, ")");
  }
}

// The CPU forward; with need_s / need_t it also returns the backward's per-query sums (loss_sweep), so the
// backward needs one more sweep over the edges only (the row-major one). Returns {loss, stats, then per side
// (student, teacher) da_q, yc_q, ab}.
std::vector<at::Tensor> forward_cpu(const std::vector<at::Tensor>& side_s, const std::vector<at::Tensor>& side_t,
                                    const at::Tensor& idx, const at::Tensor& valid, const at::Tensor& phi,
                                    double lam, double eps, bool need_s, bool need_t) {
  const int64_t q = idx.size(0), k = idx.size(1);
  const int64_t c = side_s[1].size(1);
  const int64_t* ip = idx.data_ptr<int64_t>();
  const SideView s = view_of(side_s), t = view_of(side_t);
  at::Tensor stats = moments_both(s, t, ip, q, k, c);
  const double* st = stats.data_ptr<double>();
  const Norm ns = norm_of(s, st, st + c, c, eps), nt = norm_of(t, st + 2 * c, st + 3 * c, c, eps);
  const bool* vp = valid.data_ptr<bool>();
  std::vector<at::Tensor> cs = side_cache(need_s, q, c), ct = side_cache(need_t, q, c);
  const double total = loss_sweep(s, t, ns, nt, ip, vp, phi.data_ptr<float>(), q, k, c, grad_view(cs, need_s),
                                  grad_view(ct, need_t));
  const double denom = std::max(1.0, static_cast<double>(count_valid(vp, q * k) * c));
  auto loss = at::full({}, static_cast<float>(lam * total / denom), at::TensorOptions().dtype(at::kFloat));
  return {loss, stats, cs[0], cs[1], cs[2], ct[0], ct[1], ct[2]};
}

}  // namespace

// Returns {loss (scalar float32), stats (4, C) float64: batch mean and biased variance of the student's and the
// teacher's pre-activations}.
std::vector<at::Tensor> pd_edge_loss_forward(const std::vector<at::Tensor>& side_s,
                                             const std::vector<at::Tensor>& side_t, const at::Tensor& idx,
                                             const at::Tensor& valid, const at::Tensor& phi, double lam,
                                             double eps) {
  check_forward_args(side_s, side_t, idx, valid, phi);
#ifdef WITH_CUDA
  if (idx.is_cuda()) return pd_edge_loss_forward_cuda(side_s, side_t, idx, valid, phi, lam, eps);
#endif
  TORCH_CHECK(!idx.is_cuda(), "pd_edge_loss: built without CUDA kernels");
  auto out = forward_cpu(side_s, side_t, idx, valid, phi, lam, eps, false, false);
  return {out[0], out[1]};
}

// CPU forward for training: {loss, stats, cache (6 tensors)}; pass the cache to backward_cached.
std::vector<at::Tensor> pd_edge_loss_forward_train(const std::vector<at::Tensor>& side_s,
                                                   const std::vector<at::Tensor>& side_t, const at::Tensor& idx,
                                                   const at::Tensor& valid, const at::Tensor& phi, double lam,
                                                   double eps, bool need_s, bool need_t) {
  check_forward_args(side_s, side_t, idx, valid, phi);
  TORCH_CHECK(!idx.is_cuda(), "pd_edge_loss: forward_train is the CPU path (CUDA: forward / backward)");
  return forward_cpu(side_s, side_t, idx, valid, phi, lam, eps, need_s, need_t);
}

// The CPU backward from the forward's cache (da_q, yc_q, ab per side): one row-major sweep gathers the same sums
// per neighbour row j (in edge order: a counting sort of idx), then every gradient is closed-form:
//   dy(e) = gr * (da(e) - mean_e(da) - yhat(e) * mean_e(da * yhat)),  gr = gamma * rstd,  yhat = (y - mean) * rstd
//   d centre[i] = gr * (da_q[i] - K * mean(da) - rstd * mean(da * yhat) * yc_q[i]), d rows[j] likewise with the
//   edge count of j, d gamma = sum da * yhat, d beta = sum da (da scaled by coef = grad * 2 * lam / denom).
std::vector<at::Tensor> pd_edge_loss_backward_cached(const at::Tensor& grad_loss,
                                                     const std::vector<at::Tensor>& side_s,
                                                     const std::vector<at::Tensor>& side_t, const at::Tensor& idx,
                                                     const at::Tensor& valid, const at::Tensor& phi,
                                                     const at::Tensor& stats, double lam, double eps, bool need_s,
                                                     bool need_t, const std::vector<at::Tensor>& cache) {
  TORCH_CHECK(!idx.is_cuda(), "pd_edge_loss: backward_cached is the CPU path");
  check_forward_args(side_s, side_t, idx, valid, phi);
  TORCH_CHECK(cache.size() == 6, "pd_edge_loss: the cache holds 6 tensors, got ", cache.size());
  const int64_t q = idx.size(0), k = idx.size(1);
  const int64_t c = side_s[1].size(1);
  const int64_t m = side_s[0].size(0);
  TORCH_CHECK(stats.numel() == 4 * c, "pd_edge_loss: stats must hold (4, ", c, ") values, got ", stats.sizes());
  std::vector<at::Tensor> out(8);
  if (!need_s && !need_t) return out;
  for (int side = 0; side < 2; ++side) {
    if (!(side == 0 ? need_s : need_t)) continue;
    const at::Tensor& da_q = cache[3 * side];
    const at::Tensor& yc_q = cache[3 * side + 1];
    const at::Tensor& ab = cache[3 * side + 2];
    TORCH_CHECK(da_q.dim() == 2 && da_q.size(0) == q && da_q.size(1) == c && yc_q.sizes() == da_q.sizes() &&
                    ab.numel() == 2 * c && da_q.scalar_type() == at::kFloat && yc_q.scalar_type() == at::kFloat &&
                    ab.scalar_type() == at::kDouble && da_q.is_contiguous() && yc_q.is_contiguous() &&
                    ab.is_contiguous(),
                "pd_edge_loss: the cache of the ", side == 0 ? "student" : "teacher",
                " side does not fit (Q, C) = (", q, ", ", c, "): was the forward run with its gradient needed?");
  }
  const SideView s = view_of(side_s), t = view_of(side_t);
  const auto stats_c = stats.to(at::kDouble).contiguous();
  const double* st = stats_c.data_ptr<double>();
  const int64_t* ip = idx.data_ptr<int64_t>();
  const bool* vp = valid.data_ptr<bool>();
  const float* pp = phi.data_ptr<float>();
  const int64_t n_edges = q * k;
  const double denom = std::max(1.0, static_cast<double>(count_valid(vp, n_edges) * c));
  const double coef = grad_loss.item<double>() * 2.0 * lam / denom;
  const Norm ns = norm_of(s, st, st + c, c, eps), nt = norm_of(t, st + 2 * c, st + 3 * c, c, eps);
  auto opts = side_s[0].options();
  const double n = static_cast<double>(std::max<int64_t>(n_edges, 1));

  // per side: mean(da), rstd * mean(da * yhat) (the factor of sum (y - mean)), gr = gamma * rstd; writes d gamma,
  // d beta
  struct Closed {
    std::vector<float> mda, mday_rstd, gr;
  };
  auto closed = [&](const Norm& nm, const double* ab, int64_t base) {
    Closed cl{std::vector<float>(c), std::vector<float>(c), std::vector<float>(c)};
    out[base + 2] = at::empty({c}, opts);
    out[base + 3] = at::empty({c}, opts);
    for (int64_t ch = 0; ch < c; ++ch) {
      const double sum_da = coef * ab[ch];
      const double sum_day = coef * ab[c + ch] * nm.rstd[ch];
      out[base + 2].data_ptr<float>()[ch] = static_cast<float>(sum_day);
      out[base + 3].data_ptr<float>()[ch] = static_cast<float>(sum_da);
      cl.mda[ch] = static_cast<float>(sum_da / n);
      cl.mday_rstd[ch] = static_cast<float>(sum_day / n * nm.rstd[ch]);
      cl.gr[ch] = nm.gamma[ch] * nm.rstd[ch];
    }
    return cl;
  };
  Closed cls, clt;
  if (need_s) cls = closed(ns, cache[2].data_ptr<double>(), 0);
  if (need_t) clt = closed(nt, cache[5].data_ptr<double>(), 4);
  const float fcoef = static_cast<float>(coef);
  const float fk = static_cast<float>(k);
  // d centre from the forward's per-query sums
  for (int side = 0; side < 2; ++side) {
    if (!(side == 0 ? need_s : need_t)) continue;
    const Closed& cl = side == 0 ? cls : clt;
    out[4 * side + 1] = at::empty({q, c}, opts);
    float* dc = out[4 * side + 1].data_ptr<float>();
    const float* da_q = cache[3 * side].data_ptr<float>();
    const float* yc_q = cache[3 * side + 1].data_ptr<float>();
    for (int64_t i = 0; i < q; ++i)
      for (int64_t ch = 0; ch < c; ++ch)
        dc[i * c + ch] =
            cl.gr[ch] * (fcoef * da_q[i * c + ch] - fk * cl.mda[ch] - cl.mday_rstd[ch] * yc_q[i * c + ch]);
  }
  // the row-major sweep: per neighbour row j, sum_e da(e) and sum_e (y(e) - mean) over its edges in edge order
  std::vector<int64_t> start(static_cast<size_t>(m + 1), 0), order(static_cast<size_t>(n_edges));
  for (int64_t e = 0; e < n_edges; ++e) ++start[ip[e] + 1];
  for (int64_t j = 0; j < m; ++j) start[j + 1] += start[j];
  {
    std::vector<int64_t> fill(start.begin(), start.end() - 1);
    for (int64_t e = 0; e < n_edges; ++e) order[fill[ip[e]]++] = e;
  }
  if (need_s) out[0] = at::empty({m, c}, opts);
  if (need_t) out[4] = at::empty({m, c}, opts);
  float* drs = need_s ? out[0].data_ptr<float>() : nullptr;
  float* drt = need_t ? out[4].data_ptr<float>() : nullptr;
  at::parallel_for(0, m, 256, [&](int64_t j0, int64_t j1) {
    std::vector<float> da_s(c), yc_s(c), da_t(c), yc_t(c);
    for (int64_t j = j0; j < j1; ++j) {
      std::fill(da_s.begin(), da_s.end(), 0.f);
      std::fill(yc_s.begin(), yc_s.end(), 0.f);
      std::fill(da_t.begin(), da_t.end(), 0.f);
      std::fill(yc_t.begin(), yc_t.end(), 0.f);
      const float* rs = s.rows + j * c;
      const float* rt = t.rows + j * c;
      for (int64_t p = start[j]; p < start[j + 1]; ++p) {
        const int64_t e = order[p];
        const int64_t i = e / k;
        const float* cs = s.centre + i * c;
        const float* ct = t.centre + i * c;
        if (need_s) add_centred(yc_s.data(), rs, cs, ns.mean.data(), c);
        if (need_t) add_centred(yc_t.data(), rt, ct, nt.mean.data(), c);
        if (!vp[e]) continue;
        const float w = pp[i];
        for (int64_t ch = 0; ch < c; ++ch) {
          const float as = (rs[ch] + cs[ch]) * ns.scale[ch] + ns.shift[ch];
          const float at_ = (rt[ch] + ct[ch]) * nt.scale[ch] + nt.shift[ch];
          const float g = w * (std::max(0.f, as) - std::max(0.f, at_));
          if (need_s && as > 0.f) da_s[ch] += g;
          if (need_t && at_ > 0.f) da_t[ch] -= g;
        }
      }
      const float cnt = static_cast<float>(start[j + 1] - start[j]);
      if (need_s)
        for (int64_t ch = 0; ch < c; ++ch)
          drs[j * c + ch] = cls.gr[ch] * (fcoef * da_s[ch] - cnt * cls.mda[ch] - cls.mday_rstd[ch] * yc_s[ch]);
      if (need_t)
        for (int64_t ch = 0; ch < c; ++ch)
          drt[j * c + ch] = clt.gr[ch] * (fcoef * da_t[ch] - cnt * clt.mda[ch] - clt.mday_rstd[ch] * yc_t[ch]);
    }
  });
  return out;
}

// Returns {d_rows_s, d_centre_s, d_gamma_s, d_beta_s, d_rows_t, d_centre_t, d_gamma_t, d_beta_t} (the sides not
// needed come back as undefined tensors: None in Python). On CPU: the forward's loss sweep again for the cache,
// then backward_cached.
std::vector<at::Tensor> pd_edge_loss_backward(const at::Tensor& grad_loss, const std::vector<at::Tensor>& side_s,
                                              const std::vector<at::Tensor>& side_t, const at::Tensor& idx,
                                              const at::Tensor& valid, const at::Tensor& phi,
                                              const at::Tensor& stats, double lam, double eps, bool need_s,
                                              bool need_t) {
#ifdef WITH_CUDA
  if (idx.is_cuda())
    return pd_edge_loss_backward_cuda(grad_loss, side_s, side_t, idx, valid, phi, stats, lam, eps, need_s, need_t);
#endif
  TORCH_CHECK(!idx.is_cuda(), "pd_edge_loss: built without CUDA kernels");
  if (!need_s && !need_t) return std::vector<at::Tensor>(8);
  const int64_t q = idx.size(0), k = idx.size(1);
  const int64_t c = side_s[1].size(1);
  const SideView s = view_of(side_s), t = view_of(side_t);
  const auto stats_c = stats.to(at::kDouble).contiguous();
  const double* st = stats_c.data_ptr<double>();
  const Norm ns = norm_of(s, st, st + c, c, eps), nt = norm_of(t, st + 2 * c, st + 3 * c, c, eps);
  std::vector<at::Tensor> cs = side_cache(need_s, q, c), ct = side_cache(need_t, q, c);
  loss_sweep(s, t, ns, nt, idx.data_ptr<int64_t>(), valid.data_ptr<bool>(), phi.data_ptr<float>(), q, k, c,
             grad_view(cs, need_s), grad_view(ct, need_t));
  return pd_edge_loss_backward_cached(grad_loss, side_s, side_t, idx, valid, phi, stats, lam, eps, need_s, need_t,
                                      {cs[0], cs[1], cs[2], ct[0], ct[1], ct[2]});
}

bool with_cuda() {
#ifdef WITH_CUDA
  return true;
#else
  return false;
#endif
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("forward", &pd_edge_loss_forward, "fused PointDistiller graph loss: {loss, stats (4, C)}",
        py::arg("side_s"), py::arg("side_t"), py::arg("idx"), py::arg("valid"), py::arg("phi"), py::arg("lam"),
        py::arg("eps"));
  m.def("backward", &pd_edge_loss_backward, "gradients of the fused loss w.r.t. both sides", py::arg("grad_loss"),
        py::arg("side_s"), py::arg("side_t"), py::arg("idx"), py::arg("valid"), py::arg("phi"), py::arg("stats"),
        py::arg("lam"), py::arg("eps"), py::arg("need_s"), py::arg("need_t"));
  m.def("forward_train", &pd_edge_loss_forward_train, "CPU forward that also returns the backward's cache",
        py::arg("side_s"), py::arg("side_t"), py::arg("idx"), py::arg("valid"), py::arg("phi"), py::arg("lam"),
        py::arg("eps"), py::arg("need_s"), py::arg("need_t"));
  m.def("backward_cached", &pd_edge_loss_backward_cached, "CPU backward from forward_train's cache",
        py::arg("grad_loss"), py::arg("side_s"), py::arg("side_t"), py::arg("idx"), py::arg("valid"),
        py::arg("phi"), py::arg("stats"), py::arg("lam"), py::arg("eps"), py::arg("need_s"), py::arg("need_t"),
        py::arg("cache"));
  m.def("with_cuda", &with_cuda, "True when built with the CUDA kernels");
}
