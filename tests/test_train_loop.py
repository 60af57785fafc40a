import csv

import pytest
import torch
from torch.utils.data import TensorDataset

from transpose.train import CheckpointError, LoopConfig, load_checkpoint, train_loop
from transpose.train.loop import ResumableSampler


def make_problem(seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(64, 5, generator=g)
    w = torch.randn(5, 1, generator=g)
    data = TensorDataset(x, x @ w + 0.01 * torch.randn(64, 1, generator=g))
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(5, 8), torch.nn.Dropout(0.1), torch.nn.Linear(8, 1))
    opt = torch.optim.Adam(model.parameters(), lr=3e-2)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=30, gamma=0.5)

    def step(batch, it):
        xb, yb = batch
        return {"loss": torch.nn.functional.mse_loss(model(xb), yb)}

    return model, opt, sched, data, step


def run(tmp_path, iterations, resume=False, name="net.pt"):
    model, opt, sched, data, step = make_problem()
    cfg = LoopConfig(out=tmp_path / name, kind="toy", options={"width": 8}, iterations=iterations,
                     batch_size=4, checkpoint_every=5, log_every=1, resume=resume, progress=False)
    summary = train_loop(model, opt, data, step, cfg, scheduler=sched)
    return model, summary


def test_loss_decreases_and_log_written(tmp_path):
    _, summary = run(tmp_path, 40)
    rows = list(csv.DictReader(open(tmp_path / "net_log" / "log.csv")))
    assert len(rows) == 40
    first = sum(float(r["loss"]) for r in rows[:5]) / 5
    last = sum(float(r["loss"]) for r in rows[-5:]) / 5
    assert last < 0.3 * first
    ckpt = load_checkpoint(tmp_path / "net.pt", "toy")
    assert ckpt["iteration"] == 40 and ckpt["options"] == {"width": 8}


def test_resume_is_bit_identical_to_uninterrupted(tmp_path):
    straight, _ = run(tmp_path / "a", 23)
    run(tmp_path / "b", 12)  # stops at 12 (checkpoint at 12 since it is the end)
    resumed, summary = run(tmp_path / "b", 23, resume=True)
    assert summary["resumed_from"] == 12
    for p, q in zip(straight.parameters(), resumed.parameters()):
        assert torch.equal(p, q)
    # the CSV of the resumed run has each iteration once
    rows = list(csv.DictReader(open(tmp_path / "b" / "net_log" / "log.csv")))
    assert [int(float(r["iteration"])) for r in rows] == list(range(1, 24))


def test_wrong_kind_and_garbage(tmp_path):
    run(tmp_path, 3)
    with pytest.raises(CheckpointError, match="is a 'toy' checkpoint, expected 'scr'"):
        load_checkpoint(tmp_path / "net.pt", "scr")
    bad = tmp_path / "bad.net"
    bad.write_bytes(b"garbage")
    with pytest.raises(CheckpointError, match="bad.net: not a readable checkpoint"):
        load_checkpoint(bad)
    torch.save({"conv1.weight": torch.zeros(1)}, tmp_path / "dsac.net")
    with pytest.raises(CheckpointError, match="not a transpose checkpoint"):
        load_checkpoint(tmp_path / "dsac.net")


def test_sampler_shards_and_resumes():
    full = list(ResumableSampler(10, seed=3))
    assert sorted(full) == list(range(10))
    s = ResumableSampler(10, seed=3)
    s.set_epoch(0, start=4)
    assert list(s) == full[4:]
    a, b = ResumableSampler(10, 3, 0, 2), ResumableSampler(10, 3, 1, 2)
    assert sorted(list(a) + list(b)) == list(range(10)) and len(list(a)) == 5


def test_lr_schedule_follows_progress(tmp_path):
    model, opt, _, data, step = make_problem()
    seen = []

    def recording_step(batch, it):
        seen.append(opt.param_groups[0]["lr"])
        return step(batch, it)

    cfg = LoopConfig(out=tmp_path / "s.pt", kind="toy", options={}, iterations=10, batch_size=4,
                     progress=False, lr_schedule=lambda p: 1.0 - p)
    train_loop(model, opt, data, recording_step, cfg)
    # the step sees the rate set for the previous update: 3e-2 * (1 - i / 10)
    assert abs(opt.param_groups[0]["lr"] - 3e-2 * 0.1) < 1e-12
    assert abs(seen[5] - 3e-2 * (1 - 4 / 10)) < 1e-12


def test_make_adam_is_fused_and_steps_like_adam():
    from transpose.train.loop import make_adam

    torch.manual_seed(0)
    a = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 3))
    b = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 3))
    b.load_state_dict(a.state_dict())
    fused = make_adam([{"params": a[0].parameters(), "lr": 1e-2}, {"params": a[2].parameters(), "lr": 1e-3}])
    plain = torch.optim.Adam([{"params": b[0].parameters(), "lr": 1e-2}, {"params": b[2].parameters(), "lr": 1e-3}])
    if tuple(int(v) for v in torch.__version__.split(".")[:2]) >= (2, 4):
        assert fused.defaults.get("fused") is True
    x = torch.randn(32, 8)
    for _ in range(20):
        for net, opt in ((a, fused), (b, plain)):
            opt.zero_grad()
            net(x).square().mean().backward()
            opt.step()
    for pa, pb in zip(a.parameters(), b.parameters()):
        assert torch.allclose(pa, pb, atol=1e-6)


class _WhoLoads(torch.utils.data.Dataset):
    """Item i -> (i, pid of the process that loaded it)."""

    def __len__(self):
        return 8

    def __getitem__(self, i):
        import os

        return torch.tensor([i, os.getpid()])


def test_loader_workers_live_across_epochs_and_order_matches_the_main_process():
    from transpose.train.loop import _batches

    def epochs(workers):
        cfg = LoopConfig(out="unused", kind="test", options={}, iterations=1, batch_size=2, num_workers=workers, seed=3)
        it = _batches(_WhoLoads(), cfg, start_iteration=1, rank=0, world=1)  # resume one batch in
        rows = [next(it) for _ in range(3 + 4 + 4)]  # the rest of epoch 0, then epochs 1 and 2
        return [r[:, 0].tolist() for r in rows], [set(r[:, 1].tolist()) for r in rows]

    order0, _ = epochs(0)
    order2, pids = epochs(2)
    assert order2 == order0  # the sampler decides the order, wherever items are loaded
    first, later = set().union(*pids[:3]), set().union(*pids[3:])
    assert len(first) == 2 and later == first  # the same two worker processes every epoch
