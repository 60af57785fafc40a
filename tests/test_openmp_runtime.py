"""One OpenMP runtime per process, whichever of transpose._core and torch is imported first."""
import json
import subprocess
import sys
import textwrap

import pytest

SCRIPT = textwrap.dedent(
    """
    import json
    import numpy as np
    FIRST = {first!r}
    if FIRST == "torch":
        import torch
        import transpose
        from transpose import _core
    else:
        import transpose
        from transpose import _core
        import torch
    from transpose import ransac, geometry as g

    # threaded batch RANSAC (2 frames, 2 threads) on a small synthetic map
    rng = np.random.default_rng(0)
    H, W = 12, 16
    K = g.intrinsics_from_focal(100.0, 128, 96)
    T = g.make_pose(g.quat_to_rotmat(rng.normal(size=4)), rng.normal(size=3))
    px = g.cell_centers(H, W, 8).reshape(-1, 2)
    d = rng.uniform(1, 4, size=len(px))
    cam = np.c_[(px - K[:2, 2]) / 100.0 * d[:, None], d]
    coords = g.transform_points(T, cam).T.reshape(3, H, W)
    res = ransac.estimate_pose_batch(np.stack([coords, coords]), K, seed=[1, 2], num_threads=2)
    rot, trans = g.pose_errors(res[0].pose, T)

    # threaded torch op
    torch.set_num_threads(2)
    a = torch.randn(256, 256)
    b = (a @ a).sum().item()

    print(json.dumps({{"runtimes": transpose._openmp.loaded_runtimes(), "rot": float(rot),
                       "trans": float(trans), "core_openmp": bool(_core.has_openmp()),
                       "torch_threads": torch.get_num_threads(), "finite": b == b}}))
    """
)


@pytest.mark.parametrize("first", ["core", "torch"])
def test_exactly_one_libgomp(first):
    proc = subprocess.run([sys.executable, "-c", SCRIPT.format(first=first)], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert len(out["runtimes"]) == 1, out["runtimes"]
    assert "gomp" in out["runtimes"][0]
    assert out["rot"] < 1e-3 and out["trans"] < 1e-4
    assert out["torch_threads"] == 2 and out["finite"]
    assert out["core_openmp"]
