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

}  // namespace

// Returns {loss (scalar float32), stats (4, C) float64: batch mean and biased variance of the student's and the
// teacher's pre-activations}.
std::vector<at::Tensor> pd_edge_loss_forward(const std::vector<at::Tensor>& side_s,
                                             const std::vector<at::Tensor>& side_t, const at::Tensor& idx,
                                             const at::Tensor& valid, const at::Tensor& phi, double lam,
                                             double eps) {
  TORCH_CHECK(idx.dim() == 2 && idx.scalar_type() == at::kLong && idx.is_contiguous(),
              "pd_edge_loss: idx must be a contiguous (Q, K) int64 tensor");
  const int64_t q = idx.size(0), k = idx.size(1);
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
#ifdef WITH_CUDA
  if (idx.is_cuda()) return pd_edge_loss_forward_cuda(side_s, side_t, idx, valid, phi, lam, eps);
#endif
  TORCH_CHECK(!idx.is_cuda(), "pd_edge_loss: built without CUDA kernels");
  const int64_t m = side_s[0].size(0);
  TORCH_CHECK(side_t[0].size(0) == m, "pd_edge_loss: teacher and student rows differ in count");
  const int64_t* ip = idx.data_ptr<int64_t>();
  for (int64_t e = 0; e < q * k; ++e) {
    TORCH_CHECK(ip[e] >= 0 && ip[e] < m, "pd_edge_loss: idx holds ", ip[e], " outside [0, ", m, ")");
  }
  const SideView s = view_of(side_s), t = view_of(side_t);
  at::Tensor stats = moments_both(s, t, ip, q, k, c);
  const double* st = stats.data_ptr<double>();
  const Norm ns = norm_of(s, st, st + c, c, eps), nt = norm_of(t, st + 2 * c, st + 3 * c, c, eps);
  const bool* vp = valid.data_ptr<bool>();
  const float* pp = phi.data_ptr<float>();
  const int64_t nb = (q + kBlock - 1) / kBlock;
  std::vector<double> part(static_cast<size_t>(std::max<int64_t>(nb, 1)), 0.0);
  at::parallel_for(0, nb, 1, [&](int64_t b0, int64_t b1) {
    for (int64_t b = b0; b < b1; ++b) {
      double acc = 0.0;
      for (int64_t i = b * kBlock; i < std::min(q, (b + 1) * kBlock); ++i) {
        float acc_i = 0.f;
        const float* cs = s.centre + i * c;
        const float* ct = t.centre + i * c;
        for (int64_t kk = 0; kk < k; ++kk) {
          if (!vp[i * k + kk]) continue;
          const int64_t j = ip[i * k + kk];
          const float* rs = s.rows + j * c;
          const float* rt = t.rows + j * c;
          float acc_k = 0.f;
          for (int64_t ch = 0; ch < c; ++ch) {
            const float zs = std::max(0.f, (rs[ch] + cs[ch]) * ns.scale[ch] + ns.shift[ch]);
            const float zt = std::max(0.f, (rt[ch] + ct[ch]) * nt.scale[ch] + nt.shift[ch]);
            const float d = zt - zs;
            acc_k += d * d;
          }
          acc_i += acc_k;
        }
        acc += static_cast<double>(pp[i]) * acc_i;
      }
      part[b] = acc;
    }
  });
  double total = 0.0;
  for (int64_t b = 0; b < nb; ++b) total += part[b];
  const double denom = std::max(1.0, static_cast<double>(count_valid(vp, q * k) * c));
  auto loss = at::full({}, static_cast<float>(lam * total / denom), at::TensorOptions().dtype(at::kFloat));
  return {loss, stats};
}

// Returns {d_rows_s, d_centre_s, d_gamma_s, d_beta_s, d_rows_t, d_centre_t, d_gamma_t, d_beta_t} (the sides not
// needed come back as empty tensors).
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
  const int64_t q = idx.size(0), k = idx.size(1);
  const int64_t c = side_s[1].size(1);
  const int64_t m = side_s[0].size(0);
  const SideView s = view_of(side_s), t = view_of(side_t);
  const auto stats_c = stats.to(at::kDouble).contiguous();
  const double* st = stats_c.data_ptr<double>();
  const int64_t* ip = idx.data_ptr<int64_t>();
  const bool* vp = valid.data_ptr<bool>();
  const float* pp = phi.data_ptr<float>();
  const int64_t n_edges = q * k;
  std::vector<at::Tensor> out(8);
  auto opts = side_s[0].options();
  if (!need_s && !need_t) return out;
  const double denom = std::max(1.0, static_cast<double>(count_valid(vp, n_edges) * c));
  const float coef = static_cast<float>(grad_loss.item<double>() * 2.0 * lam / denom);

  const Norm ns = norm_of(s, st, st + c, c, eps), nt = norm_of(t, st + 2 * c, st + 3 * c, c, eps);

  // da of both sides at edge (i, kk) into das / dat (C each); returns false for an invalid edge (da = 0)
  auto edge_grad = [&](int64_t i, int64_t kk, float* das, float* dat, float* yhs, float* yht) {
    const int64_t j = ip[i * k + kk];
    const float* rs = s.rows + j * c;
    const float* rt = t.rows + j * c;
    const float* cs = s.centre + i * c;
    const float* ct = t.centre + i * c;
    const float w = vp[i * k + kk] ? coef * pp[i] : 0.f;
    for (int64_t ch = 0; ch < c; ++ch) {
      const float ys = rs[ch] + cs[ch], yt = rt[ch] + ct[ch];
      const float as = ys * ns.scale[ch] + ns.shift[ch], at_ = yt * nt.scale[ch] + nt.shift[ch];
      const float zs = std::max(0.f, as), zt = std::max(0.f, at_);
      const float g = w * (zs - zt);  // dL/dz_s; dL/dz_t = -g
      das[ch] = as > 0.f ? g : 0.f;
      dat[ch] = at_ > 0.f ? -g : 0.f;
      yhs[ch] = (ys - ns.mean[ch]) * ns.rstd[ch];
      yht[ch] = (yt - nt.mean[ch]) * nt.rstd[ch];
    }
  };

  // pass 1: per-channel sums of da and da * yhat (= d beta, d gamma), per side
  const int64_t nb = (q + kBlock - 1) / kBlock;
  std::vector<double> part(static_cast<size_t>(std::max<int64_t>(nb, 1) * 4 * c), 0.0);
  at::parallel_for(0, nb, 1, [&](int64_t b0, int64_t b1) {
    std::vector<float> das(c), dat(c), yhs(c), yht(c), acc(4 * c);
    for (int64_t b = b0; b < b1; ++b) {
      double* p = part.data() + b * 4 * c;
      for (int64_t i = b * kBlock; i < std::min(q, (b + 1) * kBlock); ++i) {
        std::fill(acc.begin(), acc.end(), 0.f);
        for (int64_t kk = 0; kk < k; ++kk) {
          if (!vp[i * k + kk]) continue;  // da = 0 on invalid edges
          edge_grad(i, kk, das.data(), dat.data(), yhs.data(), yht.data());
          for (int64_t ch = 0; ch < c; ++ch) {
            acc[ch] += das[ch];
            acc[c + ch] += das[ch] * yhs[ch];
            acc[2 * c + ch] += dat[ch];
            acc[3 * c + ch] += dat[ch] * yht[ch];
          }
        }
        for (int64_t x = 0; x < 4 * c; ++x) p[x] += acc[x];
      }
    }
  });
  std::vector<double> sums(4 * c, 0.0);
  for (int64_t b = 0; b < nb; ++b)
    for (int64_t x = 0; x < 4 * c; ++x) sums[x] += part[b * 4 * c + x];
  const double n = static_cast<double>(std::max<int64_t>(n_edges, 1));
  // dy = rstd * gamma * (da - mean(da) - yhat * mean(da * yhat))
  std::vector<float> mda_s(c), mday_s(c), mda_t(c), mday_t(c), gr_s(c), gr_t(c);
  for (int64_t ch = 0; ch < c; ++ch) {
    mda_s[ch] = static_cast<float>(sums[ch] / n);
    mday_s[ch] = static_cast<float>(sums[c + ch] / n);
    mda_t[ch] = static_cast<float>(sums[2 * c + ch] / n);
    mday_t[ch] = static_cast<float>(sums[3 * c + ch] / n);
    gr_s[ch] = ns.gamma[ch] * ns.rstd[ch];
    gr_t[ch] = nt.gamma[ch] * nt.rstd[ch];
  }
  auto edge_dy = [&](int64_t i, int64_t kk, float* dys, float* dyt, float* das, float* dat, float* yhs,
                     float* yht) {
    edge_grad(i, kk, das, dat, yhs, yht);
    for (int64_t ch = 0; ch < c; ++ch) {
      dys[ch] = gr_s[ch] * (das[ch] - mda_s[ch] - yhs[ch] * mday_s[ch]);
      dyt[ch] = gr_t[ch] * (dat[ch] - mda_t[ch] - yht[ch] * mday_t[ch]);
    }
  };

  // out[base .. base + 3] = d rows, d centre, d gamma (sum da * yhat), d beta (sum da) of one side
  auto alloc_side = [&](int64_t base, int64_t sums_offset) {
    out[base] = at::zeros({m, c}, opts);
    out[base + 1] = at::zeros({q, c}, opts);
    out[base + 2] = at::empty({c}, opts);
    out[base + 3] = at::empty({c}, opts);
    for (int64_t ch = 0; ch < c; ++ch) {
      out[base + 2].data_ptr<float>()[ch] = static_cast<float>(sums[sums_offset + c + ch]);
      out[base + 3].data_ptr<float>()[ch] = static_cast<float>(sums[sums_offset + ch]);
    }
  };
  if (need_s) alloc_side(0, 0);
  if (need_t) alloc_side(4, 2 * c);
  float* drs = need_s ? out[0].data_ptr<float>() : nullptr;
  float* dcs = need_s ? out[1].data_ptr<float>() : nullptr;
  float* drt = need_t ? out[4].data_ptr<float>() : nullptr;
  float* dct = need_t ? out[5].data_ptr<float>() : nullptr;

  // pass 2a: d centre[i] = sum_k dy(i, k), query-major
  at::parallel_for(0, q, kBlock, [&](int64_t i0, int64_t i1) {
    std::vector<float> dys(c), dyt(c), das(c), dat(c), yhs(c), yht(c);
    for (int64_t i = i0; i < i1; ++i) {
      for (int64_t kk = 0; kk < k; ++kk) {
        edge_dy(i, kk, dys.data(), dyt.data(), das.data(), dat.data(), yhs.data(), yht.data());
        for (int64_t ch = 0; ch < c; ++ch) {
          if (dcs) dcs[i * c + ch] += dys[ch];
          if (dct) dct[i * c + ch] += dyt[ch];
        }
      }
    }
  });
  // pass 2b: d rows[j] = sum over the edges with neighbour j, in edge order (counting sort of idx)
  std::vector<int64_t> start(static_cast<size_t>(m + 1), 0), order(static_cast<size_t>(n_edges));
  for (int64_t e = 0; e < n_edges; ++e) ++start[ip[e] + 1];
  for (int64_t j = 0; j < m; ++j) start[j + 1] += start[j];
  {
    std::vector<int64_t> fill(start.begin(), start.end() - 1);
    for (int64_t e = 0; e < n_edges; ++e) order[fill[ip[e]]++] = e;
  }
  at::parallel_for(0, m, 256, [&](int64_t j0, int64_t j1) {
    std::vector<float> dys(c), dyt(c), das(c), dat(c), yhs(c), yht(c);
    for (int64_t j = j0; j < j1; ++j) {
      for (int64_t p = start[j]; p < start[j + 1]; ++p) {
        const int64_t e = order[p];
        edge_dy(e / k, e % k, dys.data(), dyt.data(), das.data(), dat.data(), yhs.data(), yht.data());
        for (int64_t ch = 0; ch < c; ++ch) {
          if (drs) drs[j * c + ch] += dys[ch];
          if (drt) drt[j * c + ch] += dyt[ch];
        }
      }
    }
  });
  return out;
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
  m.def("with_cuda", &with_cuda, "True when built with the CUDA kernels");
}
