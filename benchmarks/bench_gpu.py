"""GPU RANSAC against the CPU core on the same frames, and the frame rate of the whole test loop.

Frames as bench_ransac.py: 80x60 coordinate maps at stride 8 (4800 correspondences), 640x480, f =
525, 1 px noise, 30-70 % outliers. For 64, 256 and 1024 hypotheses (DSAC*'s fixed-count test mode,
argmax, refinement of the winner) it prints ms per frame of:

- the CPU core (``estimate_pose`` on a numpy map; one thread per frame unless the work is large,
  the core's automatic choice, or ``--cpu-threads``);
- the GPU route (``estimate_pose`` on a CUDA tensor already on the GPU, as a network leaves it:
  sampling + P3P on the CPU, every hypothesis scored by the kernel, refinement on the CPU);
- the kernel's share of it (``ransac_gpu.score_hypotheses`` on M hypotheses: upload, kernel,
  download), and the GPU route over all frames in one ``estimate_pose_batch`` call;

with median rotation / translation errors and how often both picked the same hypothesis (same
seed, same hypotheses: they should, up to near-ties). Then the whole test loop on a synthetic frame
set: a 640x480 image to the GPU, the SCR network, RANSAC on its map (GPU route, or the map copied
to the CPU core as without the kernels), in frames per second. An untrained network predicts no
usable coordinates, so the loop adds the frame's synthetic map to ``0 *`` the prediction: the
network's work and the data dependency stay, RANSAC sees a solvable map.

    python benchmarks/bench_gpu.py            # 10 frames per outlier ratio, 50 loop frames
    python benchmarks/bench_gpu.py --quick    # 3 frames per ratio, 20 loop frames

Needs a CUDA device and transpose built with the kernels (``bash setup_scripts/build_cuda.sh``);
exits with a message otherwise. Prints timings, never asserts on them.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path
from typing import Callable, Dict, List, Optional

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_ransac import FOCAL, HEIGHT, STRIDE, WIDTH, H, W, Frame, make_frame  # noqa: E402

from transpose import geometry as g  # noqa: E402
from transpose import ransac, ransac_gpu  # noqa: E402


def require_gpu() -> "object":
    """torch, when a CUDA device and the kernels are there; else exit with the reason."""
    try:
        import torch
    except ImportError:
        sys.exit("bench_gpu: needs torch")
    if not torch.cuda.is_available():
        sys.exit("bench_gpu: no CUDA device (torch.cuda.is_available() is False); nothing to compare")
    if not ransac_gpu.extension_has_cuda():
        sys.exit("bench_gpu: transpose._core was built without CUDA kernels; "
                 "rebuild it with `bash setup_scripts/build_cuda.sh`")
    if not ransac_gpu.cuda_available():
        sys.exit("bench_gpu: the CUDA kernels are compiled in but see no device (driver older than the "
                 "toolkit they were built with?)")
    return torch


def timed(fn: Callable[[], object], sync: Callable[[], None]) -> "tuple[float, object]":
    """(ms, result) of one call, the device idle before and after."""
    sync()
    t0 = time.perf_counter()
    out = fn()
    sync()
    return 1000 * (time.perf_counter() - t0), out


def errors(pose: Optional[np.ndarray], T: np.ndarray) -> "tuple[float, float]":
    if pose is None:
        return float("inf"), float("inf")
    r, t = g.pose_errors(pose, T)
    return float(r), float(t)


def solve(coords, K: np.ndarray, M: int, seed: int, **kwargs) -> Optional[ransac.PoseResult]:
    try:
        return ransac.estimate_pose(coords, K, stride=STRIDE, num_hypotheses=M, seed=seed, **kwargs)
    except ValueError:  # no hypothesis: counted as a failure
        return None


def bench_ransac(torch, ratios: List[float], hypotheses: List[int], n_frames: int, cpu_threads: int) -> None:
    sync = torch.cuda.synchronize
    print(f"# RANSAC: {H * W} cells, {WIDTH}x{HEIGHT}, f={FOCAL}, {n_frames} frames per row; "
          f"GPU: {torch.cuda.get_device_name()}")
    header = ("| outliers | hypotheses | CPU ms/frame | GPU ms/frame | CPU/GPU | GPU scoring ms | GPU batch ms/frame "
              "| CPU rot / trans (deg / cm) | GPU rot / trans (deg / cm) | same winner |")
    print(header)
    print("|" + "---|" * (header.count("|") - 1))
    for ratio in ratios:
        frames: List[Frame] = [make_frame(7000 * int(100 * ratio) + k, ratio) for k in range(n_frames)]
        device_maps = [torch.from_numpy(f.coords).cuda() for f in frames]  # where a network leaves them
        batch = torch.stack(device_maps)
        for M in hypotheses:
            solve(frames[0].coords, frames[0].K, M, 0, num_threads=cpu_threads)  # warm-up, not timed
            solve(device_maps[0], frames[0].K, M, 0, device="cuda")
            cpu_ms, gpu_ms, score_ms, same = [], [], [], 0
            cpu_err, gpu_err = [], []
            rng = np.random.default_rng(M)
            for k, f in enumerate(frames):  # CPU and GPU take turns frame by frame
                ms, cpu = timed(lambda: solve(f.coords, f.K, M, k, num_threads=cpu_threads), sync)
                cpu_ms.append(ms)
                ms, gpu = timed(lambda: solve(device_maps[k], f.K, M, k, device="cuda"), sync)
                gpu_ms.append(ms)
                cpu_err.append(errors(None if cpu is None else cpu.pose, f.T_c2w))
                gpu_err.append(errors(None if gpu is None else gpu.pose, f.T_c2w))
                same += int(cpu is not None and gpu is not None and cpu.selected == gpu.selected)
                # the kernel's share: M hypotheses near the true pose, scored in one call
                w2c = g.invert_pose(f.T_c2w)
                R = np.stack([g.rvec_to_rotmat(rng.normal(scale=0.05, size=3)) @ w2c[:3, :3] for _ in range(M)])
                t = w2c[:3, 3] + rng.normal(scale=0.1, size=(M, 3))
                ms, _ = timed(lambda: ransac_gpu.score_hypotheses(device_maps[k][None], f.K, R[None], t[None]), sync)
                score_ms.append(ms)
            ms_batch, _ = timed(lambda: ransac.estimate_pose_batch(batch, frames[0].K, seed=list(range(n_frames)),
                                                                   num_hypotheses=M, device="cuda"), sync)
            cpu_med, gpu_med = statistics.median(cpu_ms), statistics.median(gpu_ms)

            def err_text(errs):
                rot = statistics.median(e[0] for e in errs)
                trans = statistics.median(e[1] for e in errs)
                return f"{rot:.3f} / {100 * trans:.2f}"

            print(f"| {100 * ratio:.0f} % | {M} | {cpu_med:.2f} | {gpu_med:.2f} | {cpu_med / gpu_med:.1f}x "
                  f"| {statistics.median(score_ms):.3f} | {ms_batch / n_frames:.2f} | {err_text(cpu_err)} "
                  f"| {err_text(gpu_err)} | {same}/{n_frames} |")


def bench_loop(torch, n_frames: int, width: float, M: int, cpu_threads: int) -> None:
    """Frames per second of image -> GPU -> network -> RANSAC, GPU route against the CPU core."""
    from transpose.models.scr import SCRNet, output_size

    device = torch.device("cuda")
    net = SCRNet(width=width).to(device).eval()
    h, w = output_size(HEIGHT, WIDTH)
    assert (h, w) == (H, W), f"network grid {(h, w)} != map grid {(H, W)}"
    rng = np.random.default_rng(0)
    frames = [make_frame(90000 + k, 0.5) for k in range(n_frames)]
    images = [torch.from_numpy(rng.normal(size=(1, 1, HEIGHT, WIDTH)).astype(np.float32)).pin_memory()
              for _ in range(n_frames)]
    maps = [torch.from_numpy(f.coords).to(device) for f in frames]

    def network(k: int):
        with torch.no_grad():
            pred, _ = net(images[k].to(device, non_blocking=True))
        return pred[0] * 0 + maps[k]  # the network's work, a solvable map

    def gpu_route(k: int):
        return solve(network(k), frames[k].K, M, k, device="cuda")

    def cpu_route(k: int):
        return solve(network(k).double().cpu().numpy(), frames[k].K, M, k, num_threads=cpu_threads)

    def network_only(k: int):
        network(k).sum().item()  # wait for it

    print(f"\n# test loop: {n_frames} frames, 640x480 image -> SCR network (width {width}) -> RANSAC "
          f"({M} hypotheses), one frame at a time")
    print("| loop | frames/s | ms/frame | % within 5 cm, 5 deg |")
    print("|---|---|---|---|")
    for name, step in (("network only", network_only), ("network + GPU RANSAC", gpu_route),
                       ("network + CPU RANSAC (map copied to the host)", cpu_route)):
        for k in range(min(3, n_frames)):  # warm-up: cuDNN autotuning, first launches
            step(k)
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        results = [step(k) for k in range(n_frames)]
        torch.cuda.synchronize()
        seconds = time.perf_counter() - t0
        if name == "network only":
            within = ""
        else:
            ok = [r is not None and all(a < b for a, b in zip(errors(r.pose, f.T_c2w), (5.0, 0.05)))
                  for r, f in zip(results, frames)]
            within = f"{100.0 * sum(ok) / len(ok):.0f}"
        print(f"| {name} | {n_frames / seconds:.1f} | {1000 * seconds / n_frames:.2f} | {within} |")


def main(argv: Optional[List[str]] = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="3 frames per ratio, 20 loop frames")
    p.add_argument("--frames", type=int, default=10, help="frames per outlier ratio")
    p.add_argument("--outliers", type=float, nargs="+", default=[0.3, 0.5, 0.7])
    p.add_argument("--hypotheses", type=int, nargs="+", default=[64, 256, 1024])
    p.add_argument("--cpu-threads", type=int, default=0,
                   help="CPU core threads per frame (0: the core's automatic choice)")
    p.add_argument("--loop-frames", type=int, default=50, help="frames of the test-loop benchmark (0: skip)")
    p.add_argument("--loop-hypotheses", type=int, default=64, help="hypotheses in the test loop")
    p.add_argument("--width", type=float, default=1.0, help="SCR network width (1.0: DSAC*'s full network)")
    args = p.parse_args(argv)
    if args.quick:
        args.frames, args.loop_frames = 3, 20
    if args.frames < 1:
        p.error("--frames must be >= 1")
    torch = require_gpu()
    bench_ransac(torch, args.outliers, args.hypotheses, args.frames, args.cpu_threads)
    if args.loop_frames > 0:
        bench_loop(torch, args.loop_frames, args.width, args.loop_hypotheses, args.cpu_threads)


if __name__ == "__main__":
    main()
