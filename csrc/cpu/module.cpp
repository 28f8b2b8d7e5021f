// simprune._C: the compiled half of simprune.
//
// Op schemas are declared once in Python (simprune/ops.py); the C++/CUDA sources in csrc/ only register
// implementations with TORCH_LIBRARY_IMPL. This file only provides the Python module object, so that
// `import simprune._C` loads the shared library (and with it every static registration in it).
#include <Python.h>

namespace {

PyModuleDef simprune_module = {
    PyModuleDef_HEAD_INIT,
    "_C",
    "simprune's compiled kernels (registered as torch.library implementations).",
    -1,
    nullptr,
};

}  // namespace

extern "C" PyObject* PyInit__C(void) {
  PyObject* m = PyModule_Create(&simprune_module);
  if (m == nullptr) return nullptr;
#ifdef SIMPRUNE_WITH_CUDA
  PyModule_AddIntConstant(m, "WITH_CUDA", 1);
#else
  PyModule_AddIntConstant(m, "WITH_CUDA", 0);
#endif
#ifdef _OPENMP
  PyModule_AddIntConstant(m, "WITH_OPENMP", 1);
#else
  PyModule_AddIntConstant(m, "WITH_OPENMP", 0);
#endif
  return m;
}
