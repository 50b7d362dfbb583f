// Rotated BEV intersection / IoU and NMS on CUDA for boxes [x, y, z, dx, dy, dz, heading] (centre origin).
//
// The intersection clips one rectangle by the four edges of the other (Sutherland-Hodgman; a convex quadrilateral
// clipped by four half-planes keeps at most 8 vertices) in float32. NMS computes a (N, ceil(N / 64)) suppression
// bitmask in parallel, 64 x 64 box pairs per block, and the greedy sweep over it runs on the host.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAStream.h>
#include <c10/cuda/CUDAGuard.h>

#include <cstdint>
#include <vector>

namespace {

constexpr int kThreads2d = 16;
constexpr int kNmsBlock = 64;
constexpr float kEps = 1e-8f;

struct Rect {
  float cx, cy, dx, dy, angle;
};

__device__ __forceinline__ Rect load_rect(const float* box) { return {box[0], box[1], box[3], box[4], box[6]}; }

__device__ void rect_corners(const Rect& r, float* xs, float* ys) {
  const float c = cosf(r.angle), s = sinf(r.angle);
  const float hx = r.dx * 0.5f, hy = r.dy * 0.5f;
  const float lx[4] = {-hx, hx, hx, -hx};
  const float ly[4] = {-hy, -hy, hy, hy};
  for (int k = 0; k < 4; ++k) {
    xs[k] = r.cx + lx[k] * c - ly[k] * s;
    ys[k] = r.cy + lx[k] * s + ly[k] * c;
  }
}

__device__ float intersection_area(const Rect& a, const Rect& b) {
  if (a.dx <= 0.f || a.dy <= 0.f || b.dx <= 0.f || b.dy <= 0.f) return 0.f;
  const float ddx = a.cx - b.cx, ddy = a.cy - b.cy;
  const float rad = 0.5f * (sqrtf(a.dx * a.dx + a.dy * a.dy) + sqrtf(b.dx * b.dx + b.dy * b.dy));
  if (ddx * ddx + ddy * ddy > rad * rad) return 0.f;
  float clip_x[4], clip_y[4];
  float px[16], py[16], nx[16], ny[16];
  rect_corners(a, px, py);
  rect_corners(b, clip_x, clip_y);
  int n = 4;
  for (int e = 0; e < 4; ++e) {
    const float ax = clip_x[e], ay = clip_y[e];
    const float ex = clip_x[(e + 1) % 4] - ax, ey = clip_y[(e + 1) % 4] - ay;
    int m = 0;
    for (int k = 0; k < n; ++k) {
      const int k1 = (k + 1) % n;
      const float cs = ex * (py[k] - ay) - ey * (px[k] - ax);
      const float ct = ex * (py[k1] - ay) - ey * (px[k1] - ax);
      if (cs >= 0.f) {
        nx[m] = px[k];
        ny[m] = py[k];
        ++m;
      }
      if ((cs >= 0.f) != (ct >= 0.f)) {
        const float t = cs / (cs - ct);
        nx[m] = px[k] + t * (px[k1] - px[k]);
        ny[m] = py[k] + t * (py[k1] - py[k]);
        ++m;
      }
    }
    n = m;
    if (n < 3) return 0.f;
    for (int k = 0; k < n; ++k) {
      px[k] = nx[k];
      py[k] = ny[k];
    }
  }
  float area = 0.f;
  for (int k = 0; k < n; ++k) {
    const int k1 = (k + 1) % n;
    area += px[k] * py[k1] - px[k1] * py[k];
  }
  return fabsf(area) * 0.5f;
}

__device__ __forceinline__ float iou_of(const Rect& a, const Rect& b) {
  const float inter = intersection_area(a, b);
  return inter / fmaxf(a.dx * a.dy + b.dx * b.dy - inter, kEps);
}

__global__ void overlap_kernel(const float* __restrict__ a, int64_t n, int64_t sa, const float* __restrict__ b,
                               int64_t m, int64_t sb, bool iou, float* __restrict__ out) {
  const int64_t i = blockIdx.y * static_cast<int64_t>(blockDim.y) + threadIdx.y;
  const int64_t j = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (i >= n || j >= m) return;
  const Rect ra = load_rect(a + i * sa), rb = load_rect(b + j * sb);
  out[i * m + j] = iou ? iou_of(ra, rb) : intersection_area(ra, rb);
}

__device__ __forceinline__ float aligned_iou(const Rect& a, const Rect& b) {
  const float w = fminf(a.cx + a.dx * 0.5f, b.cx + b.dx * 0.5f) - fmaxf(a.cx - a.dx * 0.5f, b.cx - b.dx * 0.5f);
  const float h = fminf(a.cy + a.dy * 0.5f, b.cy + b.dy * 0.5f) - fmaxf(a.cy - a.dy * 0.5f, b.cy - b.dy * 0.5f);
  if (w <= 0.f || h <= 0.f) return 0.f;
  const float inter = w * h;
  return inter / fmaxf(a.dx * a.dy + b.dx * b.dy - inter, kEps);
}

// mask[i, cb] bit t: box i (sorted) suppresses box cb * 64 + t, for t with cb * 64 + t > i.
__global__ void nms_mask_kernel(const float* __restrict__ boxes, int64_t n, int64_t stride, float thresh,
                                bool rotated, uint64_t* __restrict__ mask, int64_t col_blocks) {
  const int64_t row_block = blockIdx.y, col_block = blockIdx.x;
  if (row_block > col_block) return;
  const int64_t row_left = n - row_block * kNmsBlock, col_left = n - col_block * kNmsBlock;
  const int64_t row_size = row_left < kNmsBlock ? row_left : kNmsBlock;
  const int64_t col_size = col_left < kNmsBlock ? col_left : kNmsBlock;
  __shared__ Rect cols[kNmsBlock];
  if (threadIdx.x < col_size) cols[threadIdx.x] = load_rect(boxes + (col_block * kNmsBlock + threadIdx.x) * stride);
  __syncthreads();
  if (threadIdx.x >= row_size) return;
  const int64_t i = row_block * kNmsBlock + threadIdx.x;
  const Rect cur = load_rect(boxes + i * stride);
  uint64_t bits = 0;
  const int64_t start = row_block == col_block ? threadIdx.x + 1 : 0;
  for (int64_t t = start; t < col_size; ++t) {
    const float overlap = rotated ? iou_of(cur, cols[t]) : aligned_iou(cur, cols[t]);
    if (overlap > thresh) bits |= uint64_t(1) << t;
  }
  mask[i * col_blocks + col_block] = bits;
}

}  // namespace

at::Tensor boxes_overlap_bev_cuda(const at::Tensor& boxes_a, const at::Tensor& boxes_b, bool iou) {
  const c10::cuda::CUDAGuard guard(boxes_a.device());
  TORCH_CHECK(boxes_b.device() == boxes_a.device(), "iou3d_nms: boxes_a on ", boxes_a.device(), " but boxes_b on ",
              boxes_b.device());
  const at::Tensor a = boxes_a.to(at::kFloat).contiguous();
  const at::Tensor b = boxes_b.to(at::kFloat).contiguous();
  const int64_t n = a.size(0), m = b.size(0);
  auto out = at::zeros({n, m}, a.options());
  if (n == 0 || m == 0) return out;
  const dim3 threads(kThreads2d, kThreads2d);
  const dim3 blocks(static_cast<unsigned>((m + kThreads2d - 1) / kThreads2d),
                    static_cast<unsigned>((n + kThreads2d - 1) / kThreads2d));
  overlap_kernel<<<blocks, threads, 0, c10::cuda::getCurrentCUDAStream()>>>(
      a.data_ptr<float>(), n, a.stride(0), b.data_ptr<float>(), m, b.stride(0), iou, out.data_ptr<float>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return out;
}

// boxes must already be sorted by descending score; returns the kept rows (K,) int64 on the boxes' device.
at::Tensor nms_cuda(const at::Tensor& boxes, double thresh, bool rotated) {
  const c10::cuda::CUDAGuard guard(boxes.device());
  const at::Tensor b = boxes.to(at::kFloat).contiguous();
  const int64_t n = b.size(0);
  if (n == 0) return at::empty({0}, boxes.options().dtype(at::kLong));
  const int64_t col_blocks = (n + kNmsBlock - 1) / kNmsBlock;
  auto mask = at::zeros({n, col_blocks}, b.options().dtype(at::kLong));
  const dim3 blocks(static_cast<unsigned>(col_blocks), static_cast<unsigned>(col_blocks));
  nms_mask_kernel<<<blocks, kNmsBlock, 0, c10::cuda::getCurrentCUDAStream()>>>(
      b.data_ptr<float>(), n, b.stride(0), static_cast<float>(thresh), rotated,
      reinterpret_cast<uint64_t*>(mask.data_ptr<int64_t>()), col_blocks);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  const at::Tensor mask_cpu = mask.cpu();
  const uint64_t* mp = reinterpret_cast<const uint64_t*>(mask_cpu.data_ptr<int64_t>());
  std::vector<uint64_t> removed(col_blocks, 0);
  std::vector<int64_t> keep;
  for (int64_t i = 0; i < n; ++i) {
    const int64_t blk = i / kNmsBlock, bit = i % kNmsBlock;
    if (removed[blk] & (uint64_t(1) << bit)) continue;
    keep.push_back(i);
    const uint64_t* row = mp + i * col_blocks;
    for (int64_t j = blk; j < col_blocks; ++j) removed[j] |= row[j];
  }
  return at::tensor(keep, at::TensorOptions().dtype(at::kLong)).to(boxes.device());
}
