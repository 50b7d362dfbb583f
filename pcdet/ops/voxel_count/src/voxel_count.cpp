// Voxel point counts on CPU: linear voxel ids, a stable LSD radix sort of (id, point) pairs, one run scan.
// O(N) for a fixed number of id bits; deterministic (no atomics, no hashing order).
#include <torch/extension.h>
#include <ATen/Parallel.h>

#include <cmath>
#include <cstdint>
#include <vector>

#ifdef WITH_CUDA
std::vector<at::Tensor> voxel_point_counts_cuda(const at::Tensor& points, const std::vector<double>& lo,
                                                const std::vector<double>& voxel_size,
                                                const std::vector<int64_t>& grid, bool with_batch_idx);
#endif

namespace {

constexpr int kMaxDigitBits = 11;

// Must match the reference exactly: floor((x - lo) / size) in the points' dtype, inside iff 0 <= c < n.
// Writes the linear id (-1 outside) and the [b, z, y, x] cell of each point (read back for voxel coordinates,
// which avoids 64-bit divisions when decoding ids). Branch-free, so it vectorises; cloned for AVX-512 / AVX2
// (whose roundps makes floor an instruction instead of a call). Subtraction, division and floor are exactly
// rounded in every ISA, so every clone gives the same ids.
template <typename scalar_t>
__attribute__((always_inline)) inline void linear_ids_body(const scalar_t* pts, int64_t begin, int64_t end,
                                                           int64_t stride, bool with_batch, const double* lo,
                                                           const double* vs, const int64_t* grid, int64_t* lin,
                                                           int32_t* cells) {
  const int off = with_batch ? 1 : 0;
  const scalar_t lo0 = scalar_t(lo[0]), lo1 = scalar_t(lo[1]), lo2 = scalar_t(lo[2]);
  const scalar_t vs0 = scalar_t(vs[0]), vs1 = scalar_t(vs[1]), vs2 = scalar_t(vs[2]);
  const scalar_t n0 = scalar_t(grid[0]), n1 = scalar_t(grid[1]), n2 = scalar_t(grid[2]);
  const int64_t nx = grid[0], ny = grid[1], nz = grid[2];
  for (int64_t i = begin; i < end; ++i) {
    const scalar_t* p = pts + i * stride;
    const scalar_t c0 = std::floor((p[off] - lo0) / vs0);
    const scalar_t c1 = std::floor((p[off + 1] - lo1) / vs1);
    const scalar_t c2 = std::floor((p[off + 2] - lo2) / vs2);
    const bool inside = c0 >= scalar_t(0) && c0 < n0 && c1 >= scalar_t(0) && c1 < n1 && c2 >= scalar_t(0) && c2 < n2;
    // outside (or NaN) cells become 0 before the conversion: converting an out-of-range float is undefined
    const int32_t x = static_cast<int32_t>(inside ? c0 : scalar_t(0));
    const int32_t y = static_cast<int32_t>(inside ? c1 : scalar_t(0));
    const int32_t z = static_cast<int32_t>(inside ? c2 : scalar_t(0));
    const int32_t b = with_batch ? static_cast<int32_t>(inside ? p[0] : scalar_t(0)) : 0;  // checked before
    int32_t* cell = cells + 4 * i;
    cell[0] = b;
    cell[1] = z;
    cell[2] = y;
    cell[3] = x;
    const int64_t id = ((int64_t(b) * nz + z) * ny + y) * nx + x;
    lin[i] = inside ? id : int64_t(-1);
  }
}

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__) && !defined(__CUDACC__)
#define PCDET_VC_CLONES __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define PCDET_VC_CLONES
#endif

PCDET_VC_CLONES
void linear_ids_f32(const float* pts, int64_t begin, int64_t end, int64_t stride, bool with_batch, const double* lo,
                    const double* vs, const int64_t* grid, int64_t* lin, int32_t* cells) {
  linear_ids_body(pts, begin, end, stride, with_batch, lo, vs, grid, lin, cells);
}

PCDET_VC_CLONES
void linear_ids_f64(const double* pts, int64_t begin, int64_t end, int64_t stride, bool with_batch, const double* lo,
                    const double* vs, const int64_t* grid, int64_t* lin, int32_t* cells) {
  linear_ids_body(pts, begin, end, stride, with_batch, lo, vs, grid, lin, cells);
}

inline void linear_ids(const float* pts, int64_t b, int64_t e, int64_t stride, bool wb, const double* lo,
                       const double* vs, const int64_t* grid, int64_t* lin, int32_t* cells) {
  linear_ids_f32(pts, b, e, stride, wb, lo, vs, grid, lin, cells);
}
inline void linear_ids(const double* pts, int64_t b, int64_t e, int64_t stride, bool wb, const double* lo,
                       const double* vs, const int64_t* grid, int64_t* lin, int32_t* cells) {
  linear_ids_f64(pts, b, e, stride, wb, lo, vs, grid, lin, cells);
}

template <typename scalar_t>
void compute_linear_ids(const scalar_t* pts, int64_t n, int64_t stride, bool with_batch, const std::vector<double>& lo,
                        const std::vector<double>& vs, const std::vector<int64_t>& grid, int64_t* lin,
                        int32_t* cells) {
  if (with_batch) {  // the batch index of every point (inside or not) must be an integer in [0, 2^31)
    for (int64_t i = 0; i < n; ++i) {
      const scalar_t b = pts[i * stride];
      TORCH_CHECK(b >= scalar_t(0) && b < scalar_t(2147483648.0), "voxel_point_counts: points[", i,
                  ", 0] holds the batch index and must be in [0, 2^31), got ", b);
    }
  }
  // Large grain: the pass is cheap and memory-bound, so threads only pay off for clouds of millions of points
  // (and an oversubscribed OpenMP team costs more than it saves).
  at::parallel_for(0, n, 1 << 20, [&](int64_t begin, int64_t end) {
    linear_ids(pts, begin, end, stride, with_batch, lo.data(), vs.data(), grid.data(), lin, cells);
  });
}

// Stable LSD radix sort of (key, point) pairs with digits of at most kMaxDigitBits bits (small histograms stay in
// L1, which beats fewer passes with larger digits); all digit histograms are counted in one read.
template <typename key_t>
void radix_sort_pairs(std::vector<key_t>& keys, std::vector<key_t>& vals, int64_t max_key) {
  const int64_t n = static_cast<int64_t>(keys.size());
  int bits = 1;
  while (bits < 63 && (max_key >> bits) > 0) ++bits;
  const int passes = (bits + kMaxDigitBits - 1) / kMaxDigitBits;
  const int digit = (bits + passes - 1) / passes;
  const key_t radix = key_t(1) << digit, mask = radix - 1;
  std::vector<int64_t> count(passes * radix, 0);
  for (int64_t i = 0; i < n; ++i)
    for (int p = 0; p < passes; ++p) ++count[p * radix + ((keys[i] >> (p * digit)) & mask)];
  std::vector<key_t> keys_tmp(n), vals_tmp(n);
  for (int p = 0; p < passes; ++p) {
    int64_t* cp = count.data() + p * radix;
    int64_t sum = 0;
    for (key_t d = 0; d < radix; ++d) {
      const int64_t c = cp[d];
      cp[d] = sum;
      sum += c;
    }
    const int shift = p * digit;
    for (int64_t i = 0; i < n; ++i) {
      const int64_t pos = cp[(keys[i] >> shift) & mask]++;
      keys_tmp[pos] = keys[i];
      vals_tmp[pos] = vals[i];
    }
    keys.swap(keys_tmp);
    vals.swap(vals_tmp);
  }
}

// Sorts the inside points by id and writes coords / counts / point2voxel; key_t is uint32 when ids and point
// indices fit (halves the memory traffic of the sort), else uint64.
template <typename key_t>
std::vector<at::Tensor> group_sorted(const int64_t* lin, const int32_t* cells, int64_t n, int64_t max_key,
                                     bool with_batch, const at::TensorOptions& options) {
  std::vector<key_t> keys, vals;
  keys.reserve(n);
  vals.reserve(n);
  for (int64_t i = 0; i < n; ++i) {
    if (lin[i] < 0) continue;
    keys.push_back(static_cast<key_t>(lin[i]));
    vals.push_back(static_cast<key_t>(i));
  }
  radix_sort_pairs(keys, vals, max_key);

  const int64_t m = static_cast<int64_t>(keys.size());
  int64_t num_voxels = 0;
  for (int64_t i = 0; i < m; ++i) num_voxels += (i == 0 || keys[i] != keys[i - 1]);

  const int ncol = with_batch ? 4 : 3;
  auto coords_t = at::empty({num_voxels, ncol}, options);
  auto counts_t = at::zeros({num_voxels}, options);
  auto p2v_t = at::full({n}, -1, options);
  int64_t* coords = coords_t.data_ptr<int64_t>();
  int64_t* counts = counts_t.data_ptr<int64_t>();
  int64_t* p2v = p2v_t.data_ptr<int64_t>();
  int64_t v = -1;
  for (int64_t i = 0; i < m; ++i) {
    if (i == 0 || keys[i] != keys[i - 1]) {
      ++v;
      const int32_t* cell = cells + 4 * static_cast<int64_t>(vals[i]) + (with_batch ? 0 : 1);
      int64_t* row = coords + v * ncol;
      for (int col = 0; col < ncol; ++col) row[col] = cell[col];
    }
    ++counts[v];
    p2v[vals[i]] = v;
  }
  return {coords_t, counts_t, p2v_t};
}

std::vector<at::Tensor> voxel_point_counts_cpu(const at::Tensor& points, const std::vector<double>& lo,
                                               const std::vector<double>& vs, const std::vector<int64_t>& grid,
                                               bool with_batch) {
  const int64_t n = points.size(0);
  auto options = points.options().dtype(at::kLong);
  auto lin_t = at::empty({n}, options);
  auto cells_t = at::empty({n, 4}, options.dtype(at::kInt));
  int64_t* lin = lin_t.data_ptr<int64_t>();
  int32_t* cells = cells_t.data_ptr<int32_t>();
  AT_DISPATCH_FLOATING_TYPES(points.scalar_type(), "voxel_point_counts_cpu", [&] {
    compute_linear_ids<scalar_t>(points.data_ptr<scalar_t>(), n, points.stride(0), with_batch, lo, vs, grid, lin,
                                 cells);
  });
  const int64_t max_key = n ? *std::max_element(lin, lin + n) : 0;
  if (max_key < (int64_t(1) << 32) && n < (int64_t(1) << 32))
    return group_sorted<uint32_t>(lin, cells, n, max_key, with_batch, options);
  return group_sorted<uint64_t>(lin, cells, n, max_key, with_batch, options);
}

std::vector<at::Tensor> voxel_point_counts(const at::Tensor& points, const std::vector<double>& lo,
                                           const std::vector<double>& voxel_size, const std::vector<int64_t>& grid,
                                           bool with_batch_idx) {
  TORCH_CHECK(points.dim() == 2 && points.size(1) >= (with_batch_idx ? 4 : 3),
              "voxel_point_counts: points must be (N, 3+) or (N, 4+) with a batch index, got ", points.sizes());
  TORCH_CHECK(lo.size() == 3 && voxel_size.size() == 3 && grid.size() == 3,
              "voxel_point_counts: range min, voxel_size and grid must have 3 values each");
  TORCH_CHECK(points.stride(1) == 1, "voxel_point_counts: points must have contiguous rows");
  if (points.is_cuda()) {
#ifdef WITH_CUDA
    return voxel_point_counts_cuda(points, lo, voxel_size, grid, with_batch_idx);
#else
    TORCH_CHECK(false, "voxel_point_counts: pcdet was built without CUDA, got points on ", points.device());
#endif
  }
  return voxel_point_counts_cpu(points, lo, voxel_size, grid, with_batch_idx);
}

bool with_cuda() {
#ifdef WITH_CUDA
  return true;
#else
  return false;
#endif
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("voxel_point_counts", &voxel_point_counts,
        "(coords, counts, point2voxel) of points (N, 3+|4+) in a grid", py::arg("points"), py::arg("range_min"),
        py::arg("voxel_size"), py::arg("grid_size"), py::arg("with_batch_idx"));
  m.def("with_cuda", &with_cuda, "True when built with the CUDA kernels");
}
