#!/usr/bin/env bash
# Rebuild transpose with the optional CUDA kernels (needs nvcc; the CPU core is always built).
#   bash setup_scripts/build_cuda.sh            # install with CUDA kernels
# Falls back to a CPU-only build (with a CMake warning) when no CUDA compiler is found.
set -euo pipefail
cd "$(dirname "$0")/.."
TRANSPOSE_CUDA=ON python -m pip install --no-build-isolation -v . "$@"
python -c "import transpose; transpose.check()"
