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
      "tree_accept_greedy(Tensor tokens, Tensor parents, Tensor target_choice)"
      " -> (Tensor, Tensor, Tensor)");
}

TORCH_LIBRARY_IMPL(phide, CPU, m) {
  m.impl("tree_accept_greedy", &phide::tree_accept_greedy_cpu);
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
        ops.append("tree_accept_greedy");
        info["ops"] = ops;
        return info;
      },
      "What this build of phide._C contains: cuda, cuda_version, torch_version, debug, ops.");
}
