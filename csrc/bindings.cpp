// The one registration file of phide._C: operator schemas (torch.ops.phide.*), their CPU
// implementations, and a small pybind11 module for build information. CUDA implementations
// register themselves in csrc/tree_accept_cuda.cu, which is compiled only with PHIDE_BUILD_CUDA=1.
// Fake (meta) implementations are Python: phide/_fake_ops.py.
#include <pybind11/pybind11.h>
#include <torch/library.h>
#include <torch/version.h>

#ifdef PHIDE_WITH_CUDA
#include <cuda_runtime_api.h>
#endif

#include "ops.h"

#define PHIDE_STRINGIFY_(...) #__VA_ARGS__
#define PHIDE_STRINGIFY(...) PHIDE_STRINGIFY_(__VA_ARGS__)

TORCH_LIBRARY(phide, m) {
  // Where the fake impls live: named in torch's error if an op is traced before they are loaded.
  m.set_python_module("phide._fake_ops");
  // Greedy tree walk: accept a child while its token equals the target's choice at its parent
  // (its argmax, or its Gumbel-max sample: phide.ops.gumbel_choices).
  m.def(
      "accept_path(Tensor tokens, Tensor parents, Tensor target_choice)"
      " -> (Tensor, Tensor, Tensor)");
  // The decoder's fused ops (one Triton kernel each on a GPU; the twins' ATen calls composed in
  // C++ on a CPU, csrc/decoder_cpu.cpp): transformers' RMSNorm, the residual add fused before it,
  // RoPE on q and k of a fused q/k/v projection with the layer's KV-cache write.
  m.def("rms_norm(Tensor x, Tensor weight, float eps) -> Tensor");
  m.def("add_rms_norm(Tensor x, Tensor residual, Tensor weight, float eps) -> (Tensor, Tensor)");
  m.def(
      "rope_kv_write(Tensor qkv, Tensor cos, Tensor sin, Tensor(a!) k_cache, Tensor(b!) v_cache,"
      " Tensor slots, int n_heads, int n_kv_heads) -> Tensor");
}

TORCH_LIBRARY_IMPL(phide, CPU, m) {
  m.impl("accept_path", &phide::accept_path_cpu);
  m.impl("rms_norm", &phide::rms_norm_cpu);
  m.impl("add_rms_norm", &phide::add_rms_norm_cpu);
  m.impl("rope_kv_write", &phide::rope_kv_write_cpu);
}

namespace py = pybind11;

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "phide compiled ops; importing registers torch.ops.phide.* and their fake impls";
  // The schemas exist by now (static registrars ran at dlopen): register the fakes with them, so
  // any import of phide._C can be traced by torch.compile / FakeTensorMode.
  py::module_::import("phide._fake_ops");
  m.def(
      "build_info",
      [] {
        py::dict info;
        info["torch_version"] = TORCH_VERSION;  // the torch headers this .so was built against
#ifdef PHIDE_WITH_CUDA
        info["cuda"] = true;
        info["cuda_version"] = std::to_string(CUDART_VERSION / 1000) + "." +
                               std::to_string((CUDART_VERSION % 1000) / 10);
#ifdef PHIDE_CUDA_ARCHS
        info["cuda_archs"] = PHIDE_STRINGIFY(PHIDE_CUDA_ARCHS);
#endif
#else
        info["cuda"] = false;
        info["cuda_version"] = py::none();
#endif
#ifdef PHIDE_DEBUG
        info["debug"] = true;
#else
        info["debug"] = false;
#endif
        py::list ops;
        for (const char* op : {"accept_path", "rms_norm", "add_rms_norm", "rope_kv_write"}) {
          ops.append(op);
        }
        info["ops"] = ops;
        return info;
      },
      "What this build of phide._C contains: cuda, cuda_version, torch_version, debug, ops.");
}
