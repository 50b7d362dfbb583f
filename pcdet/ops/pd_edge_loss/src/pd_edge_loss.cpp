// Fused PointDistiller graph loss (CPU): both graph layers' BatchNorm + ReLU over the kNN edges and the
// phi-weighted squared error, forward and backward, without materialising any (Q, K, C') tensor.
//
// Inputs per side (teacher t, student s): rows (M, C) = F W_j^T and centre (Q, C) = F[query] W_i^T, the two halves
// of the 1x1 edge convolution (so the edge (i, k) with neighbour j = idx[i, k] has pre-activation
// y = rows[j] + centre[i]); gamma, beta (C) of the BatchNorm (ones / zeros without affine). Edges: idx (Q, K),
// valid (Q, K), phi (Q,). BatchNorm uses the batch statistics over all Q*K edges (biased variance), as the
// reference BatchNorm1d over the (Q*K, C) edge matrix in training mode; the loss is
//     L = lam * sum_{valid (i,k)} phi_i sum_c (z_t - z_s)^2 / max(1, #valid * C),  z = relu(gamma * yhat + beta).
// Determinism: reductions run over fixed blocks of queries, set by Q alone, whose partial sums are added in block
// order, and each neighbour row's gradient sums are formed by that row alone over its edges in a fixed order (a
// row pass over the CSR transpose of idx), so results do not depend on the number of threads.
#include <torch/extension.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <vector>

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__) && !defined(__CUDACC__)
#include <immintrin.h>
#endif

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

// Hot loops are cloned for AVX-512 / AVX2 with run-time dispatch (the extension is built without -march); the
// default clone is plain x86-64. A clone may contract a * b + c into one FMA, so results can differ in the last
// bits between CPUs, never between runs or thread counts on one CPU.
#define PCDET_PD_CLONES __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#if !defined(__x86_64__) || !defined(__GNUC__) || defined(__clang__) || defined(__CUDACC__)
#undef PCDET_PD_CLONES
#define PCDET_PD_CLONES
#endif

// p1, p2 (C) += per query [i0, i1): the sum over its K edges of y - pivot and of its square (float within a query,
// double across queries)
PCDET_PD_CLONES
void moments_block(const float* rows, const float* centre, const int64_t* idx, const float* pivot, int64_t i0,
                   int64_t i1, int64_t k, int64_t c, float* s1, float* s2, double* p1, double* p2) {
  for (int64_t i = i0; i < i1; ++i) {
    std::fill(s1, s1 + c, 0.f);
    std::fill(s2, s2 + c, 0.f);
    const float* ci = centre + i * c;
    for (int64_t kk = 0; kk < k; ++kk) {
      const float* rj = rows + idx[i * k + kk] * c;
#pragma GCC ivdep
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

// Batch mean and biased variance per channel of y = rows[idx] + centre over all Q*K edges, from fixed blocks of
// queries added in block order. The pivot (the first edge's value) keeps E[(y-p)^2] - E[y-p]^2 accurate when a
// channel's mean is large against its spread.
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
      moments_block(v.rows, v.centre, idx, pivot.data(), b * kBlock, std::min(q, (b + 1) * kBlock), k, c,
                    s1.data(), s2.data(), p1, p1 + c);
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

struct SweepIn {
  const float *rs, *cs, *rt, *ct;                      // rows (M, C) / centre (Q, C) of the student, the teacher
  const float *scale_s, *shift_s, *mean_s, *scale_t, *shift_t, *mean_t;   // (C) each: Norm of each side
  const int64_t* idx;
  const bool* valid;
  const float* phi;
  int64_t q, k, c;
};

struct SweepOut {            // per side: da_q, yc_q (Q, C); ab (4, C) of the block
  float *da_q_s, *yc_q_s;
  float *da_q_t, *yc_q_t;
  double* ab;                // {sum da_s, sum da_s (y_s - mean_s), sum da_t, sum da_t (y_t - mean_t)}
};

struct RowOut {              // the CSR transpose of idx (RowEdges) and, per side, da_r, yc_r (M, C)
  const int64_t *ptr, *edges;
  float *da_r_s, *yc_r_s;
  float *da_r_t, *yc_r_t;
};

// The edges of each neighbour row, in CSR form: row j's edges e = i * K + k (idx[i, k] = j) are
// edges[ptr[j] .. ptr[j + 1]), in increasing e (a counting sort, so the order is fixed by idx alone).
struct RowEdges {
  std::vector<int64_t> ptr, edges;
};

RowEdges row_edges(const int64_t* idx, int64_t n_edges, int64_t m) {
  RowEdges r{std::vector<int64_t>(static_cast<size_t>(m + 1), 0), std::vector<int64_t>(static_cast<size_t>(n_edges))};
  for (int64_t e = 0; e < n_edges; ++e) ++r.ptr[idx[e] + 1];
  for (int64_t j = 0; j < m; ++j) r.ptr[j + 1] += r.ptr[j];
  std::vector<int64_t> next(r.ptr.begin(), r.ptr.end() - 1);
  for (int64_t e = 0; e < n_edges; ++e) r.edges[next[idx[e]]++] = e;
  return r;
}

// The loss sweep's ReLU selects (a > 0 ? ... : 0) become vector blends only where the compiler may evaluate both
// arms: under trapping math (GCC's default) it kept one branch per channel and edge, scalar (about 2x slower for
// the whole forward). No value changes (nothing here reads floating-point exception flags). Scoped to the sweeps:
// a function compiled with other floating-point options does not inline library functions defined before it,
// so the sweeps use plain loops instead of library calls.
#if defined(__GNUC__) && !defined(__clang__) && !defined(__CUDACC__)
#define PCDET_PD_SWEEP_OPTIONS 1
#pragma GCC push_options
#pragma GCC optimize("no-trapping-math")
#endif

#if defined(__GNUC__) && !defined(__CUDACC__)
#define PCDET_PD_INLINE inline __attribute__((always_inline))
#else
#define PCDET_PD_INLINE inline
#endif

// The per-channel sums of one walk over edges: a query's K edges (query pass) or a neighbour row's edges (row
// pass). Both passes sum da and y - mean for each side that learns; the query pass also sums the loss and
// da * (y - mean). Every pointer is a (C) slice of the walk's scratch (kScratch C floats).
struct EdgeSums {
  float *da_s, *yc_s, *da_t, *yc_t;
  float *loss, *yab_s, *yab_t;  // the query pass only
};
constexpr int64_t kScratch = 7;

inline EdgeSums sums_in(float* scratch, int64_t c) {
  return {scratch, scratch + c, scratch + 2 * c, scratch + 3 * c, scratch + 4 * c, scratch + 5 * c, scratch + 6 * c};
}

// One edge's contribution with the neighbour row (rs, rt) and the query's centres (cs, ct), phi weight w: the
// portable loops (vectorised by the compiler where it can). Invalid edges add to the y - mean sums only.
struct PortableEdge {
  template <bool NS, bool NT, bool QUERY>
  static PCDET_PD_INLINE void add(const SweepIn& a, const float* rs, const float* rt, const float* cs,
                                  const float* ct, bool valid, float w, const EdgeSums& u) {
    const int64_t c = a.c;
    const float *scs = a.scale_s, *shs = a.shift_s, *ms = a.mean_s;
    const float *sct = a.scale_t, *sht = a.shift_t, *mt = a.mean_t;
    if (NS) {
#pragma GCC ivdep
      for (int64_t ch = 0; ch < c; ++ch) u.yc_s[ch] += rs[ch] + cs[ch] - ms[ch];
    }
    if (NT) {
#pragma GCC ivdep
      for (int64_t ch = 0; ch < c; ++ch) u.yc_t[ch] += rt[ch] + ct[ch] - mt[ch];
    }
    if (!valid) return;
#pragma GCC ivdep
    for (int64_t ch = 0; ch < c; ++ch) {
      const float ys = rs[ch] + cs[ch], yt = rt[ch] + ct[ch];
      const float as = ys * scs[ch] + shs[ch], at_ = yt * sct[ch] + sht[ch];
      const float zs = as > 0.f ? as : 0.f, zt = at_ > 0.f ? at_ : 0.f;
      const float d = zt - zs;
      if (QUERY) u.loss[ch] += d * d;
      if (NS) {
        const float g = as > 0.f ? -w * d : 0.f;
        u.da_s[ch] += g;
        if (QUERY) u.yab_s[ch] += g * (ys - ms[ch]);
      }
      if (NT) {
        const float g = at_ > 0.f ? w * d : 0.f;
        u.da_t[ch] += g;
        if (QUERY) u.yab_t[ch] += g * (yt - mt[ch]);
      }
    }
  }
};

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__) && !defined(__CUDACC__)
#define PCDET_PD_X86_AVX2 1
inline bool cpu_has_avx2() {
  static const bool ok = __builtin_cpu_supports("avx2");
  return ok;
}

// PortableEdge::add in AVX2 for C a multiple of 8: the same sums per channel in the same order, 8 channels a step
// (multiply and add stay separate). GCC left the portable edge loop scalar in the clones once it held more than one
// accumulator per channel (about 4x slower). Not always_inline: it is inlined into the flattened AVX2 entry points
// (sweep_avx2, rows_avx2), the only callers whose target allows it.
struct Avx2Edge {
  template <bool NS, bool NT, bool QUERY>
  static inline __attribute__((target("avx2"))) void add(const SweepIn& a, const float* rs, const float* rt,
                                                         const float* cs, const float* ct, bool valid, float w,
                                                         const EdgeSums& u) {
    const __m256 zero = _mm256_setzero_ps();
    const __m256 vw = _mm256_set1_ps(w), vnw = _mm256_set1_ps(-w);
    for (int64_t ch = 0; ch < a.c; ch += 8) {
      const __m256 ys = _mm256_add_ps(_mm256_loadu_ps(rs + ch), _mm256_loadu_ps(cs + ch));
      const __m256 yt = _mm256_add_ps(_mm256_loadu_ps(rt + ch), _mm256_loadu_ps(ct + ch));
      const __m256 ms = _mm256_loadu_ps(a.mean_s + ch), mt = _mm256_loadu_ps(a.mean_t + ch);
      if (NS) _mm256_storeu_ps(u.yc_s + ch, _mm256_add_ps(_mm256_loadu_ps(u.yc_s + ch), _mm256_sub_ps(ys, ms)));
      if (NT) _mm256_storeu_ps(u.yc_t + ch, _mm256_add_ps(_mm256_loadu_ps(u.yc_t + ch), _mm256_sub_ps(yt, mt)));
      if (!valid) continue;
      const __m256 as = _mm256_add_ps(_mm256_mul_ps(ys, _mm256_loadu_ps(a.scale_s + ch)),
                                      _mm256_loadu_ps(a.shift_s + ch));
      const __m256 at_ = _mm256_add_ps(_mm256_mul_ps(yt, _mm256_loadu_ps(a.scale_t + ch)),
                                       _mm256_loadu_ps(a.shift_t + ch));
      // relu as (a > 0 ? a : 0): max returns its second operand (0) for a NaN, as the select does
      const __m256 d = _mm256_sub_ps(_mm256_max_ps(at_, zero), _mm256_max_ps(as, zero));
      if (QUERY) _mm256_storeu_ps(u.loss + ch, _mm256_add_ps(_mm256_loadu_ps(u.loss + ch), _mm256_mul_ps(d, d)));
      if (NS) {
        const __m256 g = _mm256_and_ps(_mm256_cmp_ps(as, zero, _CMP_GT_OQ), _mm256_mul_ps(vnw, d));
        _mm256_storeu_ps(u.da_s + ch, _mm256_add_ps(_mm256_loadu_ps(u.da_s + ch), g));
        if (QUERY)
          _mm256_storeu_ps(u.yab_s + ch,
                           _mm256_add_ps(_mm256_loadu_ps(u.yab_s + ch), _mm256_mul_ps(g, _mm256_sub_ps(ys, ms))));
      }
      if (NT) {
        const __m256 g = _mm256_and_ps(_mm256_cmp_ps(at_, zero, _CMP_GT_OQ), _mm256_mul_ps(vw, d));
        _mm256_storeu_ps(u.da_t + ch, _mm256_add_ps(_mm256_loadu_ps(u.da_t + ch), g));
        if (QUERY)
          _mm256_storeu_ps(u.yab_t + ch,
                           _mm256_add_ps(_mm256_loadu_ps(u.yab_t + ch), _mm256_mul_ps(g, _mm256_sub_ps(yt, mt))));
      }
    }
  }
};
#endif

// The query pass over queries [i0, i1) with the edge kernel Edge: the loss sum, and for each side that learns its
// per-query sums (da_q, yc_q) and the block's ab. Writes only rows [i0, i1) of the outputs; each query's sums
// build up in the scratch and are copied out once.
template <bool NS, bool NT, class Edge>
PCDET_PD_INLINE double query_walk(const SweepIn& a, const SweepOut& o, int64_t i0, int64_t i1, float* scratch) {
  const int64_t k = a.k, c = a.c;
  const EdgeSums u = sums_in(scratch, c);
  double total = 0.0;
  for (int64_t i = i0; i < i1; ++i) {
    const float w = a.phi[i];
    const float* cs = a.cs + i * c;
    const float* ct = a.ct + i * c;
    for (int64_t x = 0; x < kScratch * c; ++x) scratch[x] = 0.f;  // plain loops: see the pragma above
    for (int64_t kk = 0; kk < k; ++kk) {
      const int64_t j = a.idx[i * k + kk];
      Edge::template add<NS, NT, true>(a, a.rs + j * c, a.rt + j * c, cs, ct, a.valid[i * k + kk], w, u);
    }
    float acc_i = 0.f;
    for (int64_t ch = 0; ch < c; ++ch) acc_i += u.loss[ch];
    total += static_cast<double>(w) * acc_i;
    for (int64_t ch = 0; ch < c; ++ch) {
      if (NS) {
        o.da_q_s[i * c + ch] = u.da_s[ch];
        o.yc_q_s[i * c + ch] = u.yc_s[ch];
        o.ab[ch] += u.da_s[ch];
        o.ab[c + ch] += u.yab_s[ch];
      }
      if (NT) {
        o.da_q_t[i * c + ch] = u.da_t[ch];
        o.yc_q_t[i * c + ch] = u.yc_t[ch];
        o.ab[2 * c + ch] += u.da_t[ch];
        o.ab[3 * c + ch] += u.yab_t[ch];
      }
    }
  }
  return total;
}

// The row pass over neighbour rows [j0, j1) with the edge kernel Edge: per row, over its edges in CSR order,
// da_r[j] = sum da(e) (valid edges) and yc_r[j] = sum (y(e) - mean) (every edge), each side that learns; the edge
// values are recomputed from the rows and the gathered centres, so nothing is scattered. Writes only rows
// [j0, j1) of da_r, yc_r.
template <bool NS, bool NT, class Edge>
PCDET_PD_INLINE void row_walk(const SweepIn& a, const RowOut& o, int64_t j0, int64_t j1, float* scratch) {
  const int64_t k = a.k, c = a.c;
  const EdgeSums u = sums_in(scratch, c);
  for (int64_t j = j0; j < j1; ++j) {
    const float* rs = a.rs + j * c;
    const float* rt = a.rt + j * c;
    for (int64_t x = 0; x < 4 * c; ++x) scratch[x] = 0.f;  // da_s, yc_s, da_t, yc_t
    for (int64_t p = o.ptr[j]; p < o.ptr[j + 1]; ++p) {
      const int64_t e = o.edges[p];
      const int64_t i = e / k;
      Edge::template add<NS, NT, false>(a, rs, rt, a.cs + i * c, a.ct + i * c, a.valid[e], a.phi[i], u);
    }
    for (int64_t ch = 0; ch < c; ++ch) {
      if (NS) {
        o.da_r_s[j * c + ch] = u.da_s[ch];
        o.yc_r_s[j * c + ch] = u.yc_s[ch];
      }
      if (NT) {
        o.da_r_t[j * c + ch] = u.da_t[ch];
        o.yc_r_t[j * c + ch] = u.yc_t[ch];
      }
    }
  }
}

// Test hook (set_avx2): false keeps the sweeps on the portable loops, so tests can compare both paths on one input.
std::atomic<bool> g_allow_avx2{true};

// The entry points, one per (pass, sides that learn): the portable ones cloned for x86-64 levels, the AVX2 ones
// flattened so that the AVX2 edge kernel is inlined into them.
PCDET_PD_CLONES
double sweep_none(const SweepIn& a, const SweepOut& o, int64_t i0, int64_t i1, float* scratch) {
  return query_walk<false, false, PortableEdge>(a, o, i0, i1, scratch);
}
PCDET_PD_CLONES
double sweep_student(const SweepIn& a, const SweepOut& o, int64_t i0, int64_t i1, float* scratch) {
  return query_walk<true, false, PortableEdge>(a, o, i0, i1, scratch);
}
PCDET_PD_CLONES
double sweep_teacher(const SweepIn& a, const SweepOut& o, int64_t i0, int64_t i1, float* scratch) {
  return query_walk<false, true, PortableEdge>(a, o, i0, i1, scratch);
}
PCDET_PD_CLONES
double sweep_both(const SweepIn& a, const SweepOut& o, int64_t i0, int64_t i1, float* scratch) {
  return query_walk<true, true, PortableEdge>(a, o, i0, i1, scratch);
}
PCDET_PD_CLONES
void rows_student(const SweepIn& a, const RowOut& o, int64_t j0, int64_t j1, float* scratch) {
  row_walk<true, false, PortableEdge>(a, o, j0, j1, scratch);
}
PCDET_PD_CLONES
void rows_teacher(const SweepIn& a, const RowOut& o, int64_t j0, int64_t j1, float* scratch) {
  row_walk<false, true, PortableEdge>(a, o, j0, j1, scratch);
}
PCDET_PD_CLONES
void rows_both(const SweepIn& a, const RowOut& o, int64_t j0, int64_t j1, float* scratch) {
  row_walk<true, true, PortableEdge>(a, o, j0, j1, scratch);
}
#ifdef PCDET_PD_X86_AVX2
template <bool NS, bool NT>
__attribute__((target("avx2"), flatten)) double sweep_avx2(const SweepIn& a, const SweepOut& o, int64_t i0,
                                                           int64_t i1, float* scratch) {
  return query_walk<NS, NT, Avx2Edge>(a, o, i0, i1, scratch);
}
template <bool NS, bool NT>
__attribute__((target("avx2"), flatten)) void rows_avx2(const SweepIn& a, const RowOut& o, int64_t j0, int64_t j1,
                                                        float* scratch) {
  row_walk<NS, NT, Avx2Edge>(a, o, j0, j1, scratch);
}
#endif
#ifdef PCDET_PD_SWEEP_OPTIONS
#pragma GCC pop_options
#endif

// The backward's cache of one side: {da_q (Q, C), yc_q (Q, C), ab (2, C) float64, da_r (M, C), yc_r (M, C)};
// empty tensors for a side without gradient.
constexpr size_t kCachePerSide = 5;

// The loss sweep, which also gathers everything the backward needs for each side that learns. With the unit
// upstream gradient g = phi_i * (z_s - z_t) on a valid edge (dL/dz_s up to the scalar coef = grad * 2 * lam /
// denom) and da = g where a > 0 (the teacher's da = -g where a_t > 0):
//   per query i: da_q[i] = sum_k da(i, k), yc_q[i] = sum_k (y(i, k) - mean) (every edge: the statistics include
//   invalid ones); per neighbour row j, over the edges e = (i, k) with idx[i, k] = j: da_r[j] = sum_e da(e) and
//   yc_r[j] = sum_e (y(e) - mean) (every edge); ab = {sum_e da, sum_e da * (y - mean)} (2, C).
// Two passes, each writing only its own rows: the query pass (fixed blocks of kBlock queries; the loss and ab
// partial sums added in block order) and, when a side learns, the row pass over the CSR transpose of idx (each
// row's edges in a fixed order). So the sums do not depend on the thread count, nothing is scattered into shared
// accumulators, and the backward needs no edge sweep.
// Returns the unscaled loss sum sum_valid phi_i sum_c (z_t - z_s)^2.
double loss_sweep(const SideView& s, const SideView& t, const Norm& ns, const Norm& nt, const int64_t* ip,
                  const bool* vp, const float* pp, int64_t q, int64_t k, int64_t c, int64_t m, bool need_s,
                  bool need_t, std::vector<at::Tensor>* cache) {
  const int64_t nb = (q + kBlock - 1) / kBlock;
  const auto f = at::TensorOptions().dtype(at::kFloat);
  const auto d = f.dtype(at::kDouble);
  at::Tensor ab = at::zeros({std::max<int64_t>(nb, 1), 4, c}, d);
  std::vector<at::Tensor> cs_q, ct_q;
  for (int side = 0; side < 2; ++side) {
    const bool need = side == 0 ? need_s : need_t;
    auto& out = side == 0 ? cs_q : ct_q;
    // the query pass writes every row of each
    out = need ? std::vector<at::Tensor>{at::empty({q, c}, f), at::empty({q, c}, f)}
               : std::vector<at::Tensor>{at::empty({0}, f), at::empty({0}, f)};
  }
  const SweepIn in{s.rows, s.centre, t.rows, t.centre, ns.scale.data(), ns.shift.data(), ns.mean.data(),
                   nt.scale.data(), nt.shift.data(), nt.mean.data(), ip, vp, pp, q, k, c};
  std::vector<double> part(static_cast<size_t>(nb), 0.0);
  const auto fn = need_s ? (need_t ? sweep_both : sweep_student) : (need_t ? sweep_teacher : sweep_none);
#ifdef PCDET_PD_X86_AVX2
  const auto fn_avx2 = need_s ? (need_t ? sweep_avx2<true, true> : sweep_avx2<true, false>)
                              : (need_t ? sweep_avx2<false, true> : sweep_avx2<false, false>);
  const bool use_avx2 = c % 8 == 0 && g_allow_avx2.load() && cpu_has_avx2();
#endif
  at::parallel_for(0, nb, 1, [&](int64_t b0, int64_t b1) {
    std::vector<float> scratch(static_cast<size_t>(kScratch * c));
    for (int64_t b = b0; b < b1; ++b) {
      const SweepOut o{need_s ? cs_q[0].data_ptr<float>() : nullptr, need_s ? cs_q[1].data_ptr<float>() : nullptr,
                       need_t ? ct_q[0].data_ptr<float>() : nullptr, need_t ? ct_q[1].data_ptr<float>() : nullptr,
                       ab.data_ptr<double>() + b * 4 * c};
      const int64_t i0 = b * kBlock, i1 = std::min(q, (b + 1) * kBlock);
#ifdef PCDET_PD_X86_AVX2
      if (use_avx2) {
        part[b] = fn_avx2(in, o, i0, i1, scratch.data());
        continue;
      }
#endif
      part[b] = fn(in, o, i0, i1, scratch.data());
    }
  });
  double total = 0.0;
  for (int64_t b = 0; b < nb; ++b) total += part[b];
  if (cache == nullptr) return total;
  // the row pass: both sides' row sums at once
  at::Tensor da_r_s = need_s ? at::empty({m, c}, f) : at::empty({0}, f);
  at::Tensor yc_r_s = need_s ? at::empty({m, c}, f) : at::empty({0}, f);
  at::Tensor da_r_t = need_t ? at::empty({m, c}, f) : at::empty({0}, f);
  at::Tensor yc_r_t = need_t ? at::empty({m, c}, f) : at::empty({0}, f);
  if (need_s || need_t) {
    const RowEdges re = row_edges(ip, q * k, m);
    const auto rows_fn = need_s ? (need_t ? rows_both : rows_student) : rows_teacher;
#ifdef PCDET_PD_X86_AVX2
    const auto rows_fn_avx2 = need_s ? (need_t ? rows_avx2<true, true> : rows_avx2<true, false>)
                                     : rows_avx2<false, true>;
#endif
    const RowOut ro{re.ptr.data(), re.edges.data(), need_s ? da_r_s.data_ptr<float>() : nullptr,
                    need_s ? yc_r_s.data_ptr<float>() : nullptr, need_t ? da_r_t.data_ptr<float>() : nullptr,
                    need_t ? yc_r_t.data_ptr<float>() : nullptr};
    at::parallel_for(0, m, 64, [&](int64_t j0, int64_t j1) {
      std::vector<float> scratch(static_cast<size_t>(kScratch * c));
#ifdef PCDET_PD_X86_AVX2
      if (use_avx2) {
        rows_fn_avx2(in, ro, j0, j1, scratch.data());
        return;
      }
#endif
      rows_fn(in, ro, j0, j1, scratch.data());
    });
  }
  const double* abp = ab.data_ptr<double>();
  for (int side = 0; side < 2; ++side) {
    const bool need = side == 0 ? need_s : need_t;
    auto& q_sums = side == 0 ? cs_q : ct_q;
    if (!need) {
      for (size_t x = 0; x < kCachePerSide; ++x) cache->push_back(at::empty({0}, x == 2 ? d : f));
      continue;
    }
    at::Tensor ab_side = at::zeros({2, c}, d);
    double* abs_ = ab_side.data_ptr<double>();
    for (int64_t b = 0; b < nb; ++b)
      for (int64_t x = 0; x < 2 * c; ++x) abs_[x] += abp[b * 4 * c + 2 * c * side + x];
    cache->insert(cache->end(), {q_sums[0], q_sums[1], ab_side, side == 0 ? da_r_s : da_r_t,
                                 side == 0 ? yc_r_s : yc_r_t});
  }
  return total;
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

// The CPU forward; with want_cache it also returns the backward's sums of each side that learns (loss_sweep), so
// the backward sweeps no edge. Returns {loss, stats, then (with want_cache) 5 tensors per side (student, teacher):
// da_q, yc_q, ab, da_r, yc_r}.
std::vector<at::Tensor> forward_cpu(const std::vector<at::Tensor>& side_s, const std::vector<at::Tensor>& side_t,
                                    const at::Tensor& idx, const at::Tensor& valid, const at::Tensor& phi,
                                    double lam, double eps, bool need_s, bool need_t, bool want_cache) {
  const int64_t q = idx.size(0), k = idx.size(1);
  const int64_t c = side_s[1].size(1);
  const int64_t m = side_s[0].size(0);
  const int64_t* ip = idx.data_ptr<int64_t>();
  const SideView s = view_of(side_s), t = view_of(side_t);
  at::Tensor stats = moments_both(s, t, ip, q, k, c);
  const double* st = stats.data_ptr<double>();
  const Norm ns = norm_of(s, st, st + c, c, eps), nt = norm_of(t, st + 2 * c, st + 3 * c, c, eps);
  const bool* vp = valid.data_ptr<bool>();
  std::vector<at::Tensor> out;
  const double total = loss_sweep(s, t, ns, nt, ip, vp, phi.data_ptr<float>(), q, k, c, m, need_s && want_cache,
                                  need_t && want_cache, want_cache ? &out : nullptr);
  const double denom = std::max(1.0, static_cast<double>(count_valid(vp, q * k) * c));
  auto loss = at::full({}, static_cast<float>(lam * total / denom), at::TensorOptions().dtype(at::kFloat));
  out.insert(out.begin(), {loss, stats});
  return out;
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
  auto out = forward_cpu(side_s, side_t, idx, valid, phi, lam, eps, false, false, false);
  return {out[0], out[1]};
}

// CPU forward for training: {loss, stats, cache (5 tensors per side: da_q, yc_q, ab, da_r, yc_r)}; pass the
// cache to backward_cached.
std::vector<at::Tensor> pd_edge_loss_forward_train(const std::vector<at::Tensor>& side_s,
                                                   const std::vector<at::Tensor>& side_t, const at::Tensor& idx,
                                                   const at::Tensor& valid, const at::Tensor& phi, double lam,
                                                   double eps, bool need_s, bool need_t) {
  check_forward_args(side_s, side_t, idx, valid, phi);
  TORCH_CHECK(!idx.is_cuda(), "pd_edge_loss: forward_train is the CPU path (CUDA: forward / backward)");
  return forward_cpu(side_s, side_t, idx, valid, phi, lam, eps, need_s, need_t, true);
}

// The CPU backward from the forward's cache (da_q, yc_q, ab, da_r, yc_r per side): every gradient is closed-form
// from those sums, with no edge sweep:
//   dy(e) = gr * (da(e) - mean_e(da) - yhat(e) * mean_e(da * yhat)),  gr = gamma * rstd,  yhat = (y - mean) * rstd
//   d centre[i] = gr * (da_q[i] - K * mean(da) - rstd * mean(da * yhat) * yc_q[i]), d rows[j] likewise with the
//   edge count of j and the row sums, d gamma = sum da * yhat, d beta = sum da (da scaled by
//   coef = grad * 2 * lam / denom).
std::vector<at::Tensor> pd_edge_loss_backward_cached(const at::Tensor& grad_loss,
                                                     const std::vector<at::Tensor>& side_s,
                                                     const std::vector<at::Tensor>& side_t, const at::Tensor& idx,
                                                     const at::Tensor& valid, const at::Tensor& phi,
                                                     const at::Tensor& stats, double lam, double eps, bool need_s,
                                                     bool need_t, const std::vector<at::Tensor>& cache) {
  TORCH_CHECK(!idx.is_cuda(), "pd_edge_loss: backward_cached is the CPU path");
  check_forward_args(side_s, side_t, idx, valid, phi);
  TORCH_CHECK(cache.size() == 2 * kCachePerSide, "pd_edge_loss: the cache holds ", 2 * kCachePerSide,
              " tensors, got ", cache.size());
  const int64_t q = idx.size(0), k = idx.size(1);
  const int64_t c = side_s[1].size(1);
  const int64_t m = side_s[0].size(0);
  TORCH_CHECK(stats.numel() == 4 * c, "pd_edge_loss: stats must hold (4, ", c, ") values, got ", stats.sizes());
  std::vector<at::Tensor> out(8);
  if (!need_s && !need_t) return out;
  for (int side = 0; side < 2; ++side) {
    if (!(side == 0 ? need_s : need_t)) continue;
    const at::Tensor* cs = cache.data() + kCachePerSide * side;
    bool fits = cs[2].numel() == 2 * c && cs[2].scalar_type() == at::kDouble && cs[2].is_contiguous() &&
                cs[2].device().is_cpu();
    for (int x : {0, 1, 3, 4}) {
      const int64_t rows = x < 2 ? q : m;
      fits = fits && cs[x].dim() == 2 && cs[x].size(0) == rows && cs[x].size(1) == c &&
             cs[x].scalar_type() == at::kFloat && cs[x].is_contiguous() && cs[x].device().is_cpu();
    }
    TORCH_CHECK(fits, "pd_edge_loss: the cache of the ", side == 0 ? "student" : "teacher",
                " side does not fit (Q, C) = (", q, ", ", c, "), (M, C) = (", m, ", ", c,
                "): was the forward run with its gradient needed?");
  }
  const SideView s = view_of(side_s), t = view_of(side_t);
  const auto stats_c = stats.to(at::kDouble).contiguous();
  const double* st = stats_c.data_ptr<double>();
  const bool* vp = valid.data_ptr<bool>();
  const int64_t n_edges = q * k;
  const double denom = std::max(1.0, static_cast<double>(count_valid(vp, n_edges) * c));
  const double coef = grad_loss.item<double>() * 2.0 * lam / denom;
  const Norm ns = norm_of(s, st, st + c, c, eps), nt = norm_of(t, st + 2 * c, st + 3 * c, c, eps);
  auto opts = side_s[0].options();
  const double n = static_cast<double>(std::max<int64_t>(n_edges, 1));
  const float fcoef = static_cast<float>(coef);
  const float fk = static_cast<float>(k);
  std::vector<int64_t> cnt(static_cast<size_t>(m), 0);   // edges per row (every edge)
  const int64_t* ip = idx.data_ptr<int64_t>();
  for (int64_t e = 0; e < n_edges; ++e) ++cnt[ip[e]];
  for (int side = 0; side < 2; ++side) {
    if (!(side == 0 ? need_s : need_t)) continue;
    const Norm& nm = side == 0 ? ns : nt;
    const at::Tensor* cs = cache.data() + kCachePerSide * side;
    const double* ab = cs[2].data_ptr<double>();
    // mean(da), rstd * mean(da * yhat) (the factor of sum (y - mean)), gr = gamma * rstd; d gamma, d beta
    std::vector<float> mda(c), mday_rstd(c), gr(c);
    at::Tensor dgamma = at::empty({c}, opts), dbeta = at::empty({c}, opts);
    for (int64_t ch = 0; ch < c; ++ch) {
      const double sum_da = coef * ab[ch];
      const double sum_day = coef * ab[c + ch] * nm.rstd[ch];
      dgamma.data_ptr<float>()[ch] = static_cast<float>(sum_day);
      dbeta.data_ptr<float>()[ch] = static_cast<float>(sum_da);
      mda[ch] = static_cast<float>(sum_da / n);
      mday_rstd[ch] = static_cast<float>(sum_day / n * nm.rstd[ch]);
      gr[ch] = nm.gamma[ch] * nm.rstd[ch];
    }
    // d centre (per query, K edges each) and d rows (per row, cnt edges each) from their sums
    auto closed_form = [&](const at::Tensor& da, const at::Tensor& yc, int64_t len, const int64_t* count) {
      at::Tensor g = at::empty({len, c}, opts);
      float* gp = g.data_ptr<float>();
      const float* dp = da.data_ptr<float>();
      const float* yp = yc.data_ptr<float>();
      at::parallel_for(0, len, 256, [&](int64_t r0, int64_t r1) {
        for (int64_t r = r0; r < r1; ++r) {
          const float nr = count == nullptr ? fk : static_cast<float>(count[r]);
          for (int64_t ch = 0; ch < c; ++ch)
            gp[r * c + ch] = gr[ch] * (fcoef * dp[r * c + ch] - nr * mda[ch] - mday_rstd[ch] * yp[r * c + ch]);
        }
      });
      return g;
    };
    out[4 * side + 0] = closed_form(cs[3], cs[4], m, cnt.data());
    out[4 * side + 1] = closed_form(cs[0], cs[1], q, nullptr);
    out[4 * side + 2] = dgamma;
    out[4 * side + 3] = dbeta;
  }
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
  check_forward_args(side_s, side_t, idx, valid, phi);   // before the sweeps, which index rows by idx
  if (!need_s && !need_t) return std::vector<at::Tensor>(8);
  const int64_t q = idx.size(0), k = idx.size(1);
  const int64_t c = side_s[1].size(1);
  TORCH_CHECK(stats.numel() == 4 * c, "pd_edge_loss: stats must hold (4, ", c, ") values, got ", stats.sizes());
  const SideView s = view_of(side_s), t = view_of(side_t);
  const auto stats_c = stats.to(at::kDouble).contiguous();
  const double* st = stats_c.data_ptr<double>();
  const Norm ns = norm_of(s, st, st + c, c, eps), nt = norm_of(t, st + 2 * c, st + 3 * c, c, eps);
  std::vector<at::Tensor> cache;
  loss_sweep(s, t, ns, nt, idx.data_ptr<int64_t>(), valid.data_ptr<bool>(), phi.data_ptr<float>(), q, k, c,
             side_s[0].size(0), need_s, need_t, &cache);
  return pd_edge_loss_backward_cached(grad_loss, side_s, side_t, idx, valid, phi, stats, lam, eps, need_s, need_t,
                                      cache);
}

// Test hook: allow (true) or forbid the AVX2 passes; returns whether they run for C' a multiple of 8 from now on.
bool set_avx2(bool allow) {
  g_allow_avx2.store(allow);
#ifdef PCDET_PD_X86_AVX2
  return allow && cpu_has_avx2();
#else
  return false;
#endif
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
  m.def("set_avx2", &set_avx2, "test hook: allow or forbid the AVX2 sweeps; returns whether they run now",
        py::arg("allow"));
}
