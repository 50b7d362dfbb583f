// Fused PointDistiller graph loss on CUDA (see pd_edge_loss.cpp for the definition). One thread per (edge,
// channel); per-channel reductions go through shared-memory double accumulators, then one global atomicAdd per
// block and channel; the row gradients are scattered with float atomicAdd (the summation order is not fixed on
// CUDA, unlike the CPU path).
#include <ATen/ATen.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include <algorithm>
#include <cstdint>
#include <vector>

namespace {

constexpr int kThreads = 256;

struct Side {
  const float* rows;
  const float* centre;
  const float* scale;  // gamma * rstd
  const float* shift;  // beta - mean * gamma * rstd
  const float* mean;
  const float* rstd;
  const float* gr;     // gamma * rstd (for dy)
  const float* mda;    // mean over edges of da
  const float* mday;   // mean over edges of da * yhat
};

int blocks_for(int64_t n) { return static_cast<int>(std::max<int64_t>(1, (n + kThreads - 1) / kThreads)); }

__global__ void moments_kernel(const float* rows_s, const float* centre_s, const float* rows_t, const float* centre_t,
                               const int64_t* idx, int64_t q, int64_t k, int64_t c, double* sums) {
  extern __shared__ double sh[];  // 4 c: sum_s, sumsq_s, sum_t, sumsq_t
  for (int64_t x = threadIdx.x; x < 4 * c; x += blockDim.x) sh[x] = 0.0;
  __syncthreads();
  const int64_t total = q * k * c;
  const int64_t t = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (t < total) {
    const int64_t ch = t % c, e = t / c, i = e / k;
    const int64_t j = idx[e];
    const float ys = rows_s[j * c + ch] + centre_s[i * c + ch];
    const float yt = rows_t[j * c + ch] + centre_t[i * c + ch];
    atomicAdd(sh + ch, static_cast<double>(ys));
    atomicAdd(sh + c + ch, static_cast<double>(ys) * ys);
    atomicAdd(sh + 2 * c + ch, static_cast<double>(yt));
    atomicAdd(sh + 3 * c + ch, static_cast<double>(yt) * yt);
  }
  __syncthreads();
  for (int64_t x = threadIdx.x; x < 4 * c; x += blockDim.x) atomicAdd(sums + x, sh[x]);
}

__device__ __forceinline__ void edge_values(const Side& s, int64_t i, int64_t j, int64_t ch, int64_t c, float& y,
                                            float& a) {
  y = s.rows[j * c + ch] + s.centre[i * c + ch];
  a = y * s.scale[ch] + s.shift[ch];
}

__global__ void loss_kernel(Side s, Side t, const int64_t* idx, const bool* valid, const float* phi, int64_t q,
                            int64_t k, int64_t c, double* total_out) {
  __shared__ double sh;
  if (threadIdx.x == 0) sh = 0.0;
  __syncthreads();
  const int64_t total = q * k * c;
  const int64_t x = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (x < total) {
    const int64_t ch = x % c, e = x / c, i = e / k;
    if (valid[e]) {
      const int64_t j = idx[e];
      float ys, as, yt, at;
      edge_values(s, i, j, ch, c, ys, as);
      edge_values(t, i, j, ch, c, yt, at);
      const float d = fmaxf(at, 0.f) - fmaxf(as, 0.f);
      atomicAdd(&sh, static_cast<double>(phi[i]) * d * d);
    }
  }
  __syncthreads();
  if (threadIdx.x == 0) atomicAdd(total_out, sh);
}

// da of both sides at one (edge, channel); yhat of both sides
__device__ __forceinline__ void edge_grad(const Side& s, const Side& t, const int64_t* idx, const bool* valid,
                                          const float* phi, float coef, int64_t x, int64_t k, int64_t c,
                                          float& das, float& dat, float& yhs, float& yht) {
  const int64_t ch = x % c, e = x / c, i = e / k;
  const int64_t j = idx[e];
  float ys, as, yt, at;
  edge_values(s, i, j, ch, c, ys, as);
  edge_values(t, i, j, ch, c, yt, at);
  const float w = valid[e] ? coef * phi[i] : 0.f;
  const float g = w * (fmaxf(as, 0.f) - fmaxf(at, 0.f));
  das = as > 0.f ? g : 0.f;
  dat = at > 0.f ? -g : 0.f;
  yhs = (ys - s.mean[ch]) * s.rstd[ch];
  yht = (yt - t.mean[ch]) * t.rstd[ch];
}

__global__ void grad_sums_kernel(Side s, Side t, const int64_t* idx, const bool* valid, const float* phi, float coef,
                                 int64_t q, int64_t k, int64_t c, double* sums) {
  extern __shared__ double sh[];  // 4 c: sum da_s, sum da_s yhat_s, sum da_t, sum da_t yhat_t
  for (int64_t x = threadIdx.x; x < 4 * c; x += blockDim.x) sh[x] = 0.0;
  __syncthreads();
  const int64_t total = q * k * c;
  const int64_t x = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (x < total) {
    float das, dat, yhs, yht;
    edge_grad(s, t, idx, valid, phi, coef, x, k, c, das, dat, yhs, yht);
    const int64_t ch = x % c;
    if (das != 0.f) {
      atomicAdd(sh + ch, static_cast<double>(das));
      atomicAdd(sh + c + ch, static_cast<double>(das) * yhs);
    }
    if (dat != 0.f) {
      atomicAdd(sh + 2 * c + ch, static_cast<double>(dat));
      atomicAdd(sh + 3 * c + ch, static_cast<double>(dat) * yht);
    }
  }
  __syncthreads();
  for (int64_t y = threadIdx.x; y < 4 * c; y += blockDim.x) atomicAdd(sums + y, sh[y]);
}

__global__ void scatter_kernel(Side s, Side t, const int64_t* idx, const bool* valid, const float* phi, float coef,
                               int64_t q, int64_t k, int64_t c, float* d_rows_s, float* d_centre_s, float* d_rows_t,
                               float* d_centre_t) {
  const int64_t total = q * k * c;
  const int64_t x = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (x >= total) return;
  float das, dat, yhs, yht;
  edge_grad(s, t, idx, valid, phi, coef, x, k, c, das, dat, yhs, yht);
  const int64_t ch = x % c, e = x / c, i = e / k;
  const int64_t j = idx[e];
  if (d_rows_s != nullptr) {
    const float dy = s.gr[ch] * (das - s.mda[ch] - yhs * s.mday[ch]);
    atomicAdd(d_rows_s + j * c + ch, dy);
    atomicAdd(d_centre_s + i * c + ch, dy);
  }
  if (d_rows_t != nullptr) {
    const float dy = t.gr[ch] * (dat - t.mda[ch] - yht * t.mday[ch]);
    atomicAdd(d_rows_t + j * c + ch, dy);
    atomicAdd(d_centre_t + i * c + ch, dy);
  }
}

// Per side: (scale, shift, mean, rstd, gamma * rstd) float tensors on the device from the (4, C) double stats.
std::vector<at::Tensor> norm_params(const at::Tensor& mean, const at::Tensor& var, const at::Tensor& gamma,
                                    const at::Tensor& beta, double eps) {
  const at::Tensor rstd = (var + eps).rsqrt();
  const at::Tensor scale = gamma.to(at::kDouble) * rstd;
  const at::Tensor shift = beta.to(at::kDouble) - mean * scale;
  return {scale.to(at::kFloat).contiguous(), shift.to(at::kFloat).contiguous(), mean.to(at::kFloat).contiguous(),
          rstd.to(at::kFloat).contiguous(), scale.to(at::kFloat).contiguous()};
}

Side side_of(const std::vector<at::Tensor>& side, const std::vector<at::Tensor>& p, const float* mda,
             const float* mday) {
  return {side[0].data_ptr<float>(), side[1].data_ptr<float>(), p[0].data_ptr<float>(), p[1].data_ptr<float>(),
          p[2].data_ptr<float>(), p[3].data_ptr<float>(), p[4].data_ptr<float>(), mda, mday};
}

at::Tensor moments(const std::vector<at::Tensor>& side_s, const std::vector<at::Tensor>& side_t,
                   const at::Tensor& idx) {
  const int64_t q = idx.size(0), k = idx.size(1), c = side_s[1].size(1);
  auto sums = at::zeros({4 * c}, idx.options().dtype(at::kDouble));
  const int64_t total = q * k * c;
  if (total > 0) {
    auto stream = c10::cuda::getCurrentCUDAStream();
    moments_kernel<<<blocks_for(total), kThreads, 4 * c * sizeof(double), stream>>>(
        side_s[0].data_ptr<float>(), side_s[1].data_ptr<float>(), side_t[0].data_ptr<float>(),
        side_t[1].data_ptr<float>(), idx.data_ptr<int64_t>(), q, k, c, sums.data_ptr<double>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
  const double n = static_cast<double>(std::max<int64_t>(q * k, 1));
  auto s = sums.view({4, c}) / n;
  auto mean_s = s[0], mean_t = s[2];
  auto var_s = (s[1] - mean_s * mean_s).clamp_min(0.0), var_t = (s[3] - mean_t * mean_t).clamp_min(0.0);
  return at::stack({mean_s, var_s, mean_t, var_t}).contiguous();
}

}  // namespace

std::vector<at::Tensor> pd_edge_loss_forward_cuda(const std::vector<at::Tensor>& side_s,
                                                  const std::vector<at::Tensor>& side_t, const at::Tensor& idx,
                                                  const at::Tensor& valid, const at::Tensor& phi, double lam,
                                                  double eps) {
  const c10::cuda::CUDAGuard guard(idx.device());
  const int64_t q = idx.size(0), k = idx.size(1), c = side_s[1].size(1);
  const at::Tensor stats = moments(side_s, side_t, idx);
  const auto ps = norm_params(stats[0], stats[1], side_s[2], side_s[3], eps);
  const auto pt = norm_params(stats[2], stats[3], side_t[2], side_t[3], eps);
  auto total = at::zeros({1}, idx.options().dtype(at::kDouble));
  const int64_t n = q * k * c;
  if (n > 0) {
    auto stream = c10::cuda::getCurrentCUDAStream();
    loss_kernel<<<blocks_for(n), kThreads, 0, stream>>>(side_of(side_s, ps, nullptr, nullptr),
                                                        side_of(side_t, pt, nullptr, nullptr),
                                                        idx.data_ptr<int64_t>(), valid.data_ptr<bool>(),
                                                        phi.data_ptr<float>(), q, k, c, total.data_ptr<double>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
  const at::Tensor denom = (valid.sum().to(at::kDouble) * static_cast<double>(c)).clamp_min(1.0);
  const at::Tensor loss = (total[0] * lam / denom).to(at::kFloat).reshape({});
  return {loss, stats};
}

std::vector<at::Tensor> pd_edge_loss_backward_cuda(const at::Tensor& grad_loss, const std::vector<at::Tensor>& side_s,
                                                   const std::vector<at::Tensor>& side_t, const at::Tensor& idx,
                                                   const at::Tensor& valid, const at::Tensor& phi,
                                                   const at::Tensor& stats, double lam, double eps, bool need_s,
                                                   bool need_t) {
  const c10::cuda::CUDAGuard guard(idx.device());
  std::vector<at::Tensor> out(8);
  if (!need_s && !need_t) return out;
  const int64_t q = idx.size(0), k = idx.size(1), c = side_s[1].size(1), m = side_s[0].size(0);
  const int64_t n = q * k * c;
  const at::Tensor st = stats.to(at::kDouble);
  const auto ps = norm_params(st[0], st[1], side_s[2], side_s[3], eps);
  const auto pt = norm_params(st[2], st[3], side_t[2], side_t[3], eps);
  const double denom = std::max(1.0, valid.sum().item<double>() * static_cast<double>(c));
  const float coef = static_cast<float>(grad_loss.item<double>() * 2.0 * lam / denom);
  auto sums = at::zeros({4 * c}, idx.options().dtype(at::kDouble));
  auto stream = c10::cuda::getCurrentCUDAStream();
  if (n > 0) {
    grad_sums_kernel<<<blocks_for(n), kThreads, 4 * c * sizeof(double), stream>>>(
        side_of(side_s, ps, nullptr, nullptr), side_of(side_t, pt, nullptr, nullptr), idx.data_ptr<int64_t>(),
        valid.data_ptr<bool>(), phi.data_ptr<float>(), coef, q, k, c, sums.data_ptr<double>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
  const double edges = static_cast<double>(std::max<int64_t>(q * k, 1));
  const at::Tensor sv = sums.view({4, c});
  const at::Tensor means = (sv / edges).to(at::kFloat).contiguous();  // mda_s, mday_s, mda_t, mday_t
  auto opts = side_s[0].options();
  at::Tensor d_rows_s, d_centre_s, d_rows_t, d_centre_t;
  if (need_s) {
    d_rows_s = at::zeros({m, c}, opts);
    d_centre_s = at::zeros({q, c}, opts);
    out[2] = sv[1].to(at::kFloat);
    out[3] = sv[0].to(at::kFloat);
  }
  if (need_t) {
    d_rows_t = at::zeros({m, c}, opts);
    d_centre_t = at::zeros({q, c}, opts);
    out[6] = sv[3].to(at::kFloat);
    out[7] = sv[2].to(at::kFloat);
  }
  if (n > 0) {
    const float* mp = means.data_ptr<float>();
    scatter_kernel<<<blocks_for(n), kThreads, 0, stream>>>(
        side_of(side_s, ps, mp, mp + c), side_of(side_t, pt, mp + 2 * c, mp + 3 * c), idx.data_ptr<int64_t>(),
        valid.data_ptr<bool>(), phi.data_ptr<float>(), coef, q, k, c,
        need_s ? d_rows_s.data_ptr<float>() : nullptr, need_s ? d_centre_s.data_ptr<float>() : nullptr,
        need_t ? d_rows_t.data_ptr<float>() : nullptr, need_t ? d_centre_t.data_ptr<float>() : nullptr);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
  out[0] = d_rows_s;
  out[1] = d_centre_s;
  out[4] = d_rows_t;
  out[5] = d_centre_t;
  return out;
}
