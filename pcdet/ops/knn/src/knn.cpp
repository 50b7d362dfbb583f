// kNN within scans in feature space (CPU) and graph edge features.
//
// knn_in_scans works per (scan, tile of queries). The rows of a scan are centred on their mean (distances do not
// change) and the squared distances of a (query tile x row tile) block come from one GEMM, |a|^2 + |b|^2 - 2 a.b,
// in the features' dtype or, on request (a CPU with native bf16), in bf16 with float32 accumulation. These are
// screening keys only: each carries a rigorous error bound (rounding of the centring, of the bf16 copies, of the
// GEMM accumulation and output, of the norms), and a row is dropped only when its lower bound exceeds an upper
// bound of the query's k-th distance. The rows kept are ranked by the exact sum of squared differences of the
// original features (duplicate rows are exact ties, ties go to the lower row index), so the result does not depend
// on the screening precision.
//
// Thresholds: the first block is a sample of the scan; from it each query estimates a threshold that should admit
// about 1.5 k rows of the whole scan, so the rest costs one vectorised comparison per row. The estimate is checked
// at the end (at least k admitted rows must lie below it); a query whose estimate fails ranks all its scan's rows
// exactly. Should the admitted rows overflow the buffer, the query tracks its k smallest keys in a heap, and if
// many rows stay within the error margin (near-duplicate clusters) it switches to exact distances for every
// admitted row, so memory stays bounded: per thread, 4 tile^2 keys + tile (4k + 128) candidates.
//
// Float32 features screened in float32 on a CPU with AVX2 + FMA take a fused path instead of the GEMM blocks: each
// scan's rows are packed once in panels of 16, the threshold sample is every stride-th row of the whole scan
// (about 512 rows), and a register-blocked kernel computes the keys of 6 queries x 16 rows and compares them with
// the thresholds without writing them out (fused_panel, fused_scan). Same keys, bounds and admissions; the
// packed copy adds M C floats.
#include <torch/extension.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <numeric>
#include <string>
#include <utility>
#include <type_traits>
#include <vector>

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__) && !defined(__CUDACC__)
#include <immintrin.h>
#endif

#ifdef WITH_CUDA
std::vector<at::Tensor> knn_in_scans_cuda(const at::Tensor& features, const at::Tensor& batch_idx,
                                          const at::Tensor& query_index, int64_t k);
at::Tensor edge_features_forward_cuda(const at::Tensor& features, const at::Tensor& query_index,
                                      const at::Tensor& idx, bool diff);
at::Tensor edge_features_backward_cuda(const at::Tensor& grad, const at::Tensor& query_index, const at::Tensor& idx,
                                       int64_t num_rows, bool diff);
#endif

namespace {

// Ranking order of the contract: ascending distance, then ascending row index.
template <typename scalar_t>
inline bool ranks_before(scalar_t da, int64_t ia, scalar_t db, int64_t ib) {
  return da < db || (da == db && ia < ib);
}

// Sum of squared differences with four partial sums: a fixed order, so identical rows give identical values.
// This is the exact distance that ranks the kept rows (float32 with 8 or more channels: eight sums, below).
template <typename scalar_t>
inline scalar_t squared_distance_4sums(const scalar_t* a, const scalar_t* b, int64_t c) {
  scalar_t s0 = 0, s1 = 0, s2 = 0, s3 = 0;
  int64_t i = 0;
  for (; i + 4 <= c; i += 4) {
    const scalar_t d0 = a[i] - b[i], d1 = a[i + 1] - b[i + 1], d2 = a[i + 2] - b[i + 2], d3 = a[i + 3] - b[i + 3];
    s0 += d0 * d0;
    s1 += d1 * d1;
    s2 += d2 * d2;
    s3 += d3 * d3;
  }
  for (; i < c; ++i) {
    const scalar_t d0 = a[i] - b[i];
    s0 += d0 * d0;
  }
  return (s0 + s1) + (s2 + s3);
}

// float32, C >= 8: eight partial sums (channel i into sum i % 8, a separate multiply and add per channel, no FMA),
// reduced as ((s0 + s4) + (s2 + s6)) + ((s1 + s5) + (s3 + s7)), the order of an 8-lane vector reduction. The AVX2
// version performs the same operations in the same order, so the value does not depend on the CPU; fewer than 8
// channels keep the four sums above (the k-d tree's order for C <= 3).
inline float reduce_lanes8(const float* s) {
  return ((s[0] + s[4]) + (s[2] + s[6])) + ((s[1] + s[5]) + (s[3] + s[7]));
}

inline float squared_distance_f32_scalar(const float* a, const float* b, int64_t c) {
  float s[8] = {0, 0, 0, 0, 0, 0, 0, 0};
  int64_t i = 0;
  for (; i + 8 <= c; i += 8)
    for (int l = 0; l < 8; ++l) {
      const float d = a[i + l] - b[i + l];
      s[l] += d * d;
    }
  for (int l = 0; i + l < c; ++l) {
    const float d = a[i + l] - b[i + l];
    s[l] += d * d;
  }
  return reduce_lanes8(s);
}

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__) && !defined(__CUDACC__)
#define PCDET_KNN_X86_AVX2 1
// target avx2 without fma: the multiply and the add stay separate (no contraction), as in the scalar version. Both
// rely on the build enabling no FMA globally (setup.py passes no -march); test_exact_distance_is_the_documented_sum
// fails if a build contracts either.
__attribute__((target("avx2"))) float squared_distance_f32_avx2(const float* a, const float* b, int64_t c) {
  __m256 acc = _mm256_setzero_ps();
  int64_t i = 0;
  for (; i + 8 <= c; i += 8) {
    const __m256 d = _mm256_sub_ps(_mm256_loadu_ps(a + i), _mm256_loadu_ps(b + i));
    acc = _mm256_add_ps(acc, _mm256_mul_ps(d, d));
  }
  alignas(32) float s[8];
  _mm256_store_ps(s, acc);
  for (int l = 0; i + l < c; ++l) {
    const float d = a[i + l] - b[i + l];
    s[l] += d * d;
  }
  return reduce_lanes8(s);
}
#endif

#ifdef PCDET_KNN_X86_AVX2
inline bool cpu_has_avx2() {
  static const bool ok = __builtin_cpu_supports("avx2");
  return ok;
}
#endif

template <typename scalar_t>
inline scalar_t squared_distance(const scalar_t* a, const scalar_t* b, int64_t c) {
  return squared_distance_4sums(a, b, c);
}

template <>
inline float squared_distance<float>(const float* a, const float* b, int64_t c) {
  if (c < 8) return squared_distance_4sums(a, b, c);
#ifdef PCDET_KNN_X86_AVX2
  if (cpu_has_avx2()) return squared_distance_f32_avx2(a, b, c);
#endif
  return squared_distance_f32_scalar(a, b, c);
}

// Reorders x[0 .. n) so that x[rank] is the element of that rank and no element before it is greater, none after
// it smaller (the contract of std::nth_element, for a type with a strict weak order by <; 0 <= rank < n). Branch-free
// Lomuto partitions around a median of three: the keys selected here (a few hundred distances per query, close to
// each other) make every comparison of std::nth_element unpredictable, and its mispredictions cost more than the
// comparisons. A range whose pivot is its minimum splits off the elements equal to it, so every pass shrinks the
// range; after 64 passes (never seen; adversarial orders) std::nth_element takes over.
template <typename T>
void select_nth(T* x, int64_t n, int64_t rank) {
  int64_t lo = 0, hi = n;
  for (int pass = 0; hi - lo > 24; ++pass) {
    if (pass == 64) {
      std::nth_element(x + lo, x + rank, x + hi);
      return;
    }
    const T a = x[lo], b = x[lo + (hi - lo) / 2], c = x[hi - 1];
    const T pivot = std::max(std::min(a, b), std::min(std::max(a, b), c));
    // [lo, s) < pivot <= [s, hi): x[i] and x[s] swap, and s advances when x[i] was below the pivot
    int64_t s = lo;
    for (int64_t i = lo; i < hi; ++i) {
      const T v = x[i];
      const bool below = v < pivot;
      x[i] = x[s];
      x[s] = v;
      s += below;
    }
    if (s == lo) {  // the pivot is the range's minimum: [lo, s) == pivot < [s, hi)
      for (int64_t i = lo; i < hi; ++i) {
        const T v = x[i];
        const bool equal = !(pivot < v);
        x[i] = x[s];
        x[s] = v;
        s += equal;
      }
      if (rank < s) return;
      lo = s;
      continue;
    }
    if (rank < s) {
      hi = s;
    } else {
      lo = s;
    }
  }
  for (int64_t i = lo + 1; i < hi; ++i) {  // insertion sort of the last few
    const T v = x[i];
    int64_t j = i;
    for (; j > lo && v < x[j - 1]; --j) x[j] = x[j - 1];
    x[j] = v;
  }
}

// The kk smallest of n distinct keys with a clear top bit (packed float32 distances), ascending, into out[0 .. kk):
// each key's rank is the number of keys below it, counted with AVX2 compares (n^2 / 4 of them, no branch), and a
// key of rank below kk goes to that position. At a few hundred keys this is about three times faster than
// std::sort, whose comparisons of close distances mispredict; returns false (nothing written) without AVX2 or when
// n exceeds kRankSortMax, where the caller sorts.
constexpr int64_t kRankSortMax = 384;
#ifdef PCDET_KNN_X86_AVX2
__attribute__((target("avx2"))) void rank_sort_avx2(const uint64_t* keys, int64_t n, int64_t kk, uint64_t* out) {
  alignas(32) uint64_t pad[kRankSortMax + 4];
  std::memcpy(pad, keys, n * sizeof(uint64_t));
  const int64_t nv = (n + 3) / 4;
  for (int64_t j = n; j < nv * 4; ++j) pad[j] = std::numeric_limits<int64_t>::max();  // above every key
  for (int64_t i = 0; i < n; ++i) {
    const __m256i vi = _mm256_set1_epi64x(static_cast<int64_t>(pad[i]));
    __m256i below0 = _mm256_setzero_si256(), below1 = _mm256_setzero_si256();
    int64_t v = 0;
    for (; v + 2 <= nv; v += 2) {  // cmpgt gives -1 where keys[j] < keys[i]
      below0 = _mm256_sub_epi64(below0, _mm256_cmpgt_epi64(vi, _mm256_load_si256(reinterpret_cast<const __m256i*>(pad + 4 * v))));
      below1 = _mm256_sub_epi64(below1, _mm256_cmpgt_epi64(vi, _mm256_load_si256(reinterpret_cast<const __m256i*>(pad + 4 * v + 4))));
    }
    if (v < nv)
      below0 = _mm256_sub_epi64(below0, _mm256_cmpgt_epi64(vi, _mm256_load_si256(reinterpret_cast<const __m256i*>(pad + 4 * v))));
    alignas(32) int64_t lanes[4];
    _mm256_store_si256(reinterpret_cast<__m256i*>(lanes), _mm256_add_epi64(below0, below1));
    const int64_t rank = (lanes[0] + lanes[1]) + (lanes[2] + lanes[3]);
    if (rank < kk) out[rank] = pad[i];
  }
}
#endif

inline bool rank_sort(const uint64_t* keys, int64_t n, int64_t kk, uint64_t* out) {
#ifdef PCDET_KNN_X86_AVX2
  if (n <= kRankSortMax && cpu_has_avx2()) {
    rank_sort_avx2(keys, n, kk, out);
    return true;
  }
#endif
  return false;
}

// Counting sort of items by their (non-negative) key: returns (start offsets (num_keys + 1), items by key).
void group_by_key(const int64_t* key, int64_t n, int64_t num_keys, std::vector<int64_t>& start,
                  std::vector<int64_t>& order) {
  start.assign(num_keys + 1, 0);
  for (int64_t i = 0; i < n; ++i) ++start[key[i] + 1];
  std::partial_sum(start.begin(), start.end(), start.begin());
  std::vector<int64_t> fill(start.begin(), start.end() - 1);
  order.resize(n);
  for (int64_t i = 0; i < n; ++i) order[fill[key[i]]++] = i;
}

// ---------------------------------------------------------------- fused screening of one block row
// The positions j (ascending) whose lower key (low_key) is at most t, without writing the keys: past the sample
// block almost every row fails, so a row costs one vector compare per 8 keys. The caller re-checks every hit with
// low_key and its current threshold, so a superset is enough. The vector code performs the scalar formula's
// operations in the same order (no FMA); t is still loosened by 8 ulp, as a margin should a compiler contract.
template <typename st>
inline st low_key(st sj, st nbj, st a, st uo2, st* key) {
  const st kj = (nbj + a) - 2 * sj;
  *key = kj;
  return kj - uo2 * std::fabs(sj);
}

inline float dot_value(const float* s, int64_t j) { return s[j]; }
inline double dot_value(const double* s, int64_t j) { return s[j]; }
inline float dot_value(const uint16_t* s, int64_t j) {
  const uint32_t bits = static_cast<uint32_t>(s[j]) << 16;
  float v;
  std::memcpy(&v, &bits, sizeof(float));
  return v;
}

// Positions j0 <= j < n, appended to hit from hit[nh]; returns the new count.
template <typename dot_t, typename st>
int64_t gather_hits_scalar(const dot_t* s, const st* nb, st a, st uo2, int64_t j0, int64_t n, st t, int32_t* hit,
                           int64_t nh) {
  for (int64_t j = j0; j < n; ++j) {  // branch-free: hits are rare and scattered
    st key;
    hit[nh] = static_cast<int32_t>(j);
    nh += low_key<st>(dot_value(s, j), nb[j], a, uo2, &key) <= t;
  }
  return nh;
}

#ifdef PCDET_KNN_X86_AVX2

template <typename dot_t>
__attribute__((target("avx2"))) int64_t gather_hits_avx2(const dot_t* s, const float* nb, float a, float uo2,
                                                        int64_t n, float t, int32_t* hit) {
  const __m256 va = _mm256_set1_ps(a), vu = _mm256_set1_ps(uo2), vt = _mm256_set1_ps(t);
  const __m256 abs_mask = _mm256_castsi256_ps(_mm256_set1_epi32(0x7fffffff));
  int64_t nh = 0, j = 0;
  for (; j + 8 <= n; j += 8) {
    __m256 sj;
    if constexpr (std::is_same<dot_t, uint16_t>::value) {  // bf16: the high half of a float
      const __m128i raw = _mm_loadu_si128(reinterpret_cast<const __m128i*>(s + j));
      sj = _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(raw), 16));
    } else {
      sj = _mm256_loadu_ps(s + j);
    }
    const __m256 kj = _mm256_sub_ps(_mm256_add_ps(_mm256_loadu_ps(nb + j), va), _mm256_add_ps(sj, sj));
    const __m256 low = _mm256_sub_ps(kj, _mm256_mul_ps(vu, _mm256_and_ps(sj, abs_mask)));
    unsigned mask = static_cast<unsigned>(_mm256_movemask_ps(_mm256_cmp_ps(low, vt, _CMP_LE_OQ)));
    while (mask) {
      hit[nh++] = static_cast<int32_t>(j + __builtin_ctz(mask));
      mask &= mask - 1;
    }
  }
  return gather_hits_scalar<dot_t, float>(s, nb, a, uo2, j, n, t, hit, nh);
}

// ---------------------------------------------------------------- fused GEMM + screening (float32, AVX2 + FMA)
// The rows of a scan are packed in panels of kFuseR: panel p holds its rows' centred
// features channel-major (element (ch, r) at p * kFuseR * C + ch * kFuseR + r); padded rows are zero with norm NaN.
// For kFuseQ queries and one panel the kFuseQ * kFuseR dot products stay in registers (12 accumulators), their
// lower keys are compared with the queries' thresholds there (the formula of low_key, same operation order), and
// only a panel with a hit writes its dots out, for the caller's re-check with low_key. The dots are accumulated
// with FMA over the channels in order, which the GEMM error bound (any order, with or without FMA) covers.
constexpr int64_t kFuseQ = 6, kFuseR = 16;  // fused_scan packs the masks of 6 queries x 16 rows in two words
#define PCDET_KNN_FUSED 1

// qa: kFuseQ query rows of c floats (stride c); nb: the panel's kFuseR row norms; an, t: the queries' norms and
// (loosened) thresholds. Writes masks[i] (bit r: row r of the panel is a hit of query i) and, when any bit is set,
// dots[i * kFuseR + r]. Returns whether any bit is set.
__attribute__((target("avx2,fma"))) bool fused_panel(const float* qa, int64_t c, const float* panel, const float* nb,
                                                     const float* an, float uo2, const float* t, uint32_t* masks,
                                                     float* dots) {
  __m256 acc[kFuseQ][2];
#pragma GCC unroll 6
  for (int i = 0; i < kFuseQ; ++i) acc[i][0] = acc[i][1] = _mm256_setzero_ps();
  for (int64_t ch = 0; ch < c; ++ch) {
    const __m256 b0 = _mm256_loadu_ps(panel + ch * kFuseR), b1 = _mm256_loadu_ps(panel + ch * kFuseR + 8);
#pragma GCC unroll 6
    for (int i = 0; i < kFuseQ; ++i) {
      const __m256 a = _mm256_broadcast_ss(qa + i * c + ch);
      acc[i][0] = _mm256_fmadd_ps(a, b0, acc[i][0]);
      acc[i][1] = _mm256_fmadd_ps(a, b1, acc[i][1]);
    }
  }
  const __m256 vu = _mm256_set1_ps(uo2), nb0 = _mm256_loadu_ps(nb), nb1 = _mm256_loadu_ps(nb + 8);
  const __m256 abs_mask = _mm256_castsi256_ps(_mm256_set1_epi32(0x7fffffff));
  uint32_t any = 0;
#pragma GCC unroll 6
  for (int i = 0; i < kFuseQ; ++i) {
    const __m256 va = _mm256_set1_ps(an[i]), vt = _mm256_set1_ps(t[i]);
    const __m256 k0 = _mm256_sub_ps(_mm256_add_ps(nb0, va), _mm256_add_ps(acc[i][0], acc[i][0]));
    const __m256 k1 = _mm256_sub_ps(_mm256_add_ps(nb1, va), _mm256_add_ps(acc[i][1], acc[i][1]));
    const __m256 l0 = _mm256_sub_ps(k0, _mm256_mul_ps(vu, _mm256_and_ps(acc[i][0], abs_mask)));
    const __m256 l1 = _mm256_sub_ps(k1, _mm256_mul_ps(vu, _mm256_and_ps(acc[i][1], abs_mask)));
    masks[i] = static_cast<uint32_t>(_mm256_movemask_ps(_mm256_cmp_ps(l0, vt, _CMP_LE_OQ))) |
               (static_cast<uint32_t>(_mm256_movemask_ps(_mm256_cmp_ps(l1, vt, _CMP_LE_OQ))) << 8);
    any |= masks[i];
  }
  if (!any) return false;
#pragma GCC unroll 6
  for (int i = 0; i < kFuseQ; ++i) {
    _mm256_storeu_ps(dots + i * kFuseR, acc[i][0]);
    _mm256_storeu_ps(dots + i * kFuseR + 8, acc[i][1]);
  }
  return true;
}

inline bool fused_supported() {
  static const bool ok = cpu_has_avx2() && __builtin_cpu_supports("fma");
  return ok;
}
#endif

// Hits of one block row (see above); t is the caller's current threshold.
template <typename dot_t, typename st>
int64_t gather_hits(const dot_t* s, const st* nb, st a, st uo2, int64_t n, st t, int32_t* hit) {
  const st loose = t + std::fabs(t) * (8 * std::numeric_limits<st>::epsilon());
#ifdef PCDET_KNN_X86_AVX2
  if constexpr (std::is_same<st, float>::value) {
    if (cpu_has_avx2()) return gather_hits_avx2<dot_t>(s, nb, a, uo2, n, loose, hit);
  }
#endif
  return gather_hits_scalar<dot_t, st>(s, nb, a, uo2, 0, n, loose, hit, 0);
}

// ---------------------------------------------------------------- error bounds
// Notation: a, b the centred query / row (exact), a', b' their rounded (centred, then low-precision) copies,
// d = |a - b|^2 the true distance, d' = |a' - b'|^2, s~ the GEMM's a'.b'.
//   |a' - a| <= u' |a| per element, so |(a'-b') - (a-b)| <= w = u' (|a| + |b|): sqrt(d') is within w of sqrt(d);
//   key = fl(|b'|^2~ + |a'|^2~ - 2 s~) is within e0 + uo2 |s~| of d', with e0 = 2 (gamma_2C + 2 u) (|a'| + |b'|)^2
//   (norms, GEMM accumulation and the key's two additions; factor 2 as a safety margin) and uo2 |s~| the rounding
//   of the GEMM output (|s~| <= s_max = |a'| |b'| (1 + uo2)).
// The exact distance delta (squared_distance, in the features' dtype) is within rho d of d.
template <typename st>
struct Bounds {
  st u, w, e0, uo2, s_max, rho;
};

template <typename st>
inline st inflate(st x, st u) {  // x (1 + 16 u) + tiny: covers the rounding of the bound arithmetic itself
  return x + x * (16 * u) + std::numeric_limits<st>::min();
}

// Upper bound on d of a row with this key (|s~| at most s_max).
template <typename st>
inline st upper_of(st key, const Bounds<st>& b) {
  const st dp = std::max<st>(key + b.uo2 * b.s_max + b.e0, st(0));
  const st r = std::sqrt(dp) + b.w;
  return inflate(r * r, b.u);
}

// Admission threshold on the lower keys given an upper bound t_up of the k-th best true distance: a row that can
// reach the final k has d <= t_up (1 + rho) / (1 - rho), hence low = key - uo2 |s~| <= (sqrt(that) + w)^2 + e0.
template <typename st>
inline st threshold_of(st t_up, const Bounds<st>& b) {
  const st dmax = t_up * (1 + 3 * b.rho);
  const st r = std::sqrt(std::max<st>(dmax, st(0))) + b.w;
  return inflate(r * r + b.e0, b.u);
}

template <typename st>
struct Candidate {
  st low, key;    // lower key of the row (see threshold_of) and its screening key
  double exact;   // exact distance once computed, NaN before
  int64_t row;
};

// (exact distance, row) order of candidates; a function object, so that the sorts inline it (a function pointer
// made every comparison an indirect call)
struct ExactBefore {
  template <typename st>
  bool operator()(const Candidate<st>& x, const Candidate<st>& y) const {
    return ranks_before(x.exact, x.row, y.exact, y.row);
  }
};

// One query's search state: the admitted rows, and a max-heap of the k smallest keys admitted, whose top gives
// the admission threshold. Exact regime (after a compaction that freed too little): the threshold comes from the
// k-th exact distance of the rows kept, and every compaction keeps exactly the k best.
template <typename scalar_t, typename st>
struct QuerySearch {
  Candidate<st>* cand;
  st* heap;
  int64_t n = 0, heap_n = 0, kk = 0, cap = 0;
  st thr = std::numeric_limits<st>::infinity();
  bool exact_mode = false, heap_dirty = false;
  bool fixed = false;   // threshold estimated from a sample of rows, checked in finish()
  st tau = std::numeric_limits<st>::infinity();
  Bounds<st> b;
  const scalar_t* fq;  // the query's features (exact distances)

  void compute_exact(const scalar_t* feats, int64_t c) {
    constexpr int64_t kAhead = 8;  // rows are scattered: prefetch a few ahead so their loads overlap
    for (int64_t t = 0; t < std::min(n, kAhead); ++t) __builtin_prefetch(feats + cand[t].row * c);
    for (int64_t t = 0; t < n; ++t) {
      if (t + kAhead < n) {
        const scalar_t* p = feats + cand[t + kAhead].row * c;
        for (int64_t off = 0; off < c; off += 64 / int64_t(sizeof(scalar_t))) __builtin_prefetch(p + off);
      }
      if (std::isnan(cand[t].exact)) cand[t].exact = double(squared_distance(fq, feats + cand[t].row * c, c));
    }
  }

  // Restores the max-heap after heap[0] was replaced. Branch-free child choice (heap[heap_n] holds -inf, so the
  // right child of the last parent is never chosen); the only unpredictable branch is the exit.
  void sift_down_top() {
    int64_t i = 0;
    const st v = heap[0];
    for (int64_t child = 1; child < heap_n; child = 2 * i + 1) {
      child += heap[child + 1] > heap[child];
      if (!(heap[child] > v)) break;
      heap[i] = heap[child];
      i = child;
    }
    heap[i] = v;
  }

  // The threshold after heap[0] changed (deferred to the end of a chunk: a stale threshold is only looser).
  void refresh_threshold() {
    if (heap_dirty) thr = std::min(thr, threshold_of(upper_of(heap[0], b), b));
    heap_dirty = false;
  }

  // Keep the kk best by exact distance; the threshold follows the k-th of them (a row that can still enter has an
  // exact distance at most that, hence d <= kth / (1 - rho)).
  void keep_exact_best(const scalar_t* feats, int64_t c) {
    compute_exact(feats, c);
    if (n > kk) std::nth_element(cand, cand + kk - 1, cand + n, ExactBefore());
    n = std::min(n, kk);
    double kth = cand[0].exact;
    for (int64_t t = 1; t < n; ++t) kth = std::max(kth, cand[t].exact);
    if (n == kk) thr = std::min(thr, threshold_of(st(kth * (1 + 2 * double(b.rho))), b));
  }

  void drop_excluded() {  // branch-free compaction: about half the rows go, unpredictably
    int64_t m = 0;
    for (int64_t t = 0; t < n; ++t) {
      const Candidate<st> x = cand[t];
      cand[m] = x;
      m += x.low <= thr;
    }
    n = m;
  }

  void push_key(st key) {
    if (heap_n < kk) {
      heap[heap_n++] = key;
      std::push_heap(heap, heap + heap_n);
      heap[heap_n] = -std::numeric_limits<st>::infinity();
      heap_dirty = heap_n == kk;
    } else if (key < heap[0]) {
      heap[0] = key;
      sift_down_top();
      heap_dirty = true;
    }
  }

  void admit(st low, st key, int64_t row, const scalar_t* feats, int64_t c) {
    cand[n++] = {low, key, std::numeric_limits<double>::quiet_NaN(), row};
    if (!exact_mode && !fixed) {
      if (heap_n < kk) {
        heap[heap_n++] = key;
        std::push_heap(heap, heap + heap_n);
        heap[heap_n] = -std::numeric_limits<st>::infinity();
        heap_dirty = heap_n == kk;
      } else if (key < heap[0]) {
        heap[0] = key;
        sift_down_top();
        heap_dirty = true;
      }
    }
    if (n < cap) return;
    if (fixed) {  // the estimate admits too many rows: track the k smallest keys from here on
      fixed = false;
      for (int64_t t = 0; t < n; ++t) push_key(cand[t].key);
    }
    if (!exact_mode) {
      refresh_threshold();
      drop_excluded();
      if (n <= cap - (cap - kk) / 4) return;
      exact_mode = true;  // too many rows within the error margin: rank them exactly from now on
    }
    keep_exact_best(feats, c);
  }

  // The kk nearest rows, ascending (exact distance, row), in cand[0 .. kk); false when the estimated threshold
  // turns out to have been too low (fewer than kk rows below it: then the caller ranks every row).
  // rows_fit_32: every row index is below 2^32 (the packed ranking of float32 distances); packed: its buffer.
  bool finish(const scalar_t* feats, int64_t c, std::vector<st>& tmp, bool rows_fit_32,
              std::vector<uint64_t>& packed) {
    if (fixed) {
      if (n < kk) return false;
      tmp.resize(n);
      for (int64_t t = 0; t < n; ++t) tmp[t] = cand[t].key;
      select_nth(tmp.data(), n, kk - 1);
      // every row that can reach the final k has low <= threshold_of(upper_of(k-th key)): all of them were admitted
      // if that is within the threshold that admitted them
      const st need = threshold_of(upper_of(tmp[kk - 1], b), b);
      if (need > tau) return false;
      thr = need;
      drop_excluded();
    } else if (!exact_mode) {
      refresh_threshold();
      drop_excluded();
    }
    compute_exact(feats, c);
    if constexpr (std::is_same<scalar_t, float>::value) {
      if (rows_fit_32) {
        // float32 distances are non-negative (sums of squares: +0 at the least, never -0 or NaN), so they order
        // like their bit patterns: one 64-bit key (bits << 32 | row) per candidate ranks by (distance, row) with
        // integer compares. Only the rows are needed from here on.
        packed.resize(n);
        for (int64_t t = 0; t < n; ++t) {
          const float d = static_cast<float>(cand[t].exact);
          uint32_t bits;
          std::memcpy(&bits, &d, sizeof(bits));
          packed[t] = (static_cast<uint64_t>(bits) << 32) | static_cast<uint64_t>(cand[t].row);
        }
        const int64_t m = std::min(n, kk);
        uint64_t sorted_keys[kRankSortMax];
        const uint64_t* ordered = sorted_keys;
        if (!rank_sort(packed.data(), n, m, sorted_keys)) {
          if (n > kk) select_nth(packed.data(), n, kk - 1);
          std::sort(packed.begin(), packed.begin() + m);
          ordered = packed.data();
        }
        for (int64_t t = 0; t < m; ++t) cand[t].row = static_cast<int64_t>(ordered[t] & 0xffffffffu);
        return true;
      }
    }
    if (n > kk) std::nth_element(cand, cand + kk - 1, cand + n, ExactBefore());
    std::sort(cand, cand + std::min(n, kk), ExactBefore());
    return true;
  }
};

// The rank-th smallest of x[0 .. n) (1 <= rank <= n). A small rank keeps a max-heap of the rank smallest so far
// (most values cost one comparison with its top); a larger one selects on a copy in O(n), since the heap costs
// about rank ln(n / rank) unpredictable sifts (at k 128 these dominated whole searches).
template <typename st>
st kth_smallest(const st* x, int64_t n, int64_t rank, std::vector<st>& buf) {
  if (rank * 16 < n) {
    buf.assign(x, x + rank);
    std::make_heap(buf.begin(), buf.end());
    for (int64_t j = rank; j < n; ++j) {
      if (!(x[j] < buf.front())) continue;
      std::pop_heap(buf.begin(), buf.end());
      buf.back() = x[j];
      std::push_heap(buf.begin(), buf.end());
    }
    return buf.front();
  }
  buf.assign(x, x + n);
  select_nth(buf.data(), n, rank - 1);
  return buf[rank - 1];
}

#ifdef PCDET_KNN_FUSED
// All rows of a scan for a tile of tq queries (their searches, centred features qlow (tq, C) and norms qn):
// num_panels packed panels (fused_panel) holding the scan's rows in order, norms nb; a hit is re-checked with low_key against the query's current threshold and admitted, as screen_row does. Rows are
// visited in blocks of panels that stay in the L2 cache, each block against every query of the tile; for each
// query they are admitted in ascending row order, and its threshold is refreshed after each panel's hits.
template <typename SearchT>
void fused_scan(SearchT* search, int64_t tq, const float* qlow, const float* qn, int64_t c, const float* panels,
                const float* panel_norm, int64_t num_panels, const int64_t* scan_rows, const float* nb,
                float uo2, const float* feats, std::vector<float>& qpad, std::vector<float>& qnpad) {
  const int64_t groups = (tq + kFuseQ - 1) / kFuseQ;
  qpad.assign(groups * kFuseQ * c, 0.0f);
  std::copy(qlow, qlow + tq * c, qpad.begin());
  qnpad.assign(groups * kFuseQ, 0.0f);
  std::copy(qn, qn + tq, qnpad.begin());
  const int64_t block = std::max<int64_t>(1, (192 * 1024) / (kFuseR * std::max<int64_t>(c, 1) * int64_t(sizeof(float))));
  auto loosen = [](float t) { return t + std::fabs(t) * (8 * std::numeric_limits<float>::epsilon()); };
  float t[kFuseQ], dots[kFuseQ * kFuseR];
  uint32_t masks[kFuseQ];
  for (int64_t pb = 0; pb < num_panels; pb += block) {
    const int64_t pe = std::min(num_panels, pb + block);
    for (int64_t g = 0; g < groups; ++g) {
      const float* qa = qpad.data() + g * kFuseQ * c;
      for (int64_t i = 0; i < kFuseQ; ++i)
        t[i] = g * kFuseQ + i < tq ? loosen(search[g * kFuseQ + i].thr) : -std::numeric_limits<float>::infinity();
      for (int64_t p = pb; p < pe; ++p) {
        if (!fused_panel(qa, c, panels + p * kFuseR * c, panel_norm + p * kFuseR, qnpad.data() + g * kFuseQ, uo2, t,
                         masks, dots))
          continue;
        // the hits of the kFuseQ queries as two bit sets (bit 16 i + r: row r of query i), so that the loop's
        // only unpredictable branch is its exit, not one per query; queries go in order, each query's rows too
        const uint64_t lo_bits = uint64_t(masks[0]) | uint64_t(masks[1]) << 16 | uint64_t(masks[2]) << 32 |
                                 uint64_t(masks[3]) << 48;
        const uint64_t hi_bits = uint64_t(masks[4]) | uint64_t(masks[5]) << 16;
        for (int half = 0; half < 2; ++half) {
          for (uint64_t m = half ? hi_bits : lo_bits; m; m &= m - 1) {
            const int64_t bit = __builtin_ctzll(m), i = 4 * half + (bit >> 4), r = bit & 15, j = p * kFuseR + r;
            auto& qs = search[g * kFuseQ + i];
            float key_j;
            const float low_j = low_key<float>(dots[i * kFuseR + r], nb[j], qnpad[g * kFuseQ + i], uo2, &key_j);
            if (low_j <= qs.thr) qs.admit(low_j, key_j, scan_rows[j], feats, c);
          }
        }
        for (int64_t i = 0; i < kFuseQ && g * kFuseQ + i < tq; ++i) {
          auto& qs = search[g * kFuseQ + i];
          qs.refresh_threshold();
          t[i] = loosen(qs.thr);
        }
      }
    }
  }
}
#endif

constexpr int64_t kSampleTiles = 4;  // the threshold-estimating first block has this many tiles of rows
constexpr int64_t kEstimateKeys = 512;

template <typename scalar_t>
void knn_cpu_impl(const at::Tensor& features, const at::Tensor& batch_idx, const at::Tensor& query_index, int64_t k,
                  int64_t tile, bool low_precision, at::Tensor& out_idx, at::Tensor& out_valid) {
  // screening type: float for float32 / bf16 keys, double for float64 features
  using st = typename std::conditional<std::is_same<scalar_t, double>::value, double, float>::type;
  const int64_t m = features.size(0), c = features.size(1), q = query_index.size(0);
  const int64_t* bidx = batch_idx.data_ptr<int64_t>();
  const int64_t* qidx = query_index.data_ptr<int64_t>();
  const int64_t num_scans = m ? *std::max_element(bidx, bidx + m) + 1 : 0;
  const bool bf16 = low_precision && std::is_same<scalar_t, float>::value;

  std::vector<int64_t> row_start, rows;
  group_by_key(bidx, m, num_scans, row_start, rows);
  std::vector<int64_t> query_scan(q);
  for (int64_t i = 0; i < q; ++i) query_scan[i] = bidx[qidx[i]];
  std::vector<int64_t> query_start, query_pos;
  group_by_key(query_scan.data(), q, num_scans, query_start, query_pos);

  // Rows of a scan as one contiguous block: free when batch_idx is sorted, else one gathered copy (M, C).
  const bool sorted = std::is_sorted(bidx, bidx + m);
  at::Tensor rows_t = at::from_blob(rows.data(), {m}, at::TensorOptions().dtype(at::kLong)).clone();
  at::Tensor scan_feats = sorted ? features : features.index_select(0, rows_t);
  const scalar_t* feats = features.data_ptr<scalar_t>();

  // Per scan: the centred rows in the screening precision, their squared norms and the largest norm.
  const auto low_dtype = bf16 ? at::kBFloat16 : features.scalar_type();
  const auto st_dtype = std::is_same<st, double>::value ? at::kDouble : at::kFloat;
  std::vector<at::Tensor> scan_mean(num_scans), scan_low(num_scans), scan_norm(num_scans);
  std::vector<double> scan_bmax(num_scans, 0.0);
  for (int64_t s = 0; s < num_scans; ++s) {
    const int64_t r0 = row_start[s], r1 = row_start[s + 1];
    if (r0 == r1) continue;
    at::Tensor block = scan_feats.narrow(0, r0, r1 - r0);
    scan_mean[s] = block.to(at::kDouble).mean(0).to(features.scalar_type());
    scan_low[s] = (block - scan_mean[s]).to(low_dtype).contiguous();
    scan_norm[s] = scan_low[s].to(st_dtype).pow(2).sum(1).contiguous();
    scan_bmax[s] = std::sqrt(scan_norm[s].max().template item<double>());
  }

  // Fused GEMM + screening for float32 features screened in float32 on an AVX2 + FMA CPU: each scan's rows packed
  // in panels (fused_panel); the other cases (float64, bf16 screening, other CPUs) use at::mm blocks and
  // gather_hits.
  bool fused = false;
  std::vector<std::vector<float>> scan_panels(num_scans), scan_panel_norm(num_scans);
#ifdef PCDET_KNN_FUSED
  fused = std::is_same<scalar_t, float>::value && !bf16 && fused_supported();
  if (fused) {
    for (int64_t s = 0; s < num_scans; ++s) {
      const int64_t n_rows = row_start[s + 1] - row_start[s];
      const int64_t panels = (n_rows + kFuseR - 1) / kFuseR;
      if (panels == 0) continue;
      const float* low = scan_low[s].template data_ptr<float>();
      const float* nrm = scan_norm[s].template data_ptr<float>();
      std::vector<float>& pk = scan_panels[s];
      std::vector<float>& pn = scan_panel_norm[s];
      pk.assign(panels * kFuseR * c, 0.0f);
      // padded rows: norm NaN, so that their lower key never passes a threshold (not even +inf)
      pn.assign(panels * kFuseR, std::numeric_limits<float>::quiet_NaN());
      for (int64_t j = 0; j < n_rows; ++j) {
        const int64_t p = j / kFuseR, r = j % kFuseR;
        for (int64_t ch = 0; ch < c; ++ch) pk[(p * c + ch) * kFuseR + r] = low[j * c + ch];
        pn[p * kFuseR + r] = nrm[j];
      }
    }
  }
#endif

  at::Tensor qrows_t = at::empty({q}, at::TensorOptions().dtype(at::kLong));
  int64_t* qrows = qrows_t.data_ptr<int64_t>();
  for (int64_t i = 0; i < q; ++i) qrows[i] = qidx[query_pos[i]];

  struct Work {
    int64_t scan, q0, q1;
  };
  std::vector<Work> work;
  for (int64_t s = 0; s < num_scans; ++s)
    for (int64_t q0 = query_start[s]; q0 < query_start[s + 1]; q0 += tile)
      work.push_back({s, q0, std::min(q0 + tile, query_start[s + 1])});

  // unit roundoffs: u of the screening type (also the accumulation of norms and GEMM), the low-precision copy,
  // the GEMM output; rho of the exact distance
  const double u = std::is_same<st, double>::value ? std::ldexp(1.0, -53) : std::ldexp(1.0, -24);
  const double u_low = bf16 ? std::ldexp(1.0, -8) : 0.0;
  const double u_prime = u + u_low + u * u_low;
  const double u_out = bf16 ? std::ldexp(1.0, -8) : u;
  auto gamma = [&](double n) { return n * u / (1.0 - n * u); };
  const double norm_up = 1.0 + gamma(double(c) + 2.0);   // sqrt of a computed squared norm -> bound of the norm
  const double rho = 2.0 * (3.0 * u + gamma(double(c) / 4.0 + 2.0));
  const double uo2 = 2.0 * u_out / (1.0 - u_out) * 1.01;

  int64_t* oidx = out_idx.data_ptr<int64_t>();
  bool* ovalid = out_valid.data_ptr<bool>();
  const bool rows_fit_32 = m <= (int64_t(1) << 32);
  at::parallel_for(0, static_cast<int64_t>(work.size()), 1, [&](int64_t wb, int64_t we) {
    std::vector<Candidate<st>> cand_buf;
    std::vector<st> heap_buf, key(kSampleTiles * tile), tmp;
    std::vector<int32_t> hit(kSampleTiles * tile + 1);  // gather_hits writes one past its last hit
    std::vector<Candidate<st>> ranked;
    std::vector<QuerySearch<scalar_t, st>> search;
    std::vector<float> qpad, qnpad;  // the fused path's query tile, padded to a multiple of kFuseQ
    std::vector<uint64_t> packed;
    for (int64_t w = wb; w < we; ++w) {
      const Work& job = work[w];
      const int64_t tq = job.q1 - job.q0;
      const int64_t r_begin = row_start[job.scan], r_end = row_start[job.scan + 1];
      const int64_t kk = std::min(k, r_end - r_begin);
      const int64_t cap = 4 * kk + 128;
      cand_buf.resize(tq * cap);
      heap_buf.resize(tq * (kk + 1));
      search.assign(tq, QuerySearch<scalar_t, st>());
      at::Tensor qsel = qrows_t.narrow(0, job.q0, tq);
      at::Tensor qlow = (features.index_select(0, qsel) - scan_mean[job.scan]).to(low_dtype).contiguous();
      at::Tensor qnorm = qlow.to(st_dtype).pow(2).sum(1).contiguous();
      const st* qn = qnorm.template data_ptr<st>();
      const st* nb_all = scan_norm[job.scan].template data_ptr<st>();
      const double bp = scan_bmax[job.scan] * norm_up;         // >= |b'| of every row of the scan
      for (int64_t a = 0; a < tq; ++a) {
        QuerySearch<scalar_t, st>& qs = search[a];
        qs.cand = cand_buf.data() + a * cap;
        qs.heap = heap_buf.data() + a * (kk + 1);
        qs.kk = kk;
        qs.cap = cap;
        qs.fq = feats + qrows[job.q0 + a] * c;
        const double ap = std::sqrt(double(qn[a])) * norm_up;  // >= |a'|
        qs.b.u = st(u);
        qs.b.w = st(u_prime * (ap + bp) / (1.0 - u_prime) * (1.0 + 4.0 * u));  // |a| <= |a'| / (1 - u')
        qs.b.e0 = st(2.0 * (gamma(2.0 * double(c)) + 2.0 * u) * (ap + bp) * (ap + bp));
        qs.b.uo2 = st(uo2);
        qs.b.s_max = st(ap * bp * (1.0 + uo2));
        qs.b.rho = st(rho);
      }
      // The first block is a sample of `sample` rows: each query estimates from it a threshold that should admit
      // about 1.5 k rows of the whole scan (with three standard deviations to spare), so the rest of the scan
      // costs one comparison per row and no heap work; finish() checks the estimate, and a query whose estimate
      // was too low ranks every row exactly. Scans no larger than the sample use the running heap.
      const int64_t scan_rows = r_end - r_begin;
      // The estimate selects among every est_stride-th key of the sample (at most about kEstimateKeys): the
      // selection is the costliest step per query where a scan has only a few thousand rows.
      const int64_t sample = std::min(scan_rows, kSampleTiles * tile);
      const int64_t est_stride = std::max<int64_t>(1, sample / kEstimateKeys);
      const int64_t est_n = (sample + est_stride - 1) / est_stride;
      const double expect = 1.5 * double(kk) * double(est_n) / double(scan_rows);
      const int64_t rank = static_cast<int64_t>(std::ceil(expect + 3.0 * std::sqrt(expect))) + 1;
      const bool estimate = sample < scan_rows && rank < est_n;
#ifdef PCDET_KNN_FUSED
      if constexpr (std::is_same<scalar_t, float>::value) {
        if (fused) {
          // The threshold estimate from every fstride-th row of the whole scan (a sample spread over it, about as
          // many keys as the sample block below would give: min(kEstimateKeys, kSampleTiles * tile)); then every
          // row of the scan goes through the fused GEMM + screening. Small scans (fewer than two rows per key)
          // and ranks at the sample's size use the running heap from an infinite threshold instead.
          const int64_t fkeys = std::min(kEstimateKeys, kSampleTiles * tile);
          const int64_t fstride = std::max<int64_t>(1, scan_rows / fkeys);
          const int64_t fn = (scan_rows + fstride - 1) / fstride;
          const double fexpect = 1.5 * double(kk) * double(fn) / double(scan_rows);
          const int64_t frank = static_cast<int64_t>(std::ceil(fexpect + 3.0 * std::sqrt(fexpect))) + 1;
          if (fstride >= 2 && frank < fn) {
            at::Tensor est_rows = scan_low[job.scan].slice(0, 0, scan_rows, fstride);
            at::Tensor dots = at::mm(qlow, est_rows.t()).contiguous();
            const float* d = dots.data_ptr<float>();
            key.resize(std::max<int64_t>(int64_t(key.size()), fn));
            for (int64_t a = 0; a < tq; ++a) {
              QuerySearch<scalar_t, st>& qs = search[a];
              for (int64_t e = 0; e < fn; ++e)
                low_key<st>(d[a * fn + e], nb_all[e * fstride], qn[a], qs.b.uo2, &key[e]);
              qs.tau = qs.thr = threshold_of(upper_of(kth_smallest(key.data(), fn, frank, tmp), qs.b), qs.b);
              qs.fixed = true;
            }
          }
          fused_scan(search.data(), tq, qlow.template data_ptr<float>(), qn, c, scan_panels[job.scan].data(),
                     scan_panel_norm[job.scan].data(), (scan_rows + kFuseR - 1) / kFuseR, rows.data() + r_begin,
                     nb_all, float(uo2), feats, qpad, qnpad);
        }
      }
#endif
      for (int64_t r0 = r_begin; r0 < r_end && !fused;) {
        const int64_t tr = std::min(r0 == r_begin ? sample : tile, r_end - r0);
        at::Tensor dots = at::mm(qlow, scan_low[job.scan].narrow(0, r0 - r_begin, tr).t()).contiguous();
        const st* nb = nb_all + (r0 - r_begin);
        // one query's block row: the sample block estimates the threshold from every est_stride-th key; then the
        // hits (rows whose lower key passes the threshold, a superset) are re-checked and admitted in row order,
        // the threshold refreshed every 16 admissions (a stale threshold is only looser). Admission is inclusive
        // (<=), so ties stay.
        auto screen_row = [&](QuerySearch<scalar_t, st>& qs, st a_norm, const auto* srow) {
          if (r0 == r_begin && estimate) {
            for (int64_t j = 0, e = 0; j < tr; j += est_stride, ++e)
              low_key<st>(dot_value(srow, j), nb[j], a_norm, qs.b.uo2, &key[e]);
            qs.tau = qs.thr = threshold_of(upper_of(kth_smallest(key.data(), est_n, rank, tmp), qs.b), qs.b);
            qs.fixed = true;
          }
          const int64_t nh = gather_hits(srow, nb, a_norm, qs.b.uo2, tr, qs.thr, hit.data());
          for (int64_t h = 0; h < nh; ++h) {
            const int64_t j = hit[h];
            st key_j;
            const st low_j = low_key<st>(dot_value(srow, j), nb[j], a_norm, qs.b.uo2, &key_j);
            if (low_j <= qs.thr) qs.admit(low_j, key_j, rows[r0 + j], feats, c);
            if ((h & 15) == 15) qs.refresh_threshold();
          }
          qs.refresh_threshold();
        };
        for (int64_t a = 0; a < tq; ++a) {
          if constexpr (std::is_same<st, double>::value) {
            screen_row(search[a], qn[a], dots.data_ptr<double>() + a * tr);
          } else if (bf16) {
            screen_row(search[a], qn[a], reinterpret_cast<const uint16_t*>(dots.data_ptr<at::BFloat16>()) + a * tr);
          } else {
            screen_row(search[a], qn[a], dots.data_ptr<float>() + a * tr);
          }
        }
        r0 += tr;
      }
      for (int64_t a = 0; a < tq; ++a) {
        QuerySearch<scalar_t, st>& qs = search[a];
        const int64_t pos = query_pos[job.q0 + a];
        const int64_t self = qidx[pos];
        if (qs.finish(feats, c, tmp, rows_fit_32, packed)) {
          for (int64_t t = 0; t < k; ++t) {
            oidx[pos * k + t] = t < kk ? qs.cand[t].row : self;
            ovalid[pos * k + t] = t < kk;
          }
          continue;
        }
        // the estimated threshold was too low: rank every row of the scan exactly
        ranked.resize(scan_rows);
        for (int64_t j = 0; j < scan_rows; ++j) {
          const int64_t row = rows[r_begin + j];
          ranked[j] = {st(0), st(0), double(squared_distance(qs.fq, feats + row * c, c)), row};
        }
        std::nth_element(ranked.begin(), ranked.begin() + kk - 1, ranked.end(), ExactBefore());
        std::sort(ranked.begin(), ranked.begin() + kk, ExactBefore());
        for (int64_t t = 0; t < k; ++t) {
          oidx[pos * k + t] = t < kk ? ranked[t].row : self;
          ovalid[pos * k + t] = t < kk;
        }
      }
    }
  });
}

// ---------------------------------------------------------------- k-d tree path (few channels: coordinates)
// For C <= 3 the screened GEMM wastes its work (a 3-term dot product per pair), so each scan gets a k-d tree:
// median splits along the widest side of the node's box, leaves of at most kLeaf rows stored channel-major. A
// query runs two passes and keeps no heap: (1) the kk-th distance among the rows of the smallest node around the
// query that holds at least kSeedFactor * kk rows is an upper bound of the answer's radius; (2) every row within
// that radius is collected, skipping the nodes whose box distance exceeds it by more than the rounding of the two
// sums (a box distance is at most the computed distance of any row in the box, within a few ulp), so ties stay;
// the kk best are selected and sorted. Distances are the sums of squared_distance, the exact ranking of the GEMM
// path (same operations in the same order), so both paths return the same rows. Queries are independent
// (deterministic in any thread count).
constexpr int64_t kLeaf = 32;
constexpr int64_t kSeedFactor = 4;     // 2 and 4 measured: 4 was 15 % faster (6000 queries, 20000 rows, k 128)
constexpr int64_t kTreeMaxChannels = 3;  // leaves are channel-major up to this many channels (row-major above)

template <typename scalar_t>
struct ScanTree {
  int64_t n = 0;
  std::vector<uint32_t> pos;          // the rows' positions in the scan's (ascending) row list, in leaf order
  std::vector<scalar_t> pts;          // their features in leaf order: (c, n) for c <= 3, else (n, c)
  std::vector<int64_t> begin, end;    // per node: its rows [begin, end) in leaf order
  std::vector<int32_t> child;         // per node: first child (the second is child + 1); -1 for a leaf
  std::vector<scalar_t> lo, hi;       // per node: bounding box (c values each)
};

// rows: the scan's n global row indices, ascending.
template <typename scalar_t>
void build_tree(const scalar_t* feats, int64_t c, const int64_t* rows, int64_t n, ScanTree<scalar_t>& t) {
  TORCH_CHECK(n < (int64_t(1) << 31), "knn_in_scans: a scan of ", n, " rows is too large for the tree path");
  t.n = n;
  t.pos.resize(n);
  std::iota(t.pos.begin(), t.pos.end(), 0u);
  auto value = [&](uint32_t p, int64_t ch) { return feats[rows[p] * c + ch]; };
  t.begin.assign(1, 0), t.end.assign(1, n), t.child.assign(1, -1);
  t.lo.clear(), t.hi.clear();
  std::vector<int32_t> todo = {0};
  while (!todo.empty()) {
    const int32_t nd = todo.back();
    todo.pop_back();
    const int64_t b = t.begin[nd], e = t.end[nd];
    t.lo.resize(t.begin.size() * c), t.hi.resize(t.begin.size() * c);
    scalar_t* lo = t.lo.data() + nd * c;
    scalar_t* hi = t.hi.data() + nd * c;
    for (int64_t ch = 0; ch < c; ++ch) lo[ch] = hi[ch] = value(t.pos[b], ch);
    for (int64_t i = b + 1; i < e; ++i)
      for (int64_t ch = 0; ch < c; ++ch) {
        const scalar_t v = value(t.pos[i], ch);
        lo[ch] = std::min(lo[ch], v);
        hi[ch] = std::max(hi[ch], v);
      }
    if (e - b <= kLeaf) continue;
    int64_t dim = 0;
    for (int64_t ch = 1; ch < c; ++ch)
      if (hi[ch] - lo[ch] > hi[dim] - lo[dim]) dim = ch;
    const int64_t mid = b + (e - b) / 2;
    std::nth_element(t.pos.begin() + b, t.pos.begin() + mid, t.pos.begin() + e, [&](uint32_t x, uint32_t y) {
      const scalar_t vx = value(x, dim), vy = value(y, dim);
      return vx < vy || (vx == vy && x < y);
    });
    const int32_t first = static_cast<int32_t>(t.begin.size());
    t.child[nd] = first;
    t.begin.push_back(b), t.end.push_back(mid), t.child.push_back(-1);
    t.begin.push_back(mid), t.end.push_back(e), t.child.push_back(-1);
    todo.push_back(first + 1), todo.push_back(first);
  }
  t.pts.resize(n * c);
  const bool soa = c <= kTreeMaxChannels;
  for (int64_t i = 0; i < n; ++i)
    for (int64_t ch = 0; ch < c; ++ch) t.pts[soa ? ch * n + i : i * c + ch] = value(t.pos[i], ch);
}

// Squared distance from q to the node's box (0 inside), in channel order like squared_distance.
template <typename scalar_t>
inline scalar_t box_distance(const scalar_t* q, const scalar_t* lo, const scalar_t* hi, int64_t c) {
  scalar_t s = 0;
  for (int64_t ch = 0; ch < c; ++ch) {
    const scalar_t g = std::max(std::max(lo[ch] - q[ch], q[ch] - hi[ch]), scalar_t(0));
    s += g * g;
  }
  return s;
}

// out[i - b] = squared_distance(q, row i) for the rows [b, e) in leaf order. For c <= 3 the channel-major copy is
// summed in the order of squared_distance for c < 4 (((0 + d0^2) + d1^2) + d2^2), which vectorises over rows.
template <typename scalar_t, int C>
void leaf_distances_soa(const ScanTree<scalar_t>& t, const scalar_t* q, int64_t b, int64_t e, scalar_t* out) {
  const scalar_t* x = t.pts.data();
  for (int64_t i = b; i < e; ++i) {
    scalar_t s = 0;
    for (int ch = 0; ch < C; ++ch) {
      const scalar_t d = x[ch * t.n + i] - q[ch];
      s += d * d;
    }
    out[i - b] = s;
  }
}

template <typename scalar_t>
void leaf_distances(const ScanTree<scalar_t>& t, const scalar_t* q, int64_t c, int64_t b, int64_t e, scalar_t* out) {
  switch (c) {
    case 1: return leaf_distances_soa<scalar_t, 1>(t, q, b, e, out);
    case 2: return leaf_distances_soa<scalar_t, 2>(t, q, b, e, out);
    case 3: return leaf_distances_soa<scalar_t, 3>(t, q, b, e, out);
    default:
      for (int64_t i = b; i < e; ++i) out[i - b] = squared_distance(q, t.pts.data() + i * c, c);
  }
}

// A candidate (distance, position), ordered by distance then position (= by row). For float the pair packs into
// one 64-bit key (the bits of a non-negative float order as the float does).
template <typename scalar_t>
struct TreeItem {
  scalar_t d;
  uint32_t p;
  static TreeItem make(scalar_t d, uint32_t p) { return {d, p}; }
  uint32_t pos() const { return p; }
  bool operator<(const TreeItem& o) const { return d < o.d || (d == o.d && p < o.p); }
};

template <>
struct TreeItem<float> {
  uint64_t v;
  static TreeItem make(float d, uint32_t p) {
    uint32_t bits;
    std::memcpy(&bits, &d, sizeof(bits));
    return {(static_cast<uint64_t>(bits) << 32) | p};
  }
  uint32_t pos() const { return static_cast<uint32_t>(v); }
  bool operator<(const TreeItem& o) const { return v < o.v; }
};

// The kk nearest rows of the tree to q, ascending (distance, row), into cand[0 .. kk); cand holds >= n + 1 items,
// dist >= n values.
template <typename scalar_t>
void tree_query(const ScanTree<scalar_t>& t, const scalar_t* q, int64_t c, int64_t kk, TreeItem<scalar_t>* cand,
                scalar_t* dist, std::vector<int32_t>& stack) {
  // (1) descend towards q while the nearer child still holds enough rows
  int32_t nd = 0;
  for (;;) {
    const int32_t ch = t.child[nd];
    if (ch < 0) break;
    const int32_t next =
        box_distance(q, t.lo.data() + ch * c, t.hi.data() + ch * c, c) <=
                box_distance(q, t.lo.data() + (ch + 1) * c, t.hi.data() + (ch + 1) * c, c)
            ? ch
            : ch + 1;
    if (t.end[next] - t.begin[next] < kSeedFactor * kk) break;
    nd = next;
  }
  const int64_t n0 = t.end[nd] - t.begin[nd];
  leaf_distances(t, q, c, t.begin[nd], t.end[nd], dist);
  select_nth(dist, n0, kk - 1);
  const scalar_t radius = dist[kk - 1];
  const scalar_t reach = radius * (1 + 16 * std::numeric_limits<scalar_t>::epsilon());
  // (2) every row within the radius (inclusive: ties stay)
  int64_t nc = 0;
  stack.assign(1, 0);
  while (!stack.empty()) {
    const int32_t n = stack.back();
    stack.pop_back();
    const int32_t ch = t.child[n];
    if (ch >= 0) {
      if (box_distance(q, t.lo.data() + (ch + 1) * c, t.hi.data() + (ch + 1) * c, c) <= reach) stack.push_back(ch + 1);
      if (box_distance(q, t.lo.data() + ch * c, t.hi.data() + ch * c, c) <= reach) stack.push_back(ch);
      continue;
    }
    const int64_t b = t.begin[n], e = t.end[n];
    leaf_distances(t, q, c, b, e, dist);
    for (int64_t i = b; i < e; ++i) {  // branch-free compaction
      cand[nc] = TreeItem<scalar_t>::make(dist[i - b], t.pos[i]);
      nc += dist[i - b] <= radius;
    }
  }
  if (nc > kk) select_nth(cand, nc, kk - 1);
  std::sort(cand, cand + kk);
}

template <typename scalar_t>
void knn_tree_impl(const at::Tensor& features, const at::Tensor& batch_idx, const at::Tensor& query_index, int64_t k,
                   at::Tensor& out_idx, at::Tensor& out_valid) {
  const int64_t m = features.size(0), c = features.size(1), q = query_index.size(0);
  const int64_t* bidx = batch_idx.data_ptr<int64_t>();
  const int64_t* qidx = query_index.data_ptr<int64_t>();
  const scalar_t* feats = features.data_ptr<scalar_t>();
  const int64_t num_scans = m ? *std::max_element(bidx, bidx + m) + 1 : 0;
  std::vector<int64_t> row_start, rows;
  group_by_key(bidx, m, num_scans, row_start, rows);
  std::vector<char> queried(num_scans, 0);
  for (int64_t i = 0; i < q; ++i) queried[bidx[qidx[i]]] = 1;
  std::vector<ScanTree<scalar_t>> trees(num_scans);
  at::parallel_for(0, num_scans, 1, [&](int64_t sb, int64_t se) {
    for (int64_t s = sb; s < se; ++s)
      if (queried[s] && row_start[s + 1] > row_start[s])
        build_tree(feats, c, rows.data() + row_start[s], row_start[s + 1] - row_start[s], trees[s]);
  });
  int64_t* oidx = out_idx.data_ptr<int64_t>();
  bool* ovalid = out_valid.data_ptr<bool>();
  int64_t max_rows = 0;
  for (int64_t s = 0; s < num_scans; ++s) max_rows = std::max(max_rows, row_start[s + 1] - row_start[s]);
  at::parallel_for(0, q, 16, [&](int64_t qb, int64_t qe) {
    std::vector<TreeItem<scalar_t>> cand(max_rows + 1);
    std::vector<scalar_t> dist(max_rows);
    std::vector<int32_t> stack;
    for (int64_t i = qb; i < qe; ++i) {
      const int64_t self = qidx[i], s = bidx[self];
      const int64_t* scan_rows = rows.data() + row_start[s];
      const int64_t kk = std::min(k, row_start[s + 1] - row_start[s]);
      tree_query(trees[s], feats + self * c, c, kk, cand.data(), dist.data(), stack);
      for (int64_t t = 0; t < k; ++t) {
        oidx[i * k + t] = t < kk ? scan_rows[cand[t].pos()] : self;
        ovalid[i * k + t] = t < kk;
      }
    }
  });
}

void check_knn_inputs(const at::Tensor& features, const at::Tensor& batch_idx, const at::Tensor& query_index,
                      int64_t k) {
  TORCH_CHECK(features.dim() == 2 && features.is_contiguous(), "knn_in_scans: features must be contiguous (M, C), got ",
              features.sizes());
  TORCH_CHECK(batch_idx.dim() == 1 && batch_idx.size(0) == features.size(0) && batch_idx.scalar_type() == at::kLong &&
                  batch_idx.is_contiguous(),
              "knn_in_scans: batch_idx must be contiguous int64 (M,) = (", features.size(0), "), got ",
              batch_idx.sizes(), " ", batch_idx.scalar_type());
  TORCH_CHECK(query_index.dim() == 1 && query_index.scalar_type() == at::kLong && query_index.is_contiguous(),
              "knn_in_scans: query_index must be contiguous int64 (Q,), got ", query_index.sizes());
  TORCH_CHECK(k >= 1, "knn_in_scans: k must be >= 1, got ", k);
  TORCH_CHECK(batch_idx.device() == features.device() && query_index.device() == features.device(),
              "knn_in_scans: features, batch_idx and query_index must be on one device");
}

// algorithm: "gemm" or "tree" (CPU only), chosen by the Python wrapper (resolve_algorithm). Features must be finite
// (the wrapper checks): the tree's selection assumes ordered distances.

std::vector<at::Tensor> knn_in_scans(const at::Tensor& features, const at::Tensor& batch_idx,
                                     const at::Tensor& query_index, int64_t k, int64_t tile, bool low_precision,
                                     const std::string& algorithm) {
  check_knn_inputs(features, batch_idx, query_index, k);
  TORCH_CHECK(tile >= 1, "knn_in_scans: tile must be >= 1, got ", tile);
  TORCH_CHECK(algorithm == "gemm" || algorithm == "tree", "knn_in_scans: algorithm must be gemm or tree, got '",
              algorithm, "'");
  if (features.is_cuda()) {
#ifdef WITH_CUDA
    return knn_in_scans_cuda(features, batch_idx, query_index, k);
#else
    TORCH_CHECK(false, "knn_in_scans: pcdet was built without CUDA, got features on ", features.device());
#endif
  }
  auto out_idx = at::empty({query_index.size(0), k}, query_index.options());
  auto out_valid = at::empty({query_index.size(0), k}, query_index.options().dtype(at::kBool));
  const int64_t c = features.size(1);
  TORCH_CHECK(!(algorithm == "tree" && c == 0), "knn_in_scans: the tree path needs at least one channel");
  const bool tree = algorithm == "tree";
  AT_DISPATCH_FLOATING_TYPES(features.scalar_type(), "knn_in_scans_cpu", [&] {
    if (tree) {
      knn_tree_impl<scalar_t>(features, batch_idx, query_index, k, out_idx, out_valid);
    } else {
      knn_cpu_impl<scalar_t>(features, batch_idx, query_index, k, tile, low_precision, out_idx, out_valid);
    }
  });
  return {out_idx, out_valid};
}

void check_edge_inputs(const at::Tensor& query_index, const at::Tensor& idx) {
  TORCH_CHECK(idx.dim() == 2 && idx.scalar_type() == at::kLong && idx.is_contiguous(),
              "edge_features: idx must be contiguous int64 (Q, k), got ", idx.sizes());
  TORCH_CHECK(query_index.dim() == 1 && query_index.size(0) == idx.size(0) &&
                  query_index.scalar_type() == at::kLong && query_index.is_contiguous(),
              "edge_features: query_index must be contiguous int64 (Q,) = (", idx.size(0), "), got ",
              query_index.sizes());
}

// out[q, j] = [F(idx[q, j]) (- F(query[q]) when diff); F(query[q])], (Q, k, 2C).
at::Tensor edge_features_forward(const at::Tensor& features, const at::Tensor& query_index, const at::Tensor& idx,
                                 bool diff) {
  check_edge_inputs(query_index, idx);
  TORCH_CHECK(features.dim() == 2 && features.is_contiguous(), "edge_features: features must be contiguous (M, C)");
  if (features.is_cuda()) {
#ifdef WITH_CUDA
    return edge_features_forward_cuda(features, query_index, idx, diff);
#else
    TORCH_CHECK(false, "edge_features: pcdet was built without CUDA, got features on ", features.device());
#endif
  }
  const int64_t q = idx.size(0), k = idx.size(1), c = features.size(1), m = features.size(0);
  auto out = at::empty({q, k, 2 * c}, features.options());
  const int64_t* qi = query_index.data_ptr<int64_t>();
  const int64_t* ni = idx.data_ptr<int64_t>();
  AT_DISPATCH_FLOATING_TYPES(features.scalar_type(), "edge_features_forward_cpu", [&] {
    const scalar_t* f = features.data_ptr<scalar_t>();
    scalar_t* o = out.data_ptr<scalar_t>();
    at::parallel_for(0, q, 64, [&](int64_t b, int64_t e) {
      for (int64_t a = b; a < e; ++a) {
        TORCH_CHECK(qi[a] >= 0 && qi[a] < m, "edge_features: query_index[", a, "] = ", qi[a], " not in [0, ", m, ")");
        const scalar_t* fc = f + qi[a] * c;
        for (int64_t j = 0; j < k; ++j) {
          const int64_t nb = ni[a * k + j];
          TORCH_CHECK(nb >= 0 && nb < m, "edge_features: idx[", a, ", ", j, "] = ", nb, " not in [0, ", m, ")");
          const scalar_t* fn = f + nb * c;
          scalar_t* row = o + (a * k + j) * 2 * c;
          for (int64_t t = 0; t < c; ++t) {
            row[t] = diff ? fn[t] - fc[t] : fn[t];
            row[c + t] = fc[t];
          }
        }
      }
    });
  });
  return out;
}

// Gradient w.r.t. features (M, C) of edge_features_forward; channel blocks in parallel keep it race-free and
// deterministic (every row accumulates in the same order).
at::Tensor edge_features_backward(const at::Tensor& grad, const at::Tensor& query_index, const at::Tensor& idx,
                                  int64_t num_rows, bool diff) {
  check_edge_inputs(query_index, idx);
  TORCH_CHECK(grad.dim() == 3 && grad.size(0) == idx.size(0) && grad.size(1) == idx.size(1) && grad.size(2) % 2 == 0,
              "edge_features: grad must be (Q, k, 2C) matching idx ", idx.sizes(), ", got ", grad.sizes());
  const at::Tensor g = grad.contiguous();
  if (g.is_cuda()) {
#ifdef WITH_CUDA
    return edge_features_backward_cuda(g, query_index, idx, num_rows, diff);
#else
    TORCH_CHECK(false, "edge_features: pcdet was built without CUDA, got grad on ", g.device());
#endif
  }
  const int64_t q = idx.size(0), k = idx.size(1), c = g.size(2) / 2;
  auto out = at::zeros({num_rows, c}, g.options());
  const int64_t* qi = query_index.data_ptr<int64_t>();
  const int64_t* ni = idx.data_ptr<int64_t>();
  AT_DISPATCH_FLOATING_TYPES(g.scalar_type(), "edge_features_backward_cpu", [&] {
    const scalar_t* gp = g.data_ptr<scalar_t>();
    scalar_t* o = out.data_ptr<scalar_t>();
    at::parallel_for(0, c, 16, [&](int64_t cb, int64_t ce) {
      for (int64_t a = 0; a < q; ++a) {
        scalar_t* oc = o + qi[a] * c;
        for (int64_t j = 0; j < k; ++j) {
          const scalar_t* row = gp + (a * k + j) * 2 * c;
          scalar_t* on = o + ni[a * k + j] * c;
          for (int64_t t = cb; t < ce; ++t) {
            on[t] += row[t];
            oc[t] += diff ? row[c + t] - row[t] : row[c + t];
          }
        }
      }
    });
  });
  return out;
}

// Test hook: the exact distance of the kept rows (squared_distance) between a[i] and b[i], float32 (N, C) each, with
// the CPU's own path or (scalar) the portable one; both must agree bit for bit. Returns (N,) float32.
at::Tensor exact_distances(const at::Tensor& a, const at::Tensor& b, bool scalar) {
  TORCH_CHECK(a.dim() == 2 && a.sizes() == b.sizes() && a.scalar_type() == at::kFloat && b.scalar_type() == at::kFloat &&
                  a.device().is_cpu() && b.device().is_cpu(),
              "exact_distances: a and b must be float32 CPU tensors of the same shape (N, C), got ", a.sizes(), " and ",
              b.sizes());
  const at::Tensor ac = a.contiguous(), bc = b.contiguous();
  const int64_t n = ac.size(0), c = ac.size(1);
  at::Tensor out = at::empty({n}, ac.options());
  const float* pa = ac.data_ptr<float>();
  const float* pb = bc.data_ptr<float>();
  float* po = out.data_ptr<float>();
  for (int64_t i = 0; i < n; ++i)
    po[i] = scalar && c >= 8 ? squared_distance_f32_scalar(pa + i * c, pb + i * c, c)
                             : squared_distance(pa + i * c, pb + i * c, c);
  return out;
}

// Test hook: rank_sort on (N,) int64 keys (distinct, non-negative): the min(N, kk) smallest ascending, or None
// where the CPU path does not take it (no AVX2, or N above kRankSortMax).
c10::optional<at::Tensor> rank_sorted(const at::Tensor& keys, int64_t kk) {
  TORCH_CHECK(keys.dim() == 1 && keys.scalar_type() == at::kLong && keys.device().is_cpu() && kk >= 0,
              "rank_sorted: keys must be a 1-D int64 CPU tensor and kk >= 0, got ", keys.sizes(), " and ", kk);
  const at::Tensor kc = keys.contiguous();
  const int64_t n = kc.size(0), m = std::min(n, kk);
  const int64_t* kp = kc.data_ptr<int64_t>();
  for (int64_t i = 0; i < n; ++i) TORCH_CHECK(kp[i] >= 0, "rank_sorted: keys[", i, "] is negative");
  uint64_t out[kRankSortMax];
  if (!rank_sort(reinterpret_cast<const uint64_t*>(kp), n, m, out)) return c10::nullopt;
  at::Tensor res = at::empty({m}, kc.options());
  std::memcpy(res.data_ptr<int64_t>(), out, m * sizeof(int64_t));
  return res;
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
  m.def("knn_in_scans", &knn_in_scans, "(idx (Q, k), valid (Q, k)) of the k nearest rows in the same scan",
        py::arg("features"), py::arg("batch_idx"), py::arg("query_index"), py::arg("k"), py::arg("tile"),
        py::arg("low_precision"), py::arg("algorithm"));
  m.def("edge_features_forward", &edge_features_forward, "(Q, k, 2C) edge features", py::arg("features"),
        py::arg("query_index"), py::arg("idx"), py::arg("diff"));
  m.def("edge_features_backward", &edge_features_backward, "(M, C) gradient of edge features", py::arg("grad"),
        py::arg("query_index"), py::arg("idx"), py::arg("num_rows"), py::arg("diff"));
  m.def("exact_distances", &exact_distances, "(N,) exact squared distances of rows a[i], b[i] (test hook)",
        py::arg("a"), py::arg("b"), py::arg("scalar"));
  m.def("rank_sorted", &rank_sorted, "the min(N, kk) smallest keys ascending by rank_sort, or None (test hook)",
        py::arg("keys"), py::arg("kk"));
  m.def("with_cuda", &with_cuda, "True when built with the CUDA kernels");
}
