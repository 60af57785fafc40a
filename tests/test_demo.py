"""`transpose demo`, the README's main command, end to end on its quick (tiny) scene: render, train
with uncertainty, fit the readout, localize the test frames, write results and figures."""
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from transpose import cli, evaluate
from transpose.data import layout
from transpose.train.scr import load_network


def test_quick_demo_writes_consistent_results(tmp_path, capsys):
    root, out = tmp_path / "datasets", tmp_path / "out"
    args = cli.demo_parser().parse_args(["--quick", "--minutes", "0.1", "--root", str(root), "--out", str(out)])
    summary = cli.run_demo(args)
    printed = capsys.readouterr().out

    scene = root / "synthetic_indoor_tiny"
    assert layout.is_complete(scene)
    info = json.loads((scene / ".complete").read_text())
    assert info["frames"] == {"train_sim": 45, "test_sim": 15, "train_real": 5, "test_real": 15}
    assert (info["width"], info["height"], info["workers"]) == (160, 120, min(2, os.cpu_count() or 1))

    # the network: trained with uncertainty on train_sim within the budget, a cluster head and its readout
    net, options = load_network(out / "scr.net")
    trained = options["train_init"]
    assert options["uncertainty"] and net.num_clusters == 1024 and net.has_readout
    assert trained["section"] == "train_sim" and trained["max_minutes"] == 0.1 and trained["readout"] == 4
    assert options["readout"]["rms_after"] < 0.5 * options["readout"]["rms_before"]  # the fit did its job

    # what test.py wrote agrees with itself and with what the demo returned
    results = json.loads((out / "test_sim" / "results.json").read_text())
    poses = evaluate.read_pose_file(out / "test_sim" / "poses.txt")
    assert len(poses) == 15 == summary["frames"]
    trans = np.array([p["trans_err_m"] for p in poses.values()])
    rot = np.array([p["rot_err_deg"] for p in poses.values()])
    assert summary["median_trans_m"] == pytest.approx(np.median(trans), abs=1e-4)
    assert summary["median_rot_deg"] == pytest.approx(np.median(rot), abs=1e-3)
    assert summary["acc_5cm_5deg"] == pytest.approx(100 * np.mean((trans < 0.05) & (rot < 5)), abs=1e-6)
    for key in ("median_trans_m", "median_rot_deg", "acc_5cm_5deg"):
        assert results["summary"][key] == pytest.approx(summary[key])
    assert sorted(p.stem for p in (out / "test_sim" / "maps").glob("*.npz")) == sorted(poses)
    figures = {p.name for p in (out / "test_sim" / "figures").glob("*.png")}
    assert {"uncertainty_map.png", "uncertainty_vs_error.png", "error_cdf.png", "training_curves.png",
            "coordinate_maps.png", "trajectory.png"} <= figures
    assert "demo: render" in printed and "within 5cm / 5deg" in printed


def test_demo_rejects_a_bad_budget(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "transpose", "demo", "--minutes", "0", "--root", str(tmp_path)],
                          capture_output=True, text=True)
    assert proc.returncode == 2
    assert "--minutes must be positive" in proc.stderr
    assert not any(Path(tmp_path).iterdir())  # nothing rendered


@pytest.mark.parametrize("value, message", [("-1", "--minutes must be positive"), ("nan", "--minutes must be positive"),
                                            ("ten", "--minutes must be a positive number, got 'ten'")])
def test_demo_budget_flag_names_itself(value, message, capsys):
    with pytest.raises(SystemExit) as exc:
        cli.demo_parser().parse_args(["--minutes", value])
    assert exc.value.code == 2 and message in capsys.readouterr().err
