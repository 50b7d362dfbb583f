// Voxel point counts on CUDA: one kernel for the linear voxel ids (same floor rule as the CPU path), then a
// stable device sort of the ids and run-length grouping with ATen primitives. Deterministic.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAStream.h>
#include <c10/cuda/CUDAGuard.h>

#include <cstdint>
#include <limits>
#include <vector>

namespace {

constexpr int kThreads = 256;
constexpr int64_t kOutside = std::numeric_limits<int64_t>::max();

template <typename scalar_t>
__global__ void linear_ids_kernel(const scalar_t* __restrict__ pts, int64_t n, int64_t stride, bool with_batch,
                                  scalar_t lx, scalar_t ly, scalar_t lz, scalar_t vx, scalar_t vy, scalar_t vz,
                                  int64_t nx, int64_t ny, int64_t nz, int64_t* __restrict__ lin,
                                  int* __restrict__ bad_batch) {
  const int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (i >= n) return;
  const scalar_t* p = pts + i * stride + (with_batch ? 1 : 0);
  const scalar_t cx = floor((p[0] - lx) / vx);
  const scalar_t cy = floor((p[1] - ly) / vy);
  const scalar_t cz = floor((p[2] - lz) / vz);
  const bool inside = cx >= scalar_t(0) && cx < scalar_t(nx) && cy >= scalar_t(0) && cy < scalar_t(ny) &&
                      cz >= scalar_t(0) && cz < scalar_t(nz);
  if (!inside) {
    lin[i] = kOutside;
    return;
  }
  int64_t b = 0;
  if (with_batch) {
    b = static_cast<int64_t>(pts[i * stride]);
    if (b < 0) {
      *bad_batch = 1;
      b = 0;
    }
  }
  lin[i] = ((b * nz + static_cast<int64_t>(cz)) * ny + static_cast<int64_t>(cy)) * nx + static_cast<int64_t>(cx);
}

}  // namespace

std::vector<at::Tensor> voxel_point_counts_cuda(const at::Tensor& points, const std::vector<double>& lo,
                                                const std::vector<double>& vs, const std::vector<int64_t>& grid,
                                                bool with_batch_idx) {
  const c10::cuda::CUDAGuard guard(points.device());
  const int64_t n = points.size(0);
  const int64_t nx = grid[0], ny = grid[1], nz = grid[2];
  auto options = points.options().dtype(at::kLong);
  auto lin = at::empty({n}, options);
  auto bad_batch = at::zeros({1}, points.options().dtype(at::kInt));
  if (n > 0) {
    const int blocks = static_cast<int>((n + kThreads - 1) / kThreads);
    auto stream = c10::cuda::getCurrentCUDAStream();
    AT_DISPATCH_FLOATING_TYPES(points.scalar_type(), "voxel_point_counts_cuda", [&] {
      linear_ids_kernel<scalar_t><<<blocks, kThreads, 0, stream>>>(
          points.data_ptr<scalar_t>(), n, points.stride(0), with_batch_idx, scalar_t(lo[0]), scalar_t(lo[1]),
          scalar_t(lo[2]), scalar_t(vs[0]), scalar_t(vs[1]), scalar_t(vs[2]), nx, ny, nz, lin.data_ptr<int64_t>(),
          bad_batch.data_ptr<int>());
    });
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
  TORCH_CHECK(bad_batch.item<int>() == 0, "voxel_point_counts: points[:, 0] holds the batch index and must be >= 0");

  auto sorted = at::sort(lin, /*stable=*/true, /*dim=*/0, /*descending=*/false);
  at::Tensor keys = std::get<0>(sorted);
  at::Tensor order = std::get<1>(sorted);
  const int64_t m = keys.ne(kOutside).sum().item<int64_t>();
  keys = keys.narrow(0, 0, m);
  order = order.narrow(0, 0, m);

  auto is_head = at::ones({m}, options.dtype(at::kBool));
  if (m > 1) is_head.narrow(0, 1, m - 1).copy_(keys.narrow(0, 1, m - 1).ne(keys.narrow(0, 0, m - 1)));
  auto voxel_of_sorted = is_head.cumsum(0).sub_(1);
  auto point2voxel = at::full({n}, -1, options);
  point2voxel.index_put_({order}, voxel_of_sorted);

  auto head_pos = at::nonzero(is_head).squeeze(1);
  const int64_t num_voxels = head_pos.size(0);
  at::Tensor counts = at::empty({0}, options);
  if (num_voxels > 0) {
    counts = at::cat({head_pos.narrow(0, 1, num_voxels - 1), at::full({1}, m, options)}).sub_(head_pos);
  }
  auto head_keys = keys.index_select(0, head_pos);
  std::vector<at::Tensor> cols;
  if (with_batch_idx) cols.push_back(head_keys.div(nx * ny * nz, "floor"));
  cols.push_back(head_keys.div(nx * ny, "floor").remainder_(nz));
  cols.push_back(head_keys.div(nx, "floor").remainder_(ny));
  cols.push_back(head_keys.remainder(nx));
  return {at::stack(cols, 1), counts, point2voxel};
}
