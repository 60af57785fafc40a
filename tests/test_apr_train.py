"""APR command line (`transpose apr train|test|batch-eval`) on a tiny synthetic scene.

One scene (160x120, 15 training and 5 test frames) is rendered per module; the networks are tiny
(ResNet34 at width 8, 32 px inputs) so that every run takes seconds on two cores.
"""
import contextlib
import csv
import io
import json
import re

import numpy as np
import pytest
import torch

from transpose import cli, geometry
from transpose.data import layout
from transpose.data.synthetic import render_scene
from transpose.evaluate import spearman_correlation
from transpose.train.apr import EqualizedScenes, load_frames, resolve_config
from transpose.train.checkpoint import load_checkpoint, save_checkpoint

TINY_POSENET = ["--model", "posenet", "--set", "backbone=resnet34", "--set", "backbone_width=8", "--set", "fc_dim=64",
                "--set", "lr_scheduler_step_size=0", "--input_size", "32", "--batch_size", "4",
                "--learningrate", "3e-3", "--threads", "1"]


@pytest.fixture(autouse=True, scope="module")
def restore_threads():
    """``--threads 1`` (several times faster for tiny layers on a shared machine) sets torch's
    process-wide thread count; give the other test modules theirs back."""
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def apr(*argv):
    """Run ``transpose apr ...`` in-process: ``(exit status, stdout, stderr)``."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        status = cli._run("apr", [str(a) for a in argv])
    return status, out.getvalue(), err.getvalue()


@pytest.fixture(scope="module")
def scene(tmp_path_factory):
    folder = tmp_path_factory.mktemp("apr_scene") / "tiny"
    render_scene(folder, "indoor", frames=20, width=160, height=120, seed=0, progress=False)
    return folder


@pytest.fixture(scope="module")
def trained(scene, tmp_path_factory):
    """30 iterations, then ``--resume`` to 60; snapshots every 15 iterations."""
    out = tmp_path_factory.mktemp("apr_run") / "posenet.pt"
    common = [out, "--scene", scene, "--section", "train_sim", *TINY_POSENET, "--snapshot_every", "15"]
    first = apr("train", *common, "--iterations", "30")
    second = apr("train", *common, "--iterations", "60", "--resume")
    return out, first, second


def test_train_resume_and_batch_eval_lower_the_error(scene, trained):
    out, first, second = trained
    assert first[0] == 0 and "trained 30 of 30 iterations" in first[1], first
    assert second[0] == 0 and f"resuming {out} from iteration 30" in second[1], second
    ckpt = load_checkpoint(out, "apr")
    assert ckpt["iteration"] == 60 and ckpt["options"]["model"] == "posenet"
    assert set(ckpt["model"]) >= {"criterion.s_x", "criterion.s_q"}  # learned loss weights resume too
    # one log, continued across the resume
    with open(str(out.with_suffix("")) + "_log/log.csv") as fh:
        log = list(csv.DictReader(fh))
    assert [int(r["iteration"]) for r in log] == [10, 20, 30, 40, 50, 60]
    assert float(log[-1]["loss"]) < float(log[0]["loss"])

    snapshots = out.parent / "posenet_snapshots"
    status, text, err = apr("batch-eval", snapshots, out, "--scene", scene, "--section", "test_sim",
                            "--out", out.parent / "batch.csv")
    assert status == 0, err
    with open(out.parent / "batch.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert [int(r["iteration"]) for r in rows] == [0, 15, 30, 45, 60]
    assert all(int(r["frames"]) == 5 for r in rows)
    png = (out.parent / "batch.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 5000
    # the untrained network predicts positions near the origin (cameras are ~1.6 m from it);
    # 60 iterations bring the median test error well below that
    t0, t60 = float(rows[0]["median_trans_m"]), float(rows[-1]["median_trans_m"])
    assert t0 > 1.2 and t60 < 0.6 * t0, (t0, t60)


def _read_poses_csv(path):
    with open(path) as fh:
        return list(csv.DictReader(fh))


def test_test_output_parses_and_matches_the_ground_truth(scene, trained, tmp_path):
    out = trained[0]
    status, text, err = apr("test", out, "--scene", scene, "--section", "test_sim", "--out", tmp_path / "plain")
    assert status == 0, err
    rows = _read_poses_csv(tmp_path / "plain" / "poses.csv")
    assert [r["name"] for r in rows] == [f"rgb/frame-{i:06d}.png" for i in range(5)]
    results = json.loads((tmp_path / "plain" / "results.json").read_text())
    for row, frame in zip(rows, results["frames"]):
        T_gt = layout.read_pose(scene / "test_sim" / "poses" / (row["name"][4:-4] + ".txt"))
        q = np.array([float(row[k]) for k in ("qw", "qx", "qy", "qz")])
        T_est = geometry.make_pose(geometry.quat_to_rotmat(q), [float(row[k]) for k in ("tx", "ty", "tz")])
        rot, trans = geometry.pose_errors(T_est, T_gt)
        assert abs(trans - float(row["trans_err_m"])) < 1e-5 and abs(rot - float(row["rot_err_deg"])) < 1e-3
        assert abs(frame["trans_err_m"] - float(row["trans_err_m"])) < 1e-6
        assert row["position_std_m"] == ""  # no MC dropout
    summary = results["summary"]
    assert summary["frames"] == 5
    assert summary["median_trans_m"] == pytest.approx(np.median([f["trans_err_m"] for f in results["frames"]]))
    m = re.search(r"median error\s+([\d.]+) cm\s+([\d.]+) deg", text)
    assert m and float(m.group(1)) == pytest.approx(summary["median_trans_m"] * 100, abs=0.006)
    assert float(m.group(2)) == pytest.approx(summary["median_rot_deg"], abs=0.006)

    # Bayesian PoseNet: MC dropout mean, spread per frame, Spearman(spread, error); seeded
    mc = [out, "--scene", scene, "--section", "test_sim", "--mc_samples", "6"]
    status, text, err = apr("test", *mc, "--out", tmp_path / "mc")
    assert status == 0, err
    assert "Spearman(position std, translation error)" in text
    mc_rows = _read_poses_csv(tmp_path / "mc" / "poses.csv")
    stds = np.array([float(r["position_std_m"]) for r in mc_rows])
    assert np.all(stds > 1e-4) and np.all(np.array([float(r["rotation_std_deg"]) for r in mc_rows]) > 0)
    mc_json = json.loads((tmp_path / "mc" / "results.json").read_text())
    frames = mc_json["frames"]
    expected = spearman_correlation([f["position_std_m"] for f in frames], [f["trans_err_m"] for f in frames])
    assert mc_json["summary"]["spearman_position_std_trans_err"] == pytest.approx(expected)
    # the mean of dropout samples differs from the deterministic (eval-mode) prediction
    assert any(abs(float(a["tx"]) - float(b["tx"])) > 1e-5 for a, b in zip(rows, mc_rows))
    assert apr("test", *mc, "--out", tmp_path / "mc2")[0] == 0
    assert (tmp_path / "mc2" / "poses.csv").read_text() == (tmp_path / "mc" / "poses.csv").read_text()


def test_pose_list_gives_the_same_frames_and_errors(scene, trained, tmp_path):
    """A multi-scene CSV of the test frames evaluates exactly like the scene folder it came from."""
    folder = load_frames([scene], "test_sim")
    lines = ["scene,split,seq,img_path,t1,t2,t3,q1,q2,q3,q4"]
    for path, T in zip(folder.poses.image_paths, folder.poses.poses_c2w):
        q = geometry.rotmat_to_quat(T[:3, :3])
        lines.append(",".join(["tiny", "test", "seq", path, *(f"{v:.9f}" for v in T[:3, 3]), *(f"{v:.12f}" for v in q)]))
    (tmp_path / "list.csv").write_text("\n".join(lines) + "\n")
    listed = load_frames(poselist=str(tmp_path / "list.csv"), images=str(scene / "test_sim"), quaternion_frame="c2w")
    assert listed.poses.image_paths == folder.poses.image_paths
    assert np.allclose(listed.poses.poses_c2w, folder.poses.poses_c2w, atol=1e-8)
    args = ["--out", tmp_path / "a"]
    assert apr("test", trained[0], "--scene", scene, "--section", "test_sim", *args)[0] == 0
    status, _, err = apr("test", trained[0], "--poselist", tmp_path / "list.csv", "--images", scene / "test_sim",
                         "--quaternion_frame", "c2w", "--out", tmp_path / "b")
    assert status == 0, err
    a, b = _read_poses_csv(tmp_path / "a" / "poses.csv"), _read_poses_csv(tmp_path / "b" / "poses.csv")
    assert [r["tx"] for r in a] == [r["tx"] for r in b]
    assert np.allclose([float(r["rot_err_deg"]) for r in a], [float(r["rot_err_deg"]) for r in b], atol=1e-3)


def test_resume_is_bit_for_bit(scene, tmp_path):
    common = ["--scene", scene, "--section", "train_sim", *TINY_POSENET, "--snapshot_every", "0"]
    assert apr("train", tmp_path / "straight.pt", *common, "--iterations", "6")[0] == 0
    assert apr("train", tmp_path / "split.pt", *common, "--iterations", "3")[0] == 0
    assert apr("train", tmp_path / "split.pt", *common, "--iterations", "6", "--resume")[0] == 0
    a = load_checkpoint(tmp_path / "straight.pt", "apr")["model"]
    b = load_checkpoint(tmp_path / "split.pt", "apr")["model"]
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def _one_error_line(result, *needles):
    status, _, err = result
    lines = [line for line in err.strip().splitlines() if line.strip()]
    assert status == 2 and len(lines) == 1 and lines[0].startswith("error: "), result
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])


def test_bad_config_and_checkpoint_give_one_error_line(scene, tmp_path):
    bad = tmp_path / "bad_config.json"
    bad.write_text("{ not json")
    train = ["--scene", scene, "--section", "train_sim", "--iterations", "1"]
    _one_error_line(apr("train", tmp_path / "x.pt", *train, "--config", bad), "bad_config.json")
    _one_error_line(apr("train", tmp_path / "x.pt", *train, "--config", "Nowhere_config.json"), "--config Nowhere")
    _one_error_line(apr("train", tmp_path / "x.pt", *train, "--model", "hyperpose", "--config", "7Scenes",
                        "--set", "backbone_kwargs={\"width_mult\": -1}"), "width_mult")
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"\x00garbage")
    _one_error_line(apr("test", junk, "--scene", scene, "--section", "test_sim"), "junk.pt", "not a readable checkpoint")
    scr = tmp_path / "scr.pt"
    save_checkpoint(scr, kind="scr", model=torch.nn.Linear(1, 1), options={}, iteration=0)
    _one_error_line(apr("test", scr, "--scene", scene, "--section", "test_sim"), "scr.pt", "expected 'apr'")
    _one_error_line(apr("test", tmp_path / "missing.pt", "--scene", scene), "missing.pt")
    _one_error_line(apr("batch-eval", scr, "--scene", scene, "--section", "test_sim"), "none of the files")
    _one_error_line(apr("train", tmp_path / "x.pt", "--iterations", "1"), "--scene", "--poselist")
    assert not (tmp_path / "x.pt").exists()


def test_config_names_and_scene_equalization(tmp_path):
    assert resolve_config("7Scenes_config.json").endswith("apr_configs/7Scenes_config.json")
    assert resolve_config("CambridgeLandmarks") == resolve_config("CambridgeLandmarks_config.json")
    own = tmp_path / "7Scenes_config.json"  # a user's own file wins over the shipped one of that name
    own.write_text("{}")
    assert resolve_config(str(own)) == str(own)
    # scenes of 4 and 1 frames: an epoch holds each scene 4 times, every frame of the big one once
    scene_ids = np.array([0, 0, 1, 0, 0])
    eq = EqualizedScenes(list(range(5)), scene_ids, seed=3)
    items = [eq[i] for i in range(len(eq))]
    assert len(eq) == 8 and sorted(items) == [0, 1, 2, 2, 2, 2, 3, 4]


def test_multi_scene_training_sizes_the_network_from_the_data(scene, tmp_path):
    """MS-Transformer on two scenes (the same folder twice): one query and head per scene, scene
    ids in the order given, equalized epochs (the Cambridge config's equalize_scenes)."""
    tiny_ms = ["--set", "backbone_kwargs={\"width_mult\": 0.25, \"depth_mult\": 0.34}", "--set", "hidden_dim=16",
               "--set", "head_hidden_dim=16", "--set", "dim_feedforward=16"]
    for key in ("t_encoder", "t_decoder", "rot_encoder", "rot_decoder"):
        tiny_ms += ["--set", f"num_{key}_layers=1"]
    status, text, err = apr("train", tmp_path / "ms.pt", "--model", "ms-transformer", "--config",
                            "CambridgeLandmarks_config.json", "--scene", scene, "--scene", scene, "--section",
                            "train_sim", "--input_size", "32", "--batch_size", "2", "--iterations", "2",
                            "--threads", "1", *tiny_ms)
    assert status == 0, err
    assert "on 30 frames of 2 scene(s)" in text
    options = load_checkpoint(tmp_path / "ms.pt", "apr")["options"]
    assert options["scene_names"] == ["tiny", "tiny_1"] and options["config"]["num_scenes"] == 2
    assert options["config"]["equalize_scenes"] is True
    status, text, err = apr("test", tmp_path / "ms.pt", "--scene", scene, "--section", "test_sim", "--threads", "1")
    assert status == 0, err
    assert re.search(r"scene classification\s+\d+\.\d %", text)
