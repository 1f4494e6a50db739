// The Python module `dmkernels._C`. Importing it loads this library, whose
// static initialisers run every TORCH_LIBRARY_IMPL in csrc/cpu/ and csrc/cuda/.
// The op schemas are not here: each op is declared once, in
// dmkernels/_registry.py, which defines `dmkernels::*` from Python when this
// library loads (dmkernels/fake.py). A kernel whose C++ signature disagrees with
// its schema fails at that moment, on import.
#include <Python.h>

extern "C" {
PyObject* PyInit__C(void) {
  static struct PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, nullptr};
  return PyModule_Create(&module_def);
}
}
