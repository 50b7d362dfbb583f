// kNN within scans in feature space (CPU) and graph edge features.
//
// knn_in_scans works per (scan, tile of queries): distance blocks come from one GEMM per (query tile x row tile)
// (|r|^2 - 2 q.r, the |q|^2 term does not change a query's ranking). Each query buffers the rows that beat its
// admission threshold (the k-th best distance so far) and, when the buffer of 2k fills, keeps the k best by
// partial selection (std::nth_element), which lowers the threshold; the k survivors are re-ranked by the exact
// sum of squared differences, so duplicate rows are exact ties and the query itself is at distance 0. Peak extra
// memory per thread: tile^2 distances + tile * 2k candidates.
#include <torch/extension.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cstdint>
#include <limits>
#include <numeric>
#include <vector>

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

template <typename scalar_t>
struct Candidate {
  scalar_t dist;
  int64_t row;
};

// Keeps the kk best of the n buffered candidates (partial selection, O(n)) and returns the new admission
// threshold: the distance of the worst kept one once kk are kept, +inf before.
template <typename scalar_t>
scalar_t keep_best(Candidate<scalar_t>* cand, int64_t& n, int64_t kk) {
  if (n < kk) return std::numeric_limits<scalar_t>::infinity();
  auto before = [](const Candidate<scalar_t>& x, const Candidate<scalar_t>& y) {
    return ranks_before(x.dist, x.row, y.dist, y.row);
  };
  std::nth_element(cand, cand + kk - 1, cand + n, before);
  n = kk;
  return cand[kk - 1].dist;
}

// Sum of squared differences with four partial sums: a fixed order, so identical rows give identical values.
template <typename scalar_t>
inline scalar_t squared_distance(const scalar_t* a, const scalar_t* b, int64_t c) {
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

template <typename scalar_t>
void knn_cpu_impl(const at::Tensor& features, const at::Tensor& batch_idx, const at::Tensor& query_index, int64_t k,
                  int64_t tile, at::Tensor& out_idx, at::Tensor& out_valid) {
  const int64_t m = features.size(0), c = features.size(1), q = query_index.size(0);
  const int64_t* bidx = batch_idx.data_ptr<int64_t>();
  const int64_t* qidx = query_index.data_ptr<int64_t>();
  const int64_t num_scans = m ? *std::max_element(bidx, bidx + m) + 1 : 0;

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
  const scalar_t* sf = scan_feats.data_ptr<scalar_t>();
  const scalar_t* feats = features.data_ptr<scalar_t>();
  std::vector<scalar_t> row_norm(m);
  at::parallel_for(0, m, 1024, [&](int64_t b, int64_t e) {
    for (int64_t i = b; i < e; ++i) {
      const scalar_t* f = sf + i * c;
      scalar_t s = 0;
      for (int64_t j = 0; j < c; ++j) s += f[j] * f[j];
      row_norm[i] = s;
    }
  });

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

  int64_t* oidx = out_idx.data_ptr<int64_t>();
  bool* ovalid = out_valid.data_ptr<bool>();
  at::parallel_for(0, static_cast<int64_t>(work.size()), 1, [&](int64_t wb, int64_t we) {
    std::vector<Candidate<scalar_t>> buf;
    std::vector<int64_t> buf_n;
    std::vector<scalar_t> thr;
    std::vector<std::pair<scalar_t, int64_t>> ranked;
    for (int64_t w = wb; w < we; ++w) {
      const Work& job = work[w];
      const int64_t tq = job.q1 - job.q0;
      const int64_t r_begin = row_start[job.scan], r_end = row_start[job.scan + 1];
      const int64_t kk = std::min(k, r_end - r_begin);
      const int64_t cap = std::max<int64_t>(2 * kk, kk + 32);
      buf.resize(tq * cap);
      buf_n.assign(tq, 0);
      thr.assign(tq, std::numeric_limits<scalar_t>::infinity());
      at::Tensor qf = features.index_select(0, qrows_t.narrow(0, job.q0, tq));
      for (int64_t r0 = r_begin; r0 < r_end; r0 += tile) {
        const int64_t tr = std::min(tile, r_end - r0);
        at::Tensor dots = at::mm(qf, scan_feats.narrow(0, r0, tr).t()).contiguous();
        const scalar_t* dp = dots.data_ptr<scalar_t>();
        for (int64_t a = 0; a < tq; ++a) {
          Candidate<scalar_t>* cand = buf.data() + a * cap;
          int64_t n = buf_n[a];
          scalar_t t = thr[a];
          const scalar_t* drow = dp + a * tr;
          for (int64_t j = 0; j < tr; ++j) {
            const scalar_t d = row_norm[r0 + j] - 2 * drow[j];
            // Rows arrive in ascending index order, so an equal distance never beats a kept row: strict < is the
            // contract's tie rule.
            if (d < t) {
              cand[n++] = {d, rows[r0 + j]};
              if (n == cap) t = keep_best(cand, n, kk);
            }
          }
          buf_n[a] = n;
          thr[a] = t;
        }
      }
      for (int64_t a = 0; a < tq; ++a) {
        Candidate<scalar_t>* cand = buf.data() + a * cap;
        int64_t n = buf_n[a];
        keep_best(cand, n, kk);
        const int64_t pos = query_pos[job.q0 + a];
        const int64_t self = qidx[pos];
        const scalar_t* fq = feats + self * c;
        ranked.clear();
        for (int64_t t = 0; t < kk; ++t) {
          const int64_t j = cand[t].row;
          ranked.emplace_back(squared_distance(fq, feats + j * c, c), j);
        }
        std::sort(ranked.begin(), ranked.end(), [](const auto& x, const auto& y) {
          return ranks_before(x.first, x.second, y.first, y.second);
        });
        for (int64_t t = 0; t < k; ++t) {
          oidx[pos * k + t] = t < kk ? ranked[t].second : self;
          ovalid[pos * k + t] = t < kk;
        }
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

std::vector<at::Tensor> knn_in_scans(const at::Tensor& features, const at::Tensor& batch_idx,
                                     const at::Tensor& query_index, int64_t k, int64_t tile) {
  check_knn_inputs(features, batch_idx, query_index, k);
  TORCH_CHECK(tile >= 1, "knn_in_scans: tile must be >= 1, got ", tile);
  if (features.is_cuda()) {
#ifdef WITH_CUDA
    return knn_in_scans_cuda(features, batch_idx, query_index, k);
#else
    TORCH_CHECK(false, "knn_in_scans: pcdet was built without CUDA, got features on ", features.device());
#endif
  }
  auto out_idx = at::empty({query_index.size(0), k}, query_index.options());
  auto out_valid = at::empty({query_index.size(0), k}, query_index.options().dtype(at::kBool));
  AT_DISPATCH_FLOATING_TYPES(features.scalar_type(), "knn_in_scans_cpu", [&] {
    knn_cpu_impl<scalar_t>(features, batch_idx, query_index, k, tile, out_idx, out_valid);
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
        py::arg("features"), py::arg("batch_idx"), py::arg("query_index"), py::arg("k"), py::arg("tile"));
  m.def("edge_features_forward", &edge_features_forward, "(Q, k, 2C) edge features", py::arg("features"),
        py::arg("query_index"), py::arg("idx"), py::arg("diff"));
  m.def("edge_features_backward", &edge_features_backward, "(M, C) gradient of edge features", py::arg("grad"),
        py::arg("query_index"), py::arg("idx"), py::arg("num_rows"), py::arg("diff"));
  m.def("with_cuda", &with_cuda, "True when built with the CUDA kernels");
}
