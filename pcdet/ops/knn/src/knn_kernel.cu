// kNN within scans and edge features on CUDA.
//
// knn: one thread per query scans the rows of its scan (grouped by a stable device sort of batch_idx, so rows keep
// ascending index order) computing the exact sum of squared differences, and keeps a bounded max-heap of its k
// best (distance, row) pairs in a global scratch buffer of Q * k entries; a final heap sort gives the contract's
// order. Memory O(Q k + M). Edge-feature backward uses atomicAdd (the summation order is not fixed on CUDA).
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAStream.h>
#include <c10/cuda/CUDAGuard.h>

#include <cstdint>
#include <vector>

namespace {

constexpr int kThreads = 128;

template <typename scalar_t>
__device__ __forceinline__ bool ranks_before(scalar_t da, int64_t ia, scalar_t db, int64_t ib) {
  return da < db || (da == db && ia < ib);
}

template <typename scalar_t>
__device__ void sift_down(scalar_t* d, int64_t* ix, int64_t size, int64_t pos) {
  while (true) {
    const int64_t l = 2 * pos + 1, r = l + 1;
    int64_t worst = pos;
    if (l < size && ranks_before(d[worst], ix[worst], d[l], ix[l])) worst = l;
    if (r < size && ranks_before(d[worst], ix[worst], d[r], ix[r])) worst = r;
    if (worst == pos) return;
    const scalar_t td = d[pos];
    d[pos] = d[worst];
    d[worst] = td;
    const int64_t ti = ix[pos];
    ix[pos] = ix[worst];
    ix[worst] = ti;
    pos = worst;
  }
}

template <typename scalar_t>
__global__ void knn_kernel(const scalar_t* __restrict__ feats, int64_t c, const int64_t* __restrict__ batch,
                           const int64_t* __restrict__ rows, const int64_t* __restrict__ scan_start,
                           const int64_t* __restrict__ query, int64_t q, int64_t k, scalar_t* __restrict__ heap_d,
                           int64_t* __restrict__ heap_i, int64_t* __restrict__ out_idx, bool* __restrict__ out_valid) {
  const int64_t a = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (a >= q) return;
  const int64_t self = query[a];
  const int64_t scan = batch[self];
  const int64_t r_begin = scan_start[scan], r_end = scan_start[scan + 1];
  const int64_t kk = min(k, r_end - r_begin);
  scalar_t* hd = heap_d + a * k;
  int64_t* hi = heap_i + a * k;
  const scalar_t* fq = feats + self * c;
  int64_t size = 0;
  for (int64_t r = r_begin; r < r_end; ++r) {
    const int64_t j = rows[r];
    const scalar_t* fr = feats + j * c;
    scalar_t d = 0;
    for (int64_t t = 0; t < c; ++t) {
      const scalar_t diff = fq[t] - fr[t];
      d += diff * diff;
    }
    if (size < kk) {
      int64_t pos = size++;
      hd[pos] = d;
      hi[pos] = j;
      while (pos > 0) {
        const int64_t parent = (pos - 1) / 2;
        if (!ranks_before(hd[parent], hi[parent], hd[pos], hi[pos])) break;
        const scalar_t td = hd[pos];
        hd[pos] = hd[parent];
        hd[parent] = td;
        const int64_t ti = hi[pos];
        hi[pos] = hi[parent];
        hi[parent] = ti;
        pos = parent;
      }
    } else if (ranks_before(d, j, hd[0], hi[0])) {
      hd[0] = d;
      hi[0] = j;
      sift_down(hd, hi, kk, 0);
    }
  }
  // Heap sort: the worst goes to the back, leaving the kk entries in ascending (distance, row) order.
  for (int64_t end = kk - 1; end > 0; --end) {
    const scalar_t td = hd[0];
    hd[0] = hd[end];
    hd[end] = td;
    const int64_t ti = hi[0];
    hi[0] = hi[end];
    hi[end] = ti;
    sift_down(hd, hi, end, 0);
  }
  for (int64_t t = 0; t < k; ++t) {
    out_idx[a * k + t] = t < kk ? hi[t] : self;
    out_valid[a * k + t] = t < kk;
  }
}

template <typename scalar_t>
__global__ void edge_forward_kernel(const scalar_t* __restrict__ feats, const int64_t* __restrict__ query,
                                    const int64_t* __restrict__ idx, int64_t total, int64_t k, int64_t c, bool diff,
                                    scalar_t* __restrict__ out) {
  const int64_t e = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (e >= total) return;
  const int64_t t = e % c;
  const int64_t edge = e / c;
  const int64_t a = edge / k;
  const scalar_t center = feats[query[a] * c + t];
  const scalar_t neighbour = feats[idx[edge] * c + t];
  out[edge * 2 * c + t] = diff ? neighbour - center : neighbour;
  out[edge * 2 * c + c + t] = center;
}

template <typename scalar_t>
__global__ void edge_backward_kernel(const scalar_t* __restrict__ grad, const int64_t* __restrict__ query,
                                     const int64_t* __restrict__ idx, int64_t total, int64_t k, int64_t c, bool diff,
                                     scalar_t* __restrict__ out) {
  const int64_t e = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (e >= total) return;
  const int64_t t = e % c;
  const int64_t edge = e / c;
  const int64_t a = edge / k;
  const scalar_t g_nb = grad[edge * 2 * c + t];
  const scalar_t g_c = grad[edge * 2 * c + c + t];
  atomicAdd(out + idx[edge] * c + t, g_nb);
  atomicAdd(out + query[a] * c + t, diff ? g_c - g_nb : g_c);
}

inline int blocks_for(int64_t n) { return static_cast<int>((n + kThreads - 1) / kThreads); }

}  // namespace

std::vector<at::Tensor> knn_in_scans_cuda(const at::Tensor& features, const at::Tensor& batch_idx,
                                          const at::Tensor& query_index, int64_t k) {
  const c10::cuda::CUDAGuard guard(features.device());
  const int64_t m = features.size(0), c = features.size(1), q = query_index.size(0);
  auto out_idx = at::empty({q, k}, query_index.options());
  auto out_valid = at::empty({q, k}, query_index.options().dtype(at::kBool));
  if (q == 0) return {out_idx, out_valid};
  TORCH_CHECK(query_index.min().item<int64_t>() >= 0 && query_index.max().item<int64_t>() < m,
              "knn_in_scans: query_index out of [0, ", m, ")");
  const int64_t num_scans = batch_idx.max().item<int64_t>() + 1;
  auto rows = std::get<1>(at::sort(batch_idx, /*stable=*/true, /*dim=*/0, /*descending=*/false));
  auto scan_start = at::zeros({num_scans + 1}, batch_idx.options());
  scan_start.narrow(0, 1, num_scans).copy_(at::bincount(batch_idx, {}, num_scans).cumsum(0));
  auto heap_d = at::empty({q, k}, features.options());
  auto heap_i = at::empty({q, k}, query_index.options());
  auto stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES(features.scalar_type(), "knn_in_scans_cuda", [&] {
    knn_kernel<scalar_t><<<blocks_for(q), kThreads, 0, stream>>>(
        features.data_ptr<scalar_t>(), c, batch_idx.data_ptr<int64_t>(), rows.data_ptr<int64_t>(),
        scan_start.data_ptr<int64_t>(), query_index.data_ptr<int64_t>(), q, k, heap_d.data_ptr<scalar_t>(),
        heap_i.data_ptr<int64_t>(), out_idx.data_ptr<int64_t>(), out_valid.data_ptr<bool>());
  });
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return {out_idx, out_valid};
}

at::Tensor edge_features_forward_cuda(const at::Tensor& features, const at::Tensor& query_index,
                                      const at::Tensor& idx, bool diff) {
  const c10::cuda::CUDAGuard guard(features.device());
  const int64_t q = idx.size(0), k = idx.size(1), c = features.size(1);
  auto out = at::empty({q, k, 2 * c}, features.options());
  const int64_t total = q * k * c;
  if (total == 0) return out;
  auto stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES(features.scalar_type(), "edge_features_forward_cuda", [&] {
    edge_forward_kernel<scalar_t><<<blocks_for(total), kThreads, 0, stream>>>(
        features.data_ptr<scalar_t>(), query_index.data_ptr<int64_t>(), idx.data_ptr<int64_t>(), total, k, c, diff,
        out.data_ptr<scalar_t>());
  });
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return out;
}

at::Tensor edge_features_backward_cuda(const at::Tensor& grad, const at::Tensor& query_index, const at::Tensor& idx,
                                       int64_t num_rows, bool diff) {
  const c10::cuda::CUDAGuard guard(grad.device());
  const int64_t q = idx.size(0), k = idx.size(1), c = grad.size(2) / 2;
  auto out = at::zeros({num_rows, c}, grad.options());
  const int64_t total = q * k * c;
  if (total == 0) return out;
  auto stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES(grad.scalar_type(), "edge_features_backward_cuda", [&] {
    edge_backward_kernel<scalar_t><<<blocks_for(total), kThreads, 0, stream>>>(
        grad.data_ptr<scalar_t>(), query_index.data_ptr<int64_t>(), idx.data_ptr<int64_t>(), total, k, c, diff,
        out.data_ptr<scalar_t>());
  });
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return out;
}
