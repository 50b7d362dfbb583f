// Bindings of the rotated BEV IoU / overlap and NMS CUDA kernels. Built on every machine so that
// ``with_cuda()`` can say whether the kernels are there; without CUDA every entry point raises.
#include <torch/extension.h>

#include <vector>

#ifdef WITH_CUDA
at::Tensor boxes_overlap_bev_cuda(const at::Tensor& boxes_a, const at::Tensor& boxes_b, bool iou);
at::Tensor nms_cuda(const at::Tensor& boxes, double thresh, bool rotated);
#endif

namespace {

void check_boxes(const at::Tensor& boxes, const char* name) {
  TORCH_CHECK(boxes.dim() == 2 && boxes.size(1) >= 7, "iou3d_nms: ", name, " must be (N, 7+) ",
              "[x, y, z, dx, dy, dz, heading], got ", boxes.sizes());
  TORCH_CHECK(boxes.is_cuda(), "iou3d_nms: ", name, " must be a CUDA tensor, got ", boxes.device());
}

at::Tensor overlap(const at::Tensor& boxes_a, const at::Tensor& boxes_b, bool iou) {
  check_boxes(boxes_a, "boxes_a");
  check_boxes(boxes_b, "boxes_b");
#ifdef WITH_CUDA
  return boxes_overlap_bev_cuda(boxes_a, boxes_b, iou);
#else
  TORCH_CHECK(false, "iou3d_nms: pcdet was built without CUDA");
#endif
}

at::Tensor boxes_overlap_bev(const at::Tensor& boxes_a, const at::Tensor& boxes_b) {
  return overlap(boxes_a, boxes_b, false);
}

at::Tensor boxes_iou_bev(const at::Tensor& boxes_a, const at::Tensor& boxes_b) {
  return overlap(boxes_a, boxes_b, true);
}

at::Tensor nms(const at::Tensor& boxes, double thresh, bool rotated) {
  check_boxes(boxes, "boxes");
#ifdef WITH_CUDA
  return nms_cuda(boxes, thresh, rotated);
#else
  TORCH_CHECK(false, "iou3d_nms: pcdet was built without CUDA");
#endif
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
  m.def("boxes_overlap_bev", &boxes_overlap_bev, "(N, M) rotated BEV intersection areas", py::arg("boxes_a"),
        py::arg("boxes_b"));
  m.def("boxes_iou_bev", &boxes_iou_bev, "(N, M) rotated BEV IoU", py::arg("boxes_a"), py::arg("boxes_b"));
  m.def("nms", &nms, "keep (K,) int64 of boxes sorted by descending score; IoU > thresh suppresses",
        py::arg("boxes"), py::arg("thresh"), py::arg("rotated"));
  m.def("with_cuda", &with_cuda, "True when built with the CUDA kernels");
}
