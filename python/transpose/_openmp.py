"""Load exactly one OpenMP runtime before the native core.

torch wheels bundle their own ``libgomp`` (renamed, e.g. ``libgomp-a34b3233.so.1``). A native
extension linked to the system ``libgomp.so.1`` would put a second OpenMP runtime in the same
process, with two thread pools fighting for the cores. ``_core`` is therefore compiled with
``-fopenmp`` but does not name libgomp as a dependency; this module loads one runtime with
``RTLD_GLOBAL`` so that ``_core``'s ``GOMP_*`` symbols bind to it:

1. the libgomp torch bundles, when torch is installed (found without importing torch; when torch
   later loads it, the dynamic loader reuses the same copy by its soname);
2. otherwise the system libgomp.

If torch was imported first, step 1 finds the copy already in the process and promotes it to global
scope; no second copy is loaded either way.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import glob
import importlib.util
import os

_loaded: str | None = None


def _torch_libgomp() -> str | None:
    spec = importlib.util.find_spec("torch")
    if spec is None or not spec.submodule_search_locations:
        return None
    for root in spec.submodule_search_locations:
        hits = sorted(glob.glob(os.path.join(root, "lib", "libgomp*.so*")))
        if hits:
            return hits[0]
    return None


def _system_libgomp() -> str | None:
    return ctypes.util.find_library("gomp")


def load_runtime() -> str | None:
    """Load (once) the OpenMP runtime that ``_core`` binds to; return its path or name."""
    global _loaded
    if _loaded is not None:
        return _loaded
    for candidate in (_torch_libgomp(), _system_libgomp(), "libgomp.so.1"):
        if not candidate:
            continue
        try:
            ctypes.CDLL(candidate, mode=ctypes.RTLD_GLOBAL)
        except OSError:
            continue
        _loaded = candidate
        return _loaded
    return None


def loaded_runtimes() -> list[str]:
    """Paths of every OpenMP runtime mapped into this process (Linux; empty elsewhere)."""
    try:
        with open("/proc/self/maps") as fh:
            paths = {line.split()[-1] for line in fh if "libgomp" in line or "libiomp" in line}
    except OSError:
        return []
    return sorted(p for p in paths if p.startswith("/"))
