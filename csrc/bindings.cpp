// The only file that knows pybind11: numpy arrays in, numpy arrays / dicts out, GIL released.
#include <pybind11/pybind11.h>
#include <pybind11/numpy.h>
#include <pybind11/stl.h>

#if TRANSPOSE_HAVE_OPENMP
#include <omp.h>
#endif

namespace py = pybind11;

static int max_threads() {
#if TRANSPOSE_HAVE_OPENMP
  return omp_get_max_threads();
#else
  return 1;
#endif
}

PYBIND11_MODULE(_core, m) {
  m.doc() = "transpose native RANSAC/PnP core";
  m.def("has_openmp", []() { return bool(TRANSPOSE_HAVE_OPENMP); });
  m.def("openmp_runtime", []() { return std::string(TRANSPOSE_OPENMP_RUNTIME); });
  m.def("max_threads", &max_threads);
}
