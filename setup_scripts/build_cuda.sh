#!/usr/bin/env bash
# Rebuild transpose with the optional CUDA kernels (the CPU core is always built as well).
#   bash setup_scripts/build_cuda.sh              # install with CUDA kernels (sm_80 + sm_90)
#   bash setup_scripts/build_cuda.sh -e           # editable install; other arguments go to pip
#   CUDA_ARCHS="80;86;90" bash setup_scripts/build_cuda.sh   # other GPU architectures
# Needs nvcc (found on PATH, in $CUDA_HOME/bin, /usr/local/cuda/bin or the newest /usr/local/cuda-*/bin)
# and, in the current Python environment, scikit-build-core and pybind11 (the build runs without
# isolation so that it sees this environment's torch and numpy). Exits non-zero when no nvcc is
# found or when the installed extension turns out to lack the kernels.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python}"

find_nvcc() {
  if [[ -n "${CUDACXX:-}" && -x "${CUDACXX}" ]]; then echo "${CUDACXX}"; return; fi
  if command -v nvcc >/dev/null 2>&1; then command -v nvcc; return; fi
  local candidate
  for candidate in "${CUDA_HOME:-}/bin/nvcc" "${CUDA_PATH:-}/bin/nvcc" /usr/local/cuda/bin/nvcc \
                   $(ls -d /usr/local/cuda-*/bin/nvcc 2>/dev/null | sort -V -r); do
    if [[ -x "${candidate}" ]]; then echo "${candidate}"; return; fi
  done
}

NVCC="$(find_nvcc || true)"
if [[ -z "${NVCC}" ]]; then
  echo "build_cuda.sh: no nvcc found (PATH, \$CUDA_HOME/bin, /usr/local/cuda*/bin); install the CUDA" \
       "toolkit or set CUDACXX=/path/to/nvcc" >&2
  exit 1
fi
echo "build_cuda.sh: using ${NVCC} ($("${NVCC}" --version | tail -1))"
"${PYTHON}" -c "import scikit_build_core, pybind11" 2>/dev/null || {
  echo "build_cuda.sh: needs scikit-build-core and pybind11: ${PYTHON} -m pip install scikit-build-core pybind11" >&2
  exit 1
}

# CMake finds the compiler through CUDACXX; a build folder of its own keeps the CPU build's cache
# (TRANSPOSE_CUDA=OFF) apart.
CUDACXX="${NVCC}" "${PYTHON}" -m pip install --no-build-isolation -v \
  -Ccmake.define.TRANSPOSE_CUDA=ON \
  -Ccmake.define.CMAKE_CUDA_ARCHITECTURES="${CUDA_ARCHS:-80;90}" \
  -Cbuild-dir=build/cuda \
  "$@" .

"${PYTHON}" - <<'EOF'
import sys

import transpose
from transpose import _core

info = transpose.check()
if not info["cuda_kernels"]:
    sys.exit("build_cuda.sh: the installed transpose._core has no CUDA kernels (see the CMake output above)")
print(f"{'cuda_devices':16s} {_core.cuda_device_count()}")
EOF
