"""The SKAB evaluation harness, run end to end on SKAB-shaped files made from the synthetic line.

(The real SKAB data is not part of the repository; its figures are in the benchmark's output.)
"""

import csv
import json

import numpy as np
import pytest

from benchmarks import skab
from models.synthetic import generate


def write_skab_file(path, values, anomaly):
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as f:
        w = csv.writer(f, delimiter=";")
        w.writerow(["datetime", *[f"s{i}" for i in range(values.shape[1])], "anomaly", "changepoint"])
        for r, (row, a) in enumerate(zip(values, anomaly, strict=True)):
            w.writerow([f"2020-03-09 10:{r // 60:02d}:{r % 60:02d}", *row, float(a), 0.0])


@pytest.fixture
def skab_dir(tmp_path):
    for folder, seed in (("valve1", 1), ("valve2", 2), ("other", 3)):
        line = generate(900, seed=seed, faults=[("leak", 600, 750)])
        write_skab_file(tmp_path / folder / "0.csv", line.values, line.label)
    (tmp_path / "anomaly-free").mkdir()
    return tmp_path


def test_metrics_follow_skab_definitions():
    m = skab.metrics(tp=6, fp=2, fn=4, tn=8)
    assert m["f1"] == pytest.approx(6 / (6 + 3))
    assert m["far"] == pytest.approx(2 / 10)
    assert m["mar"] == pytest.approx(4 / 10)


def test_harness_writes_predictions_and_pooled_summary(skab_dir, tmp_path):
    out = tmp_path / "out"
    assert skab.main([str(skab_dir), "--out", str(out)]) == 0
    summary = json.loads((out / "summary.json").read_text())
    pooled = summary["pooled"]
    assert pooled["tp"] + pooled["fn"] == 3 * 150  # every labelled scored row counted once
    assert pooled["tp"] + pooled["fp"] + pooled["fn"] + pooled["tn"] == 3 * (900 - skab.FIT_ROWS)
    assert pooled["f1"] > 0.5  # a leak this size is plainly visible
    with (out / "valve1" / "0.csv").open() as f:
        rows = list(csv.reader(f))
    assert rows[0] == ["datetime", "anomaly_pred"]
    assert len(rows) - 1 == 900 - skab.FIT_ROWS
    assert {r[1] for r in rows[1:]} <= {"0", "1"}
    preds = np.array([int(r[1]) for r in rows[1:]])
    assert preds[600 - skab.FIT_ROWS:750 - skab.FIT_ROWS].mean() > 0.5


def test_harness_rejects_a_folder_that_is_not_skab(tmp_path, capsys):
    assert skab.main([str(tmp_path), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "does not look like SKAB data" in err
    assert err.count("\n") == 1
