"""transpose: visual relocalization from one image of a known scene.

Poses are camera-to-world 4x4 matrices in metres; cameras follow OpenCV (x right, y down,
z forward). See ``transpose.geometry`` for every convention.
"""
from __future__ import annotations

__version__ = "0.1.0"

from . import _openmp

_openmp.load_runtime()

from . import _core  # noqa: E402  (must come after the OpenMP runtime is loaded)


def check(verbose: bool = True) -> dict:
    """Sanity-check the installation; return a dict of what was found, print it when verbose."""
    import numpy as np

    info = {
        "version": __version__,
        "native_core": _core.__file__,
        "openmp": bool(_core.has_openmp()),
        "openmp_threads": int(_core.max_threads()),
        "openmp_runtimes": _openmp.loaded_runtimes(),
        "cuda_kernels": bool(getattr(_core, "has_cuda", lambda: False)()),
    }
    try:
        import torch

        info["torch"] = torch.__version__
        info["torch_cuda"] = bool(torch.cuda.is_available())
    except ImportError:  # torch is a dependency, but keep the check usable without it
        info["torch"] = None
    info["numpy"] = np.__version__
    if verbose:
        for key, value in info.items():
            print(f"{key:16s} {value}")
    return info
