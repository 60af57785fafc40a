"""The cluster-classification coordinate head: k-means, loss, network, and that training learns."""
import inspect
import math

import numpy as np
import pytest
import torch

from transpose import cli
from transpose.losses import cluster_loss, kmeans
from transpose.models.scr import SCRNet
from transpose.train.logger import read_csv_log


def test_kmeans_finds_separated_clusters():
    g = torch.Generator().manual_seed(0)
    true = torch.tensor([[0.0, 0.0, 0.0], [5.0, 0.0, 0.0], [0.0, 5.0, 5.0]])
    pts = torch.cat([c + 0.1 * torch.randn(200, 3, generator=g) for c in true])
    found = kmeans(pts, 3, seed=1)
    d = torch.cdist(true, found)
    assert d.min(dim=1).values.max() < 0.05


def test_cluster_loss_matches_hand_computation():
    centers = torch.tensor([[0.0, 0.0, 0.0], [1.0, 0.0, 0.0]])
    target = torch.tensor([0.9, 0.0, 0.0]).view(1, 3, 1, 1)      # nearest centre: 1
    logits = torch.tensor([0.0, math.log(3.0)]).view(1, 2, 1, 1)  # p(1) = 3/4
    offsets = torch.tensor([0.0, 0.1, 0.0]).view(1, 3, 1, 1)      # centre 1 + offset = (1, 0.1, 0)
    mask = torch.ones(1, 1, 1, dtype=torch.bool)
    loss, stats = cluster_loss(logits, offsets, centers, target, mask)
    expected = -math.log(0.75) + math.hypot(0.1, 0.1)
    assert abs(loss.item() - expected) < 1e-6 and stats["accuracy"].item() == 1.0


def test_network_decodes_center_plus_offset():
    net = SCRNet(width=0.25, num_clusters=8)
    net.cluster_centers.copy_(torch.arange(24, dtype=torch.float32).view(8, 3))
    coords, _ = net(torch.randn(1, 1, 32, 32))
    logits, offsets = net.cluster_outputs()
    expected = net.cluster_centers[logits.argmax(1)].permute(0, 3, 1, 2) + offsets
    assert torch.equal(coords, expected)
    clone = SCRNet.from_options(net.options())
    clone.load_state_dict(net.state_dict())
    assert torch.equal(clone.cluster_centers, net.cluster_centers)


def test_training_with_clusters_learns(tmp_path):
    from transpose.data.synthetic import render_scene

    render_scene(tmp_path / "s", "indoor", frames=8, width=160, height=120, seed=0, progress=False)
    net = tmp_path / "c.net"
    assert cli._run("train_init", [str(tmp_path / "s"), str(net), "--section", "train_sim", "--clusters", "64",
                                   "--iterations", "300", "--width", "0.5", "--no_augment", "--learningrate", "2e-3",
                                   "--seed", "0"]) == 0
    err = np.asarray(read_csv_log(tmp_path / "c_log" / "log.csv")["coord_error"])
    assert err[-3:].mean() < 0.5 * err[:3].mean()

    # --init fine-tunes that network: its width, head, centres and weights, whatever the flags say
    from transpose.train.scr import load_network

    before, _ = load_network(net)
    tuned = tmp_path / "t.net"
    assert cli._run("train_init", [str(tmp_path / "s"), str(tuned), "--section", "train_sim", "--init", str(net),
                                   "--width", "1.0", "--clusters", "8", "--iterations", "20", "--no_augment",
                                   "--learningrate", "1e-5", "--seed", "0"]) == 0
    err_tuned = np.asarray(read_csv_log(tmp_path / "t_log" / "log.csv")["coord_error"])
    assert err_tuned.mean() < 0.5 * err[:3].mean()  # starts where the first run ended, not from scratch
    after, options = load_network(tuned)
    assert options["width"] == 0.5 and options["num_clusters"] == 64
    assert torch.equal(after.cluster_centers, before.cluster_centers)
    assert cli._run("train_init", [str(tmp_path / "s"), str(tmp_path / "x.net"), "--init",
                                   str(tmp_path / "missing.net")]) == 2


def test_cluster_confidence_matches_hand_computation():
    from transpose.models.scr import cluster_confidence

    p = torch.tensor([0.7, 0.1, 0.1, 0.1])
    conf = cluster_confidence(p.log().view(1, 4, 1, 1))
    assert abs(conf[0, 0, 0, 0].item() - math.log(0.3)) < 1e-6
    assert abs(conf[0, 1, 0, 0].item() - float(-(p * p.log()).sum())) < 1e-6
    # near-certain cells keep their resolution: 1 - p_max = 3e-12 is not rounded to 0
    certain = torch.tensor([0.0, -30.0, -30.0, -30.0]).view(1, 4, 1, 1)
    assert abs(cluster_confidence(certain)[0, 0, 0, 0].item() - (math.log(3.0) - 30.0)) < 1e-4


def test_sigma_confidence_starts_at_the_head_and_old_checkpoints_load():
    torch.manual_seed(0)
    net = SCRNet(width=0.25, num_clusters=8, uncertainty=True)
    assert net.sigma_confidence is not None and net.options()["sigma_confidence"] is True
    # an older checkpoint (no sigma_confidence in its options or weights) loads as before
    old_options = {k: v for k, v in net.options().items() if k != "sigma_confidence"}
    old = SCRNet.from_options(old_options)
    state = {k: v for k, v in net.state_dict().items() if not k.startswith("sigma_confidence.")}
    old.load_state_dict(state)
    assert old.sigma_confidence is None
    image = torch.randn(1, 1, 32, 32)
    _, sigma_new = net(image)
    _, sigma_old = old(image)
    assert torch.allclose(sigma_new, sigma_old)  # zero start: the head's sigma alone
    with torch.no_grad():
        net.sigma_confidence.weight.copy_(torch.tensor([1.0, 0.0]).view(1, 2, 1, 1))
    _, sigma = net(image)
    expected = torch.exp((sigma_old.log() + _last_confidence(net)[:, :1]).clamp(-6.0, 3.0))
    assert torch.allclose(sigma, expected, rtol=1e-5)
    try:
        SCRNet(width=0.25, num_clusters=0, uncertainty=True, sigma_confidence=True)
    except ValueError as exc:
        assert "sigma_confidence" in str(exc)
    else:
        raise AssertionError("sigma_confidence without clusters must raise")


def test_init_from_an_older_cluster_network_adds_the_confidence_term_at_zero(tmp_path):
    from transpose.train.checkpoint import save_checkpoint
    from transpose.train.scr import KIND, InitConfig, build_network

    torch.manual_seed(0)
    old = SCRNet(width=0.25, num_clusters=8, uncertainty=True, sigma_confidence=False)
    options = {k: v for k, v in old.options().items() if k != "sigma_confidence"}  # as saved before the term
    save_checkpoint(tmp_path / "old.net", kind=KIND, model=old, options=options, iteration=100)
    net = build_network(InitConfig(scene="unused", out=str(tmp_path / "new.net"), init=str(tmp_path / "old.net")), [])
    assert net.sigma_confidence is not None and net.options()["sigma_confidence"] is True
    assert not net.sigma_confidence.weight.detach().any()
    image = torch.randn(1, 1, 32, 32)
    old.eval(), net.eval()
    for a, b in zip(old(image), net(image)):
        assert torch.equal(a, b)  # the same network until training moves the term
    assert not net.add_sigma_confidence()  # once only
    assert not SCRNet(width=0.25, num_clusters=8, uncertainty=False).add_sigma_confidence()


def _last_confidence(net):
    from transpose.models.scr import cluster_confidence

    return cluster_confidence(net.cluster_outputs()[0])


def test_parameter_groups_speed_up_only_the_sigma_head():
    from transpose.train.scr import SIGMA_LR_FACTOR, parameter_groups

    net = SCRNet(width=0.25, num_clusters=8, uncertainty=True)
    groups = parameter_groups(net, 1e-3)
    sigma_ids = {id(p) for m in (net.sigma_head, net.sigma_confidence) for p in m.parameters()}
    assert [g["lr"] for g in groups] == [1e-3, 1e-3 * SIGMA_LR_FACTOR]
    assert {id(p) for p in groups[1]["params"]} == sigma_ids
    assert len(groups[0]["params"]) + len(groups[1]["params"]) == len(list(net.parameters()))
    assert len(parameter_groups(SCRNet(width=0.25), 1e-3)) == 1


def test_weighting_uses_inverse_variance(monkeypatch):
    from transpose import evaluate, ransac

    seen = {}
    monkeypatch.setattr(ransac, "estimate_pose", lambda coords, K, stride, weights=None, **kw: seen.update(w=weights))
    sigma = np.array([[0.5, 2.0]])
    evaluate.solve_frame(np.zeros((3, 1, 2)), np.eye(3), sigma, evaluate.RansacOptions(uncertainty="weight"))
    assert np.allclose(seen["w"], [[4.0, 0.25]])


def test_uncertain_cluster_network_is_weighted_by_default(tmp_path):
    import json

    from transpose.data.synthetic import render_scene
    from transpose.train.scr import load_network

    render_scene(tmp_path / "s", "indoor", frames=6, width=96, height=64, seed=0, progress=False)
    net = tmp_path / "u.net"
    assert cli._run("train_init", [str(tmp_path / "s"), str(net), "--section", "train_sim", "--clusters", "32",
                                   "--uncertainty", "--iterations", "60", "--width", "0.25", "--no_augment",
                                   "--seed", "0"]) == 0
    trained, options = load_network(net)
    assert options["sigma_confidence"] and trained.sigma_confidence.weight.abs().max() > 1e-3  # the NLL reached it
    assert cli._run("test", [str(tmp_path / "s"), str(net), "--section", "train_sim", "--out", str(tmp_path / "r")]) == 0
    settings = json.loads((tmp_path / "r" / "results.json").read_text())["settings"]
    assert settings["ransac"]["uncertainty"] == "weight"


# --------------------------------------------------------------------------- closed-form offset readout

def test_pca_basis_gives_unit_variance_uncorrelated_projections():
    from transpose.train.readout import pca_basis

    g = torch.Generator().manual_seed(0)
    mixing = torch.randn(6, 6, generator=g)
    x = torch.randn(5000, 6, generator=g) @ mixing + 3.0
    mean, basis = pca_basis(x, 4)
    z = (x - mean) @ basis
    cov = (z.T @ z / (len(z) - 1)).double()
    assert torch.allclose(cov, torch.eye(4, dtype=torch.float64), atol=1e-3)
    assert torch.allclose(mean, x.mean(0), atol=1e-5)
    # the leading directions: the projections keep more variance than any other 4 directions
    evals = torch.linalg.eigvalsh(torch.cov(x.T.double())).flip(0)
    kept = (basis.double() / basis.double().norm(dim=0)).T @ torch.cov(x.T.double()) @ (basis.double() / basis.double().norm(dim=0))
    assert abs(kept.trace().item() - evals[:4].sum().item()) < 1e-3 * evals.sum().item()


def test_readout_system_recovers_linear_offsets_and_matches_the_ridge_formula():
    from transpose.train.readout import ReadoutSystem

    g = torch.Generator().manual_seed(1)
    true_w = torch.randn(3, 5, 3, generator=g)                # 3 clusters, 4 features + bias
    z = torch.randn(600, 4, generator=g)
    labels = torch.arange(600) % 3
    y = torch.einsum("nd,ndc->nc", torch.cat([z, torch.ones(600, 1)], 1), true_w[labels])
    system = ReadoutSystem(4, 4)                               # cluster 3 never seen
    system.add(z, y, labels, chunk=128)
    w, rms_before, rms_after = system.solve(ridge=0.0)
    assert torch.allclose(w[:3], true_w, atol=1e-4) and w[3].abs().max() == 0
    assert rms_after < 1e-4 < rms_before
    assert abs(rms_before - y.pow(2).sum(1).mean().sqrt().item()) < 1e-5

    # one feature, two cells: slope = sum(z y) / (sum(z^2) + ridge), the bias is not penalised
    one = ReadoutSystem(1, 1)
    one.add(torch.tensor([[1.0], [-1.0]]), torch.tensor([[2.0, 0.0, 0.0], [-2.0, 0.0, 0.0]]) + 0.5, torch.tensor([0, 0]))
    w, _, rms_after = one.solve(ridge=2.0)
    assert torch.allclose(w[0, :, 0], torch.tensor([1.0, 0.5]), atol=1e-6)   # slope 4 / (2 + 2), bias 0.5
    assert abs(rms_after - math.sqrt(((2 - 1) ** 2 + (-2 + 1) ** 2) / 2)) < 1e-6


def test_readout_system_buffers_cells_and_sums_each_clusters_normal_equations():
    from transpose.train.readout import ReadoutSystem

    # many small adds, accumulated 100 cells at a time and grouped by cluster, the rest in solve:
    # the same normal equations and ridge solution as summing every cell's outer product
    g = torch.Generator().manual_seed(2)
    z, y = torch.randn(500, 3, generator=g), torch.randn(500, 3, generator=g)
    labels = torch.randint(0, 5, (500,), generator=g)
    system = ReadoutSystem(5, 3)
    for s in range(0, 500, 37):
        system.add(z[s:s + 37], y[s:s + 37], labels[s:s + 37], chunk=100)
    w, _, _ = system.solve(ridge=1.0)
    assert torch.equal(system.solve(ridge=1.0, block=2)[0], w)   # solved a few clusters at a time: the same
    zc = torch.cat([z, torch.ones(500, 1)], 1).double()
    for k in range(5):
        sel = labels == k
        A, b = zc[sel].T @ zc[sel], zc[sel].T @ y[sel].double()
        assert torch.allclose(system.A[k], A) and torch.allclose(system.b[k], b)
        expected = torch.linalg.solve(A + torch.diag(torch.tensor([1.0, 1.0, 1.0, 0.0], dtype=torch.float64)), b)
        assert torch.allclose(w[k].double(), expected, atol=1e-5)
    assert system.count.tolist() == torch.bincount(labels, minlength=5).tolist()
    assert torch.allclose(system.yy, torch.zeros(5, dtype=torch.float64).index_add_(0, labels, y.double().pow(2).sum(1)))


def test_readout_system_weights_cells_as_if_added_that_many_times():
    from transpose.data.scene import section_repeats
    from transpose.train.readout import ReadoutSystem

    g = torch.Generator().manual_seed(3)
    z, y = torch.randn(90, 3, generator=g), torch.randn(90, 3, generator=g)
    labels = torch.randint(0, 4, (90,), generator=g)
    weighted, repeated = ReadoutSystem(4, 3), ReadoutSystem(4, 3)
    weighted.add(z[:60], y[:60], labels[:60], chunk=50)
    weighted.add(z[60:], y[60:], labels[60:], weight=3.0, chunk=50)
    repeated.add(z[:60], y[:60], labels[:60])
    for _ in range(3):
        repeated.add(z[60:], y[60:], labels[60:])
    w_weighted, *rms_weighted = weighted.solve(ridge=2.0)
    w_repeated, *rms_repeated = repeated.solve(ridge=2.0)
    assert torch.allclose(weighted.A, repeated.A) and torch.allclose(weighted.b, repeated.b)
    assert torch.allclose(w_weighted, w_repeated, atol=1e-6)
    assert all(abs(a - b) < 1e-9 for a, b in zip(rms_weighted, rms_repeated))
    assert weighted.count.sum() == 90 and repeated.count.sum() == 150   # cells, not weights
    for bad in (0.0, -1.0, float("nan")):
        with pytest.raises(ValueError, match="weight must be positive"):
            weighted.add(z, y, labels, weight=bad)

    # each dataset weighs about as much as the largest
    assert section_repeats([900, 90]) == [1, 10] and section_repeats([225, 23]) == [1, 10]
    assert section_repeats([40, 100, 60]) == [2, 1, 2] and section_repeats([7]) == [1]


def test_network_readout_decodes_round_trips_and_clears():
    net = SCRNet(width=0.25, num_clusters=8)
    net.cluster_centers.copy_(torch.arange(24, dtype=torch.float32).view(8, 3))
    image = torch.randn(1, 1, 32, 48)
    before, _ = net(image)
    g = torch.Generator().manual_seed(0)
    C = net.fc3.in_channels
    mean, basis, weights = torch.randn(C, generator=g), torch.randn(C, 5, generator=g), torch.randn(8, 6, 3, generator=g)
    net.set_readout(mean, basis, weights)
    coords, _ = net(image)
    logits, _ = net.cluster_outputs()
    x = net.head_features(net.encode(image))[0]                # (C, h, w)
    k = logits[0].argmax(0)
    z = torch.einsum("chw,cd->hwd", x - mean.view(-1, 1, 1), basis)
    offset = torch.einsum("hwd,hwdc->hwc", torch.cat([z, torch.ones(*z.shape[:2], 1)], -1), weights[k])
    expected = (net.cluster_centers[k] + offset).permute(2, 0, 1)
    assert torch.allclose(coords[0], expected, atol=1e-4)
    assert net.options()["readout_dim"] == 5

    clone = SCRNet.from_options(net.options())                 # no readout yet: the state dict brings it
    clone.load_state_dict(net.state_dict())
    assert clone.has_readout and torch.equal(clone(image)[0], coords)
    net.clear_readout()
    assert not net.has_readout and torch.equal(net(image)[0], before) and net.options()["readout_dim"] == 0
    assert "readout_weights" not in net.state_dict()
    for bad in ((mean, basis, weights[:4]), (mean[:3], basis, weights), (mean, basis, weights[:, :5])):
        try:
            net.set_readout(*bad)
        except ValueError as exc:
            assert "readout shapes" in str(exc)
        else:
            raise AssertionError("a readout of the wrong shape must raise")
    try:
        SCRNet(width=0.25).set_readout(mean, basis, weights)
    except ValueError as exc:
        assert "cluster network" in str(exc)
    else:
        raise AssertionError("a regression network cannot take a readout")


def test_train_init_readout_lowers_the_coordinate_error(tmp_path, capsys):
    from transpose.data.augment import AugmentParams
    from transpose.data.scene import SceneDataset
    from transpose.data.synthetic import render_scene
    from transpose.train.scr import load_network

    render_scene(tmp_path / "s", "indoor", frames=8, width=96, height=64, seed=0, progress=False)
    net_path = tmp_path / "r.net"
    args = [str(tmp_path / "s"), str(net_path), "--section", "train_sim", "--clusters", "32", "--iterations", "200",
            "--width", "0.25", "--learningrate", "2e-3", "--aug_scale", "0.9", "1.1", "--aug_rotation", "5",
            "--seed", "0", "--readout", "2", "--readout_dim", "8"]
    assert cli._run("train_init", args) == 0
    net, options = load_network(net_path)
    assert net.has_readout and options["readout_dim"] == 8 and options["readout"]["passes"] == 2
    stats = options["readout"]
    assert stats["cells"] > 6 * 8 * 12 and stats["rms_after"] < 0.8 * stats["rms_before"]
    # the augmented pass zooms as test.py does (1 to 1.5x), not as training did (0.9-1.1)
    assert stats["zoom"] == [1.0, 1.5]

    data = SceneDataset(tmp_path / "s", "train_sim", mode="scr", targets="depth", load_normals=False)

    def median_error(model):
        errors = []
        for item in (data[i] for i in range(len(data))):
            with torch.no_grad():
                coords, _ = model(item["image"][None])
            errors.append((coords[0] - item["coords"]).norm(dim=0)[item["mask"]])
        return torch.cat(errors).median().item()

    with_readout = median_error(net)
    net.clear_readout()
    assert with_readout < 0.8 * median_error(net)

    # the readout's augmented view of a dataset zooms in the given range and leaves the dataset as it was
    from transpose.train.readout import _with_augment

    trained_aug = SceneDataset(tmp_path / "s", "train_sim", mode="scr", targets="depth", load_normals=False,
                               augment=True, aug=AugmentParams(scale_min=0.9, scale_max=1.1, rotation_deg=0.0))
    zoomed = _with_augment(trained_aug, True, (1.0, 1.5))
    torch.manual_seed(0)
    zooms = [zoomed[i % len(zoomed)]["K"][0, 0].item() / data[0]["K"][0, 0].item() for i in range(24)]
    assert 1.0 <= min(zooms) and max(zooms) <= 1.5 and max(zooms) > 1.3
    assert (trained_aug.aug.scale_min, trained_aug.aug.scale_max) == (0.9, 1.1)

    # test.py re-fits the readout's poses robustly by default (1 px per 120 px of image height) and
    # pools the cells of the image zoomed 1.5x with its own
    import json

    for flag, scale, scales in (([], 64 / 120, [1.0, 1.5]), (["--robust_scale", "0", "--scales", "1"], 0.0, [1.0])):
        assert cli._run("test", [str(tmp_path / "s"), str(net_path), "--section", "train_sim", "--out",
                                 str(tmp_path / "t"), *flag]) == 0
        settings = json.loads((tmp_path / "t" / "results.json").read_text())["settings"]
        assert abs(settings["ransac"]["robust_scale"] - scale) < 1e-9 and settings["scales"] == scales

    # --resume of the finished run loads the readout from the checkpoint and fits it again
    assert cli._run("train_init", args + ["--resume"]) == 0
    again, _ = load_network(net_path)
    assert again.has_readout
    # `transpose readout` fits one to an existing checkpoint, on the sections and with the augmentation
    # it was trained on: the same settings and seed give train_init's readout
    refit = tmp_path / "refit.net"
    assert cli._run("readout", [str(tmp_path / "s"), str(net_path), "--out", str(refit), "--readout", "2",
                                "--readout_dim", "8"]) == 0
    refitted, refit_options = load_network(refit)
    assert refit_options["readout"]["passes"] == 2 and refit_options["readout"]["cells"] == stats["cells"]
    for name in ("readout_mean", "readout_basis", "readout_weights"):
        assert torch.allclose(getattr(refitted, name), getattr(again, name), atol=1e-5)
    assert cli._run("readout", [str(tmp_path / "s"), str(refit), "--readout", "1", "--readout_dim", "4"]) == 0
    assert load_network(refit)[1]["readout_dim"] == 4 and load_network(net_path)[1]["readout_dim"] == 8
    # on several sections each weighs about as much as the largest: the smaller one's frames are
    # re-read in the augmented pass (more cells); --section_weighting frames reads every frame once
    from transpose.data.scene import section_repeats

    sizes = [len(list((tmp_path / "s" / name / "rgb").iterdir())) for name in ("train_sim", "train_real")]
    expected = dict(zip(("train_sim", "train_real"), section_repeats(sizes)))
    fitted = {}
    for weighting in ("sections", "frames"):
        assert cli._run("readout", [str(tmp_path / "s"), str(net_path), "--out", str(tmp_path / f"{weighting}.net"),
                                    "--section", "train_sim,train_real", "--readout", "2", "--readout_dim", "8",
                                    "--section_weighting", weighting]) == 0
        fitted[weighting] = load_network(tmp_path / f"{weighting}.net")[1]["readout"]
    assert max(expected.values()) > 1 and fitted["sections"]["repeats"] == expected
    assert set(fitted["frames"]["repeats"].values()) == {1}
    assert fitted["sections"]["cells"] > fitted["frames"]["cells"]

    capsys.readouterr()
    assert cli._run("train_init", [str(tmp_path / "s"), str(tmp_path / "x.net"), "--section", "train_sim",
                                   "--iterations", "2", "--readout", "2"]) == 2
    assert "--readout needs a cluster network" in capsys.readouterr().err
    assert cli._run("train_init", [str(tmp_path / "s"), str(tmp_path / "x.net"), "--section", "train_sim",
                                   "--iterations", "2", "--width", "0.25"]) == 0
    assert cli._run("readout", [str(tmp_path / "s"), str(tmp_path / "x.net")]) == 2
    assert "has a regression head" in capsys.readouterr().err
    assert cli._run("test", [str(tmp_path / "s"), str(tmp_path / "x.net"), "--section", "train_sim", "--frames", "2",
                             "--out", str(tmp_path / "tx")]) == 0  # a regression network: one scale
    assert json.loads((tmp_path / "tx" / "results.json").read_text())["settings"]["scales"] == [1.0]
    for flag, value, message in (("--readout", "two", "--readout must be an integer >= 0, got 'two'"),
                                 ("--readout", "-1", "--readout must be >= 0, got -1"),
                                 ("--readout_ridge", "-0.5", "--readout_ridge must be >= 0, got -0.5")):
        with pytest.raises(SystemExit):
            cli.train_init_parser().parse_args([str(tmp_path / "s"), "x.net", flag, value])
        assert message in capsys.readouterr().err


def test_readout_flag_defaults_are_the_readout_modules():
    # the parsers spell the defaults as literals (building one must not import torch): keep them in step
    from transpose import cli
    from transpose.train import readout

    for parser in (cli.train_init_parser(), cli.readout_parser()):
        args = parser.parse_args(["scene", "net.net"])
        assert (args.readout_dim, args.readout_ridge) == (readout.DEFAULT_DIM, readout.DEFAULT_RIDGE)
        assert (args.section_weighting == "sections") == inspect.signature(
            readout.fit_cluster_readout).parameters["balance"].default
