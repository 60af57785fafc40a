"""Data-parallel training (gloo, 2 processes on 127.0.0.1) through the shared loop, and train_init under torchrun.

The two-process runs start this file as a script, one process per rank with torchrun's environment
(WORLD_SIZE, RANK, LOCAL_RANK, MASTER_ADDR, MASTER_PORT), so the loop's own torchrun detection is
what is tested; the train_init test goes through ``python -m torch.distributed.run`` itself.
"""
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from torch.utils.data import Dataset, TensorDataset

from transpose.train import LoopConfig, load_checkpoint, train_loop
from transpose.train import distributed
from transpose.train.loop import _batches, pick_device
from transpose.train.logger import read_csv_log

ITERATIONS = 12
N_SAMPLES = 24


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class TwoHeads(torch.nn.Module):
    """An MLP plus a second head that the loss never uses (as SCRNet's sigma head in mode 0)."""

    def __init__(self, dropout: float):
        super().__init__()
        self.body = torch.nn.Sequential(torch.nn.Linear(5, 8), torch.nn.Tanh(), torch.nn.Dropout(dropout),
                                        torch.nn.Linear(8, 1))
        self.unused = torch.nn.Linear(5, 1)

    def forward(self, x):
        return self.body(x), self.unused(x)


def toy_problem(dropout: float = 0.0, bypass_forward: bool = False):
    """A float64 regression; ``bypass_forward``: the step calls the layers, never ``model(...)``."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(N_SAMPLES, 5, generator=g, dtype=torch.float64)
    w = torch.randn(5, 1, generator=g, dtype=torch.float64)
    data = TensorDataset(x, x @ w + 0.01 * torch.randn(N_SAMPLES, 1, generator=g, dtype=torch.float64))
    torch.manual_seed(0)
    model = TwoHeads(dropout).double()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=5, gamma=0.5)

    def step(batch, it):
        xb, yb = batch
        pred = xb
        if bypass_forward:
            for layer in model.body:
                pred = layer(pred)
        else:
            pred = model(xb)[0]
        return {"loss": torch.nn.functional.mse_loss(pred, yb), "first": xb[0, 0]}

    return model, opt, sched, data, step


def run_toy(out: Path, iterations: int, batch_size: int, resume: bool = False, **kw):
    dropout = kw.pop("dropout", 0.0)
    bypass = kw.pop("bypass_forward", False)
    model, opt, sched, data, step = toy_problem(dropout, bypass)
    cfg = LoopConfig(out=out, kind="toy", options={"width": 8}, iterations=iterations, batch_size=batch_size,
                     checkpoint_every=5, log_every=1, resume=resume, progress=False, **kw)
    summary = train_loop(model, opt, data, step, cfg, scheduler=sched)
    return model, summary


def _state(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


# ----------------------------------------------------------------------------- worker (one rank)


def worker(out: Path) -> None:
    """Every scenario of the two-process test, run by each rank in turn (same order on both)."""
    import transpose.train.loop as loop

    r = distributed.env_rank()
    torch.set_num_threads(1)
    saves = []
    real_save = loop.save_checkpoint

    def counting_save(path, **kwargs):  # which rank writes checkpoints, at which iterations
        saves.append((Path(path).name, kwargs["iteration"]))
        real_save(path, **kwargs)

    loop.save_checkpoint = counting_save
    manual = []
    real_average = distributed.average_gradients

    def counting_average(parameters):  # steps averaged by hand instead of by DDP
        manual.append(1)
        real_average(parameters)

    distributed.average_gradients = counting_average
    result = {}
    model, summary = run_toy(out / "equal.pt", ITERATIONS, batch_size=1)
    assert distributed.is_initialized() and distributed.world_size() == 2
    result["equal"] = {k: summary[k] for k in ("iterations", "world_size", "effective_batch")}
    result["manual_averages"] = [len(manual)]
    torch.save(_state(model), out / f"equal_rank{r}.pt")
    model, _ = run_toy(out / "bypass.pt", ITERATIONS, batch_size=1, bypass_forward=True)
    result["manual_averages"].append(len(manual))
    torch.save(_state(model), out / f"bypass_rank{r}.pt")
    # dropout makes the run depend on each rank's RNG, which the checkpoint must restore per rank
    straight, _ = run_toy(out / "straight.pt", 10, batch_size=2, dropout=0.3)
    run_toy(out / "resumed.pt", 4, batch_size=2, dropout=0.3)
    resumed, summary = run_toy(out / "resumed.pt", 10, batch_size=2, dropout=0.3, resume=True)
    result["resumed_from"] = summary["resumed_from"]
    torch.save({"straight": _state(straight), "resumed": _state(resumed)}, out / f"resume_rank{r}.pt")
    # only rank 1 runs out of time: both ranks must stop after the same (first) step, not hang
    _, summary = run_toy(out / "stop.pt", 50, batch_size=1, max_minutes=0.0 if r == 1 else None)
    result["stop_iterations"] = summary["iterations"]
    # a non-finite loss on rank 1 only: both ranks raise at the same iteration
    model, opt, _, data, step = toy_problem()
    nan_step = lambda batch, it: {"loss": step(batch, it)["loss"] * (float("nan") if r == 1 and it == 2 else 1.0)}
    try:
        train_loop(model, opt, data, nan_step, LoopConfig(out=out / "nan.pt", kind="toy", options={},
                                                          iterations=10, progress=False))
        result["nan"] = "no error"
    except FloatingPointError as exc:
        result["nan"] = str(exc)
    result["saves"] = saves
    (out / f"result_rank{r}.json").write_text(json.dumps(result))
    distributed.cleanup()


def launch_ranks(out: Path, world: int = 2, timeout: float = 120.0) -> None:
    port = free_port()
    procs = []
    for r in range(world):
        env = dict(os.environ, WORLD_SIZE=str(world), RANK=str(r), LOCAL_RANK=str(r), MASTER_ADDR="127.0.0.1",
                   MASTER_PORT=str(port), OMP_NUM_THREADS="1", TRANSPOSE_DIST_TIMEOUT_S="60")
        procs.append(subprocess.Popen([sys.executable, __file__, "worker", str(out)], env=env,
                                      stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
    deadline = time.time() + timeout
    logs = []
    try:
        for p in procs:
            logs.append(p.communicate(timeout=max(1.0, deadline - time.time()))[0])
    except subprocess.TimeoutExpired:
        for p in procs:
            p.kill()
        pytest.fail("distributed worker hung (a rank waited in a collective the other never reached)")
    for p, log in zip(procs, logs):
        assert p.returncode == 0, log[-3000:]


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory):
    out = tmp_path_factory.mktemp("ddp")
    launch_ranks(out)
    return out


def test_two_ranks_match_one_process_with_the_same_total_batch(two_ranks, tmp_path):
    w0, w1 = (torch.load(two_ranks / f"equal_rank{r}.pt") for r in (0, 1))
    single, summary = run_toy(tmp_path / "single.pt", ITERATIONS, batch_size=2)
    assert summary["world_size"] == 1 and summary["effective_batch"] == 2
    ref = _state(single)
    start = _state(toy_problem()[0])
    for k in ref:
        assert torch.equal(w0[k], w1[k]), k  # the ranks hold one model
        assert torch.allclose(w0[k], ref[k], rtol=0, atol=1e-10), (k, (w0[k] - ref[k]).abs().max())
        if k.startswith("unused"):  # no gradient on any rank: untouched, as in the single process
            assert torch.equal(w0[k], start[k])
        else:
            assert (ref[k] - start[k]).abs().max() > 1e-3  # and it did train
    res = json.loads((two_ranks / "result_rank0.json").read_text())
    assert res["equal"] == {"iterations": ITERATIONS, "world_size": 2, "effective_batch": 2}
    # model(x) went through DistributedDataParallel: no step needed the hand-made average
    assert res["manual_averages"][0] == 0
    # the logged loss is the mean over ranks, i.e. the single process's batch loss
    dist_log = read_csv_log(two_ranks / "equal_log" / "log.csv")
    single_log = read_csv_log(tmp_path / "single_log" / "log.csv")
    assert dist_log["iteration"] == single_log["iteration"] == [float(i) for i in range(1, ITERATIONS + 1)]
    assert max(abs(a - b) for a, b in zip(dist_log["loss"], single_log["loss"])) < 1e-10
    ckpt = load_checkpoint(two_ranks / "equal.pt", "toy")
    assert ckpt["iteration"] == ITERATIONS and ckpt["training"]["world_size"] == 2
    assert len(ckpt["training"]["rng_per_rank"]) == 2
    assert all(torch.equal(ckpt["model"][k], w0[k]) for k in w0)


def test_step_that_bypasses_forward_is_still_averaged(two_ranks, tmp_path):
    b0, b1 = (torch.load(two_ranks / f"bypass_rank{r}.pt") for r in (0, 1))
    ref = _state(run_toy(tmp_path / "single.pt", ITERATIONS, batch_size=2)[0])
    for k in ref:
        assert torch.equal(b0[k], b1[k]) and torch.allclose(b0[k], ref[k], rtol=0, atol=1e-10), k
    res = json.loads((two_ranks / "result_rank1.json").read_text())
    assert res["manual_averages"] == [0, ITERATIONS]  # DDP never saw these steps: averaged by hand


def test_distributed_resume_is_bit_identical(two_ranks):
    for r in (0, 1):
        s = torch.load(two_ranks / f"resume_rank{r}.pt")
        for k in s["straight"]:
            assert torch.equal(s["straight"][k], s["resumed"][k]), (r, k)
    assert json.loads((two_ranks / "result_rank1.json").read_text())["resumed_from"] == 4


def test_ranks_agree_on_stopping_and_only_rank0_writes(two_ranks):
    r0, r1 = (json.loads((two_ranks / f"result_rank{r}.json").read_text()) for r in (0, 1))
    assert r0["stop_iterations"] == r1["stop_iterations"] == 1
    assert load_checkpoint(two_ranks / "stop.pt")["iteration"] == 1
    assert "iteration 3" in r0["nan"] and "another rank" in r0["nan"]
    assert "iteration 3" in r1["nan"] and "loss became nan" in r1["nan"]
    assert r1["saves"] == []
    assert [tuple(s) for s in r0["saves"] if s[0] == "equal.pt"] == [("equal.pt", 5), ("equal.pt", 10),
                                                                      ("equal.pt", 12)]


# ----------------------------------------------------------------------------- one process


class Indices(Dataset):
    def __len__(self):
        return 10

    def __getitem__(self, i):
        return i


def test_rank_shards_union_to_the_single_process_batches():
    cfg = LoopConfig(out=Path("unused"), kind="x", options={}, iterations=1, batch_size=2, seed=5, progress=False)
    single_cfg = LoopConfig(out=Path("unused"), kind="x", options={}, iterations=1, batch_size=4, seed=5,
                            progress=False)
    for start in (0, 3):  # also from a resumed position (3 = second epoch, first step)
        single = [b.tolist() for _, b in zip(range(5), _batches(Indices(), single_cfg, start, 0, 1))]
        shards = [[b.tolist() for _, b in zip(range(5), _batches(Indices(), cfg, start, r, 2))] for r in (0, 1)]
        for k in range(5):
            # rank r holds positions r, r+2 of the global batch (interleaved), so the union is exact
            assert sorted(shards[0][k] + shards[1][k]) == sorted(single[k])
            assert [shards[0][k][0], shards[1][k][0], shards[0][k][1], shards[1][k][1]] == single[k]
    # 10 // 4 = 2 steps per epoch: epoch 1 starts with a new permutation on every rank
    assert len({tuple(sorted(b)) for b in single[:2]}) == 2


def test_single_process_stays_plain(monkeypatch, tmp_path):
    for var in ("WORLD_SIZE", "RANK", "LOCAL_RANK"):
        monkeypatch.delenv(var, raising=False)
    assert pick_device("cpu") == torch.device("cpu") and not distributed.is_initialized()
    with pytest.raises(ValueError, match="batch_size 30 x 1 process"):
        run_toy(tmp_path / "x.pt", 2, batch_size=30)


def test_backend_that_cannot_start_is_a_clear_error(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "0")
    monkeypatch.delenv("MASTER_ADDR", raising=False)
    monkeypatch.delenv("MASTER_PORT", raising=False)
    with pytest.raises(RuntimeError, match=r"WORLD_SIZE=2 \(rank 0\).*'gloo' backend could not initialise"):
        distributed.setup(torch.device("cpu"))
    if not torch.cuda.is_available():
        monkeypatch.setenv(distributed.BACKEND_ENV, "nccl")
        with pytest.raises(RuntimeError, match="NCCL needs CUDA"):
            pick_device("cpu")
    assert not distributed.is_initialized()


# ----------------------------------------------------------------------------- train_init under torchrun


def test_train_init_cli_under_torchrun(tmp_path):
    from transpose.data.synthetic import render_scene

    scene = render_scene(tmp_path / "tiny", "indoor", frames=20, width=160, height=120, seed=0, progress=False)
    net = tmp_path / "ddp.net"
    port = free_port()
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "1", "--nproc_per_node", "2",
           "--master_addr", "127.0.0.1", "--master_port", str(port), "-m", "transpose", "train_init",
           str(scene), str(net), "--section", "train_sim", "--iterations", "4", "--checkpoint_every", "2",
           "--width", "0.25", "--device", "cpu", "--seed", "1"]
    env = dict(os.environ, OMP_NUM_THREADS="1", TRANSPOSE_DIST_TIMEOUT_S="60")
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    assert proc.stdout.count("distributed: 2 processes (gloo), batch 1 per process = effective batch 2") == 1
    ckpt = load_checkpoint(net, "scr")
    assert ckpt["iteration"] == 4 and ckpt["training"]["world_size"] == 2
    assert [p.name for p in tmp_path.iterdir() if "ddp.net" in p.name] == ["ddp.net"]  # no temporaries left
    rows = read_csv_log(tmp_path / "ddp_log" / "log.csv")["iteration"]
    assert rows == [4.0]  # logged once (rank 0), not once per rank
    from transpose.train.scr import load_network

    model, options = load_network(net, "cpu")
    with torch.no_grad():
        coords, _ = model(torch.rand(1, model.in_channels, 120, 160))
    assert coords.shape == (1, 3, 15, 20) and torch.isfinite(coords).all()
    assert all(torch.equal(v, ckpt["model"][k]) for k, v in model.state_dict().items())


if __name__ == "__main__" and len(sys.argv) == 3 and sys.argv[1] == "worker":
    worker(Path(sys.argv[2]))
