"""TransPose sim-to-real: projection head, MLR fusion, contrastive batches, NCE / task / MLR training end to end."""
import numpy as np
import pytest
import torch

from transpose import cli
from transpose.data import layout
from transpose.data.overlap import MiningConfig, mine_scene
from transpose.data.pairs import ROLE_ANCHOR, ROLE_NEGATIVE, ROLE_POSITIVE, ContrastiveCollate, ContrastiveGroups
from transpose.models.heads import ProjectionHead, TaskNet, TransposeNet, task_names
from transpose.models.scr import SCRNet
from transpose.train.checkpoint import load_checkpoint
from transpose.train.logger import read_csv_log
from transpose.train.transfer import (TransferConfig, _task_targets, build_datasets, load_network,
                                      load_task_network)


@pytest.fixture(scope="module")
def scene(tmp_path_factory):
    from transpose.data.synthetic import render_scene

    root = tmp_path_factory.mktemp("transfer")
    return render_scene(root / "tiny", "indoor", frames=24, width=96, height=72, seed=1, progress=False)


def test_projection_head_gives_unit_embeddings():
    torch.manual_seed(0)
    head = ProjectionHead(16, hidden=32, out_dim=8)
    z = head(torch.randn(3, 16, 5, 6))
    assert z.shape == (3, 8)
    np.testing.assert_allclose(z.norm(dim=1).detach().numpy(), 1.0, atol=1e-6)
    # global pooling: the embedding does not depend on where in the map a feature sits
    f = torch.randn(1, 16, 5, 6)
    assert torch.allclose(head(f), head(f.flip(2, 3)), atol=1e-6)


def test_mlr_fusion_starts_as_identity_and_keeps_tasks_frozen():
    torch.manual_seed(0)
    scr = SCRNet(width=0.25, uncertainty=True)
    depth = TaskNet("depth", width=0.25)
    frozen = {k: v.clone() for k, v in depth.state_dict().items()}
    net = TransposeNet(scr, {"depth": depth}, head_dim=8)
    image = torch.randn(2, 1, 48, 64)
    coords, sigma = net(image)
    ref_coords, ref_sigma = scr(image)
    assert torch.allclose(coords, ref_coords) and torch.allclose(sigma, ref_sigma)
    (coords.sum() + net.embed(net.encode(image)).sum()).backward()
    assert all(p.grad is None for p in depth.parameters())
    assert net.fusion.conv2.weight.grad is not None and net.fusion.conv2.weight.grad.abs().sum() > 0
    net.train()
    assert not depth.training  # frozen networks stay in eval mode
    for k, v in depth.state_dict().items():
        assert torch.equal(v, frozen[k])
    with pytest.raises(ValueError, match="expects 1 task feature maps"):
        net.fusion(torch.zeros(1, scr.feature_channels, 2, 2), [])


def test_transpose_net_rebuilds_from_options():
    torch.manual_seed(1)
    net = TransposeNet(SCRNet(scene_center=[1.0, 2.0, 3.0], width=0.25, uncertainty=True),
                       {"normal": TaskNet("normal", width=0.25), "depth": TaskNet("depth", width=0.25)}, head_dim=16,
                       dense_dim=8)
    with torch.no_grad():
        net.fusion.conv2.weight.normal_()  # a fusion that is not the identity
    copy = TransposeNet.from_options(net.options())
    copy.load_state_dict(net.state_dict())
    image = torch.randn(1, 1, 32, 40)
    net.eval(), copy.eval()
    assert torch.allclose(net(image)[0], copy(image)[0])
    assert torch.allclose(net.embed_cells(net.encode(image)), copy.embed_cells(copy.encode(image)))
    assert list(copy.tasks) == ["normal", "depth"]
    assert task_names("depth,normal") == ["depth", "normal"]
    with pytest.raises(ValueError, match="--mlr"):
        task_names("depth,semantics")


def test_task_targets_match_depth_images_and_rotated_normals(scene):
    cfg = TransferConfig(scene=str(scene), out="unused", section="train_sim", augment=False, task="normal")
    ds = build_datasets(cfg, ["train_sim"])[0]
    batch = torch.utils.data.default_collate([ds[0], ds[3]])
    depth, mask = _task_targets("depth", batch, "cpu")
    for b, index in enumerate((0, 3)):
        d_img = layout.read_depth(ds.depth_paths[index] or layout.index_folder(ds.section_dir / "depth")[ds.frames[index]])
        cells = d_img[4::8, 4::8]
        m = mask[b].numpy()
        assert m.mean() > 0.9
        np.testing.assert_allclose(depth[b].numpy()[m], cells[m], atol=2e-3)  # mm PNG quantisation
    normals, nmask = _task_targets("normal", batch, "cpu")
    R = batch["pose"][1, :3, :3].double().numpy()
    n_world = batch["normals"][1].double().numpy().reshape(3, -1)
    expected = (R.T @ n_world).reshape(normals.shape[1:])
    np.testing.assert_allclose(normals[1].numpy(), expected, atol=1e-5)
    assert nmask.float().mean() > 0.9


def test_contrastive_groups_and_positive_mask(scene):
    cfg = TransferConfig(scene=str(scene), out="unused", section="train_sim,train_real", image_height=48)
    datasets = build_datasets(cfg, ["train_sim", "train_real"])
    mining = mine_scene(scene, ("train_sim", "train_real"), MiningConfig(cells=64, pos_forward=0.2, pos_backward=0.3))
    groups = ContrastiveGroups(datasets, mining, pos_same=1, pos_cross=1, negatives=2)
    torch.manual_seed(0)
    n_real = len(datasets[1])
    real_anchor = list(groups.anchors).index(len(datasets[0]))  # train_real/frame-000000 (it has a cross positive)
    batch = ContrastiveCollate(mining)([groups[real_anchor], groups[0]])
    M = len(batch["frame"])
    assert batch["image"].shape == (M, 1, 48, 64) and batch["coords"].shape[0] == M
    role, group, frame, P = batch["role"], batch["group"], batch["frame"], batch["positive_mask"]
    assert (P == P.T).all()
    first = group == 0
    a = int(torch.nonzero(first & (role == ROLE_ANCHOR))[0])
    pos = torch.nonzero(first & (role == ROLE_POSITIVE)).flatten()
    neg = torch.nonzero(first & (role == ROLE_NEGATIVE)).flatten()
    assert len(pos) == 2 and len(neg) == 2  # one in-domain (real) and one cross-domain (sim) positive
    assert set(mining.domains[frame[pos].numpy()]) == {0, 1}
    assert batch["domain"].tolist() == mining.domains[frame.numpy()].tolist()
    assert frame[pos[1]].item() == mining.names.index("train_sim/frame-000000")  # its closest sim view
    assert P[a, pos].all() and not P[a, neg].any()
    for n in neg:
        assert frame[n].item() in set(mining.negatives(frame[a].item()).tolist())
    # a mined positive pair across groups is marked positive too
    for i in range(M):
        for j in range(M):
            if i != j and mining.positive_matrix()[frame[i], frame[j]]:
                assert P[i, j]
    assert n_real == 2
    bad = build_datasets(cfg, ["train_sim"])
    with pytest.raises(ValueError, match="do not match the mining"):
        ContrastiveGroups(bad, mining)


def test_balance_sections_draws_each_section_about_as_often(scene, tmp_path, monkeypatch):
    from transpose.data.scene import section_repeats
    from transpose.train import transfer

    cfg = TransferConfig(scene=str(scene), out="unused", section="train_sim,train_real", image_height=48)
    datasets = build_datasets(cfg, ["train_sim", "train_real"])
    mining = mine_scene(scene, ("train_sim", "train_real"), MiningConfig(cells=64, pos_forward=0.2, pos_backward=0.3))
    repeats = section_repeats([len(d) for d in datasets])
    assert repeats == [1, 9]                                      # 18 renders, 2 photos
    plain = ContrastiveGroups(datasets, mining)
    balanced = ContrastiveGroups(datasets, mining, anchor_repeats=repeats)
    real = plain.anchors >= len(datasets[0])
    assert real.any() and sorted(balanced.anchors.tolist()) == sorted(
        plain.anchors[~real].tolist() + 9 * plain.anchors[real].tolist())
    for bad in ([1], [1, 0]):
        with pytest.raises(ValueError, match="anchor_repeats"):
            ContrastiveGroups(datasets, mining, anchor_repeats=bad)

    # train_init (--section_weighting sections, the default): an epoch of the plain (no NCE) path
    # draws each photo 9 times; --section_weighting frames each frame once
    seen = {}
    real_loop = transfer.train_loop

    def spy(net, optimizer, dataset, *args, **kwargs):
        seen["frames"] = len(dataset)
        return real_loop(net, optimizer, dataset, *args, **kwargs)

    monkeypatch.setattr(transfer, "train_loop", spy)
    net_path = tmp_path / "bal.net"
    assert cli._run("train_init", _train_args(scene, net_path, "--section", "train_sim,train_real",
                                              "--iterations", "2")) == 0
    assert seen["frames"] == 18 + 9 * 2
    assert load_network(net_path)[1]["trained_on"]["repeats"] == {"train_sim": 1, "train_real": 9}
    assert cli._run("train_init", _train_args(scene, tmp_path / "flat.net", "--section", "train_sim,train_real",
                                              "--section_weighting", "frames", "--iterations", "2")) == 0
    assert seen["frames"] == 20
    # the default, spelled as a literal in the parser, is the config's
    parsed = cli.train_init_parser().parse_args([str(scene), "n.net", "--section", "train_sim,train_real"])
    assert transfer.config_from_args(parsed).balance_sections is TransferConfig.balance_sections is True


def _train_args(scene, out, *extra):
    return [str(scene), str(out), "--width", "0.25", "--image_height", "48", "--learningrate", "2e-3",
            "--checkpoint_every", "1000", "--seed", "0", *extra]


def test_nce_training_end_to_end_through_the_cli(scene, tmp_path, capsys):
    net_path = tmp_path / "nce.net"
    code = cli._run("train_init", _train_args(scene, net_path, "--section", "train_sim,train_real",
                                              "--contrastive", "0.5", "--iterations", "6", "--uncertainty"))
    assert code == 0
    log = read_csv_log(tmp_path / "nce_log" / "log.csv")
    assert np.isfinite(log["supcon"]).all() and min(log["supcon"]) > 0
    net, options = load_network(net_path)
    assert isinstance(net, TransposeNet) and net.head is not None and options["trained_on"]["frames"] == 20
    assert options["train_init"]["contrastive"] == 0.5
    capsys.readouterr()
    code = cli._run("test", [str(scene), str(net_path), "--section", "test_real", "--frames", "2",
                             "--out", str(tmp_path / "nce_test")])
    assert code == 0
    assert "within 5cm / 5deg" in capsys.readouterr().out
    # bad flags end with one clear line
    assert cli._run("train_init", _train_args(scene, tmp_path / "x.net", "--mlr", "depth,semantics")) == 2
    assert cli._run("train_init", _train_args(scene, tmp_path / "x.net", "--mlr", "depth")) == 2  # no depth.net yet


def test_dense_contrastive_training_through_the_cli(scene, tmp_path):
    net_path = tmp_path / "dense.net"
    code = cli._run("train_init", _train_args(scene, net_path, "--section", "train_sim,train_real",
                                              "--dense_contrastive", "0.5", "--dense_radius", "0.2", "--dense_cross_only",
                                              "--iterations", "6", "--uncertainty"))
    assert code == 0
    log = read_csv_log(tmp_path / "dense_log" / "log.csv")
    assert np.isfinite(log["supcon_cells"]).all() and min(log["supcon_cells"]) > 0 and "supcon" not in log
    net, options = load_network(net_path)
    assert net.dense_head is not None and net.head is None
    assert options["train_init"]["dense_contrastive"] == 0.5 and options["train_init"]["dense_radius"] == 0.2
    assert options["train_init"]["dense_cross_only"] is True
    emb = net.embed_cells(net.encode(torch.zeros(1, 1, 48, 64)))
    assert emb.shape == (1, options["transpose"]["dense_head"]["out_dim"], 6, 8)
    np.testing.assert_allclose(emb.norm(dim=1).detach().numpy(), 1.0, atol=1e-5)
    assert cli._run("train_init", _train_args(scene, tmp_path / "x.net", "--section", "train_sim,train_real",
                                              "--dense_contrastive", "-1")) == 2


def test_depth_task_learns_and_mlr_trains_on_top_of_it(scene, tmp_path):
    depth_path = tmp_path / "depth.net"
    code = cli._run("train_init", _train_args(scene, depth_path, "--section", "train_sim", "--task", "depth",
                                              "--iterations", "80", "--no_augment", "--batch_size", "2"))
    assert code == 0
    log = read_csv_log(tmp_path / "depth_log" / "log.csv")
    err = np.asarray(log["median_error"])
    assert err[-2:].mean() < 0.5 * err[:2].mean()  # metres of depth error
    task_net, opts = load_task_network(depth_path)
    assert opts["task"] == "depth" and isinstance(task_net, TaskNet)

    mlr_path = tmp_path / "mlr.net"
    code = cli._run("train_init", _train_args(scene, mlr_path, "--section", "train_sim,train_real", "--mlr", "depth",
                                              "--iterations", "4", "--contrastive", "0.1"))
    assert code == 0
    net, options = load_network(mlr_path)
    assert list(options["transpose"]["tasks"]) == ["depth"]
    saved = load_checkpoint(depth_path, "task")["model"]
    for k, v in net.tasks["depth"].state_dict().items():
        assert torch.equal(v, saved[k])  # frozen: the fused network carries the task weights unchanged
    image = torch.zeros(1, 1, 48, 64)
    coords, _ = net(image)
    assert coords.shape == (1, 3, 6, 8)


def test_cluster_head_trains_with_nce_across_sections(scene, tmp_path):
    net_path = tmp_path / "cl.net"
    code = cli._run("train_init", _train_args(scene, net_path, "--section", "train_sim,train_real", "--clusters", "16",
                                              "--contrastive", "0.5", "--iterations", "60", "--uncertainty", "--no_augment",
                                              "--readout", "3", "--readout_dim", "4"))
    assert code == 0
    log = read_csv_log(tmp_path / "cl_log" / "log.csv")
    assert np.isfinite(log["supcon"]).all() and "cluster_accuracy" in log
    assert len(log["loss_coords"]) == 6 and log["loss_coords"][-1] < 0.95 * log["loss_coords"][0]
    assert log["cluster_accuracy"][-1] > 2 / 16  # above chance
    net, options = load_network(net_path)
    assert options["num_clusters"] == 16
    # the centres are the k-means centres of both sections' targets, inside the room
    centers = net.scr.cluster_centers
    assert centers.shape == (16, 3) and torch.isfinite(centers).all() and centers.abs().max() < 10
    coords, sigma = net(torch.zeros(1, 1, 48, 64))
    assert coords.shape == (1, 3, 6, 8) and sigma.shape == (1, 1, 6, 8)
    # the readout was fitted on both sections' cells (one pass: training did not augment)
    stats = options["readout"]
    assert net.scr.has_readout and options["readout_dim"] == 4 and stats["passes"] == 1
    frames = sum(len(list((scene / sec / "rgb").iterdir())) for sec in ("train_sim", "train_real"))
    assert frames * 6 * 8 // 2 < stats["cells"] <= frames * 6 * 8 and stats["rms_after"] < stats["rms_before"]
