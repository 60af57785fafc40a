"""Training logs: a CSV file (easy to plot, survives without TensorBoard) and TensorBoard events."""
from __future__ import annotations

import csv
import os
from pathlib import Path
from typing import Dict, List, Optional


class MetricLogger:
    """Append scalar metrics per iteration to ``<logdir>/log.csv`` and TensorBoard.

    On resume, rows after ``start_iteration`` are dropped from the CSV so a resumed run does not log
    the same iterations twice.
    """

    def __init__(self, logdir: os.PathLike | str, start_iteration: int = 0, tensorboard: bool = True):
        self.logdir = Path(logdir)
        self.logdir.mkdir(parents=True, exist_ok=True)
        self.csv_path = self.logdir / "log.csv"
        self._columns: Optional[List[str]] = None
        self._rows: List[Dict[str, float]] = []
        if self.csv_path.is_file():
            with open(self.csv_path, newline="") as fh:
                reader = csv.DictReader(fh)
                self._columns = list(reader.fieldnames or [])
                self._rows = [r for r in reader if float(r.get("iteration", 0)) <= start_iteration]
            self._rewrite()
        self._writer = None
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self._writer = SummaryWriter(log_dir=str(self.logdir), purge_step=start_iteration + 1)
            except Exception:  # tensorboard missing or broken: the CSV log still works
                self._writer = None

    def _rewrite(self) -> None:
        from .. import io

        with io.atomic_open(self.csv_path, "w") as fh:
            writer = csv.DictWriter(fh, fieldnames=self._columns or ["iteration"], extrasaction="ignore")
            writer.writeheader()
            writer.writerows(self._rows)

    def log(self, iteration: int, metrics: Dict[str, float]) -> None:
        row = {"iteration": iteration, **{k: float(v) for k, v in metrics.items()}}
        new_columns = [k for k in row if self._columns is None or k not in self._columns]
        if new_columns:
            self._columns = (self._columns or []) + new_columns
            self._rows.append(row)
            self._rewrite()
        else:
            self._rows.append(row)
            with open(self.csv_path, "a", newline="") as fh:
                csv.DictWriter(fh, fieldnames=self._columns, extrasaction="ignore").writerow(row)
        if self._writer is not None:
            for k, v in metrics.items():
                self._writer.add_scalar(k, float(v), iteration)

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()


def read_csv_log(path: os.PathLike | str) -> Dict[str, List[float]]:
    """Columns of a ``log.csv`` as lists of floats (missing values as NaN)."""
    with open(path, newline="") as fh:
        reader = csv.DictReader(fh)
        cols: Dict[str, List[float]] = {k: [] for k in reader.fieldnames or []}
        for row in reader:
            for k in cols:
                v = row.get(k)
                cols[k].append(float(v) if v not in (None, "") else float("nan"))
    return cols
