"""The SCR branch end to end on a tiny rendered scene: train_init, test, result files, figures, errors, resume."""
import contextlib
import io
import json
import shutil

import numpy as np
import pytest
import torch

from transpose import cli
from transpose.data import layout
from transpose.data.synthetic import render_scene
from transpose.evaluate import read_pose_file
from transpose.train.logger import read_csv_log

FRAMES = ("frame-000000", "frame-000004")  # two training frames the network must learn to localize


@pytest.fixture(scope="module")
def scene(tmp_path_factory):
    root = tmp_path_factory.mktemp("scr")
    render_scene(root / "tiny", "indoor", frames=20, width=160, height=120, seed=0, progress=False)
    # a two-frame scene: small enough to fit in seconds, so the test checks localization, not patience
    small = root / "pair"
    for section in ("train", "test"):
        for folder in ("rgb", "poses", "calibration", "depth", "init"):
            src = layout.section_dir(root / "tiny", "train_sim") / folder
            dst = small / section / folder
            dst.mkdir(parents=True)
            for key in FRAMES:
                for f in src.glob(f"{key}.*"):
                    shutil.copy(f, dst / f.name)
    return root


@pytest.fixture(scope="module")
def trained(scene):
    net = scene / "pair.net"
    code = cli._run("train_init", [str(scene / "pair"), str(net), "--iterations", "400", "--width", "0.5",
                                   "--uncertainty", "--no_augment", "--learningrate", "2e-3", "--mode", "2",
                                   "--checkpoint_every", "200", "--seed", "0"])
    assert code == 0
    return net


def test_training_reduces_loss_and_logs(trained):
    log = read_csv_log(trained.parent / "pair_log" / "log.csv")
    err = np.asarray(log["coord_error"])
    assert len(err) == 40  # logged every 10 of 400 iterations
    assert err[-3:].mean() < 0.25 * err[:3].mean()
    assert np.isfinite(log["nll"]).all()


@pytest.fixture(scope="module")
def localized(scene, trained):
    """``(output folder, printed text)`` of test.py on the trained network (once per worker process:
    the tests that read it may run in different processes)."""
    out = scene / "pair_out"
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        code = cli._run("test", [str(scene / "pair"), str(trained), "--section", "test", "--save_map",
                                 "--out", str(out)])
    assert code == 0
    return out, printed.getvalue()


def test_localizes_its_training_frames(scene, localized):
    out, printed = localized
    assert "within 5cm / 5deg" in printed
    poses = read_pose_file(out / "poses.txt")
    assert sorted(poses) == sorted(FRAMES)
    for key, rec in poses.items():
        gt = layout.read_pose(scene / "pair" / "test" / "poses" / f"{key}.txt")
        # the file holds camera-to-world poses: compare with the ground truth directly
        assert np.linalg.norm(rec["pose"][:3, 3] - gt[:3, 3]) < 0.05
        assert rec["rot_err_deg"] < 2.0 and rec["trans_err_m"] < 0.05 and rec["inliers"] > 50
    summary = json.loads((out / "results.json").read_text())["summary"]
    assert summary["acc_5cm_5deg"] == 100.0 and summary["frames"] == 2
    maps = np.load(out / "maps" / f"{FRAMES[0]}.npz")
    assert maps["coords"].shape == (3, 15, 20) and maps["sigma"].shape == (15, 20)
    assert (maps["sigma"] > 0).all() and np.nanmedian(maps["coord_error"]) < 0.1


def test_pooled_scales_localize_with_depth(scene, trained, tmp_path):
    """--scales 1,1.5 on the RGB-D network: the zoomed cells' depth is read at their pixels, the
    poses stay right, and maps and inlier masks are those of the image as it is."""
    out = tmp_path / "zoom"
    with contextlib.redirect_stdout(io.StringIO()):
        assert cli._run("test", [str(scene / "pair"), str(trained), "--section", "test", "--save_map",
                                 "--scales", "1,1.5", "--out", str(out)]) == 0
    results = json.loads((out / "results.json").read_text())
    assert results["settings"]["scales"] == [1.0, 1.5] and results["settings"]["mode"] == 2
    for frame in results["frames"]:
        # 300 cells of the image and 690 (30 x 23) zoomed ones
        assert frame["rot_err_deg"] < 2.0 and frame["trans_err_m"] < 0.05 and frame["inliers"] > 300
    maps = np.load(out / "maps" / f"{FRAMES[0]}.npz")
    assert maps["coords"].shape == (3, 15, 20) and maps["inlier_mask"].shape == (15, 20)


def test_visualize_writes_figures(localized):
    out, _ = localized
    code = cli._run("visualize", [str(out), "--keywords", "uncertainty,results,loss,coords,trajectory"])
    assert code == 0
    names = {p.name for p in (out / "figures").glob("*.png")}
    assert {"uncertainty_map.png", "uncertainty_vs_error.png", "error_cdf.png", "training_curves.png",
            "coordinate_maps.png", "trajectory.png"} <= names


def test_resume_continues_from_saved_iteration(scene, tmp_path, capsys):
    net = tmp_path / "r.net"
    args = [str(scene / "pair"), str(net), "--width", "0.25", "--checkpoint_every", "5", "--no_augment"]
    assert cli._run("train_init", args + ["--iterations", "5"]) == 0
    ckpt = torch.load(net, weights_only=False)
    assert ckpt["iteration"] == 5 and ckpt["kind"] == "scr"
    capsys.readouterr()
    assert cli._run("train_init", args + ["--iterations", "8", "--resume"]) == 0
    assert "from iteration 5" in capsys.readouterr().out
    assert torch.load(net, weights_only=False)["iteration"] == 8
    rows = read_csv_log(tmp_path / "r_log" / "log.csv")["iteration"]
    assert rows == [5.0, 8.0]


def test_clear_errors(scene, tmp_path, capsys):
    bad = tmp_path / "bad.net"
    bad.write_bytes(b"\x00garbage")
    assert cli._run("test", [str(scene / "pair"), str(bad)]) == 2
    assert f"error: {bad}: not a readable checkpoint" in capsys.readouterr().err
    assert cli._run("test", [str(scene / "pair"), str(tmp_path / "none.net")]) == 2
    assert "none.net: checkpoint not found" in capsys.readouterr().err
    assert cli._run("train_init", [str(scene / "pair"), str(tmp_path / "x.net"), "--section", "nope",
                                   "--iterations", "1"]) == 2
    assert "section 'nope' not found" in capsys.readouterr().err
    assert cli._run("train_init", [str(tmp_path / "missing_scene"), str(tmp_path / "x.net")]) == 2
    assert "scene" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        cli._run("train_init", [str(scene / "pair"), str(tmp_path / "x.net"), "--iterations", "-3"])


def test_batches_of_augmented_frames_stack(scene, tmp_path):
    # augmentation zooms change the image size; batches > 1 need one fixed size
    net = tmp_path / "b.net"
    assert cli._run("train_init", [str(scene / "tiny"), str(net), "--section", "train_sim", "--batch_size", "3",
                                   "--iterations", "2", "--width", "0.25", "--image_height", "96"]) == 0
    assert torch.load(net, weights_only=False)["iteration"] == 2


def test_photometric_augmentation_flags_reach_the_dataset(scene, capsys):
    from transpose.train.scr import build_dataset

    args = cli.train_init_parser().parse_args([str(scene / "pair"), "x.net", "--aug_brightness", "0.4",
                                               "--aug_contrast", "0.3", "--aug_rotation", "5"])
    aug = build_dataset(cli._init_config_from_args(args)).aug
    assert (aug.brightness, aug.contrast, aug.rotation_deg) == (0.4, 0.3, 5.0)
    default = build_dataset(cli._init_config_from_args(cli.train_init_parser().parse_args([str(scene / "pair"), "x.net"])))
    assert (default.aug.brightness, default.aug.contrast) == (0.1, 0.1)  # DSAC*'s
    with pytest.raises(SystemExit):
        cli.train_init_parser().parse_args([str(scene / "pair"), "x.net", "--aug_contrast", "1.5"])
    assert "--aug_contrast must be in [0, 1), got 1.5" in capsys.readouterr().err


def test_sim_to_real_augmentation_flags_reach_the_dataset(scene, capsys):
    from transpose.train import transfer
    from transpose.train.scr import build_dataset

    flags = ["--aug_relight", "0.5", "--aug_shadow", "0.25", "--aug_camera", "1"]
    args = cli.train_init_parser().parse_args([str(scene / "pair"), "x.net", *flags])
    aug = build_dataset(cli._init_config_from_args(args)).aug
    assert (aug.relight, aug.shadow, aug.camera) == (0.5, 0.25, 1.0)
    # the sim-to-real trainer (several sections) takes them too
    args = cli.train_init_parser().parse_args([str(scene / "pair"), "x.net", "--section", "train_sim,train_real",
                                               *flags])
    cfg = transfer.config_from_args(args)
    assert (cfg.aug_relight, cfg.aug_shadow, cfg.aug_camera) == (0.5, 0.25, 1.0)
    for flag, value, message in (("--aug_relight", "1", "--aug_relight must be in [0, 1), got 1"),
                                 ("--aug_shadow", "1.5", "--aug_shadow must be in [0, 1], got 1.5"),
                                 ("--aug_camera", "strong", "--aug_camera must be a number, got 'strong'")):
        with pytest.raises(SystemExit):
            cli.train_init_parser().parse_args([str(scene / "pair"), "x.net", flag, value])
        assert message in capsys.readouterr().err


def test_novel_view_flags_reach_the_dataset(scene, tmp_path, capsys):
    from transpose.train.scr import build_dataset

    args = cli.train_init_parser().parse_args([str(scene / "pair"), "x.net", "--aug_view", "0.2",
                                               "--aug_view_prob", "0.7"])
    aug = build_dataset(cli._init_config_from_args(args)).aug
    assert (aug.view_shift, aug.view_prob) == (0.2, 0.7)
    default = cli._init_config_from_args(cli.train_init_parser().parse_args([str(scene / "pair"), "x.net"]))
    assert (default.aug_view, default.aug_view_prob) == (0.0, 0.5)
    with pytest.raises(SystemExit):
        cli.train_init_parser().parse_args([str(scene / "pair"), "x.net", "--aug_view", "1"])
    assert "--aug_view must be in [0, 1), got 1" in capsys.readouterr().err
    # --sparse takes targets from init/, which cannot be re-rendered: one clear line, exit 2
    assert cli._run("train_init", [str(scene / "pair"), str(tmp_path / "x.net"), "--aug_view", "0.2", "--sparse",
                                   "--iterations", "1"]) == 2
    assert "novel-view augmentation (view_shift) needs depth maps" in capsys.readouterr().err
    # a short training with it runs and writes its checkpoint
    net = tmp_path / "v.net"
    assert cli._run("train_init", [str(scene / "pair"), str(net), "--aug_view", "0.2", "--aug_view_prob", "1",
                                   "--iterations", "3", "--width", "0.25"]) == 0
    assert torch.load(net, weights_only=False)["options"]["train_init"]["aug_view"] == 0.2
