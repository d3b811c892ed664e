"""The detection evaluation suite: metrics on hand-built cases, the PCA baseline, generators, end to end."""

import json

import numpy as np
import pytest

from benchmarks import skab
from benchmarks.detection import datasets, metrics
from benchmarks.detection.__main__ import main
from benchmarks.detection.datasets import Fault
from benchmarks.detection.evaluate import evaluate_group
from benchmarks.detection.pca_baseline import PCAMonitor, lagged

PRED = np.array([1, 1, 0, 0, 1, 0, 0, 0, 1, 0], dtype=bool)
TRUTH = np.array([1, 1, 1, 0, 0, 0, 0, 0, 1, 1], dtype=bool)


def test_outlier_scores_on_ten_rows():
    counts = metrics.confusion(PRED, TRUTH)
    assert counts == {"tp": 3, "fp": 1, "fn": 2, "tn": 4}
    scores = metrics.outlier_scores(counts)
    assert scores["f1"] == pytest.approx(3 / (3 + (1 + 2) / 2))
    assert scores["far"] == pytest.approx(1 / 5)
    assert scores["mar"] == pytest.approx(2 / 5)
    assert metrics.false_alarm_rate(PRED, ~TRUTH) == pytest.approx(1 / 5)


def test_fault_score_counts_flagged_rows_and_delay_in_rows_and_seconds():
    times = np.array([0, 10, 20, 40, 80, 160, 170, 180, 190, 200], dtype=float)
    score = metrics.fault_score(PRED, times, Fault("step", 2, 10))
    assert (score.rows, score.flagged, score.delay_rows, score.delay_s) == (8, 2, 2, 60.0)
    assert score.rate == pytest.approx(2 / 8) and score.detected
    missed = metrics.fault_score(PRED, times, Fault("step", 5, 8))
    assert not missed.detected and missed.delay_rows is None


def test_nab_windows_are_centred_and_merged():
    assert metrics.nab_windows(1000, [Fault("spike", 500, 501)]) == [(450, 550)]
    # two faults share 10 % of the rows: 50-row windows, the overlapping pair merged
    assert metrics.nab_windows(1000, [Fault("spike", 300, 301), Fault("spike", 320, 321)]) == [(275, 345)]


def test_nab_score_never_alarm_is_zero_perfect_is_hundred():
    rows, faults = 1000, [Fault("level_shift", 400, 450), Fault("level_shift", 800, 850)]
    windows = metrics.nab_windows(rows, faults)
    never = metrics.nab_raw(np.zeros(rows, bool), windows, 150)
    assert never == -2.0
    perfect = metrics.nab_perfect(rows, windows, 150)
    assert perfect == pytest.approx(2 * (2 / (1 + np.exp(5 * (-1 + 1 / 50))) - 1))
    assert metrics.nab_normalised(perfect, perfect, never) == pytest.approx(100.0)
    assert metrics.nab_normalised(never, perfect, never) == 0.0
    pred = np.zeros(rows, bool)
    pred[200] = True  # one false alarm before any window: -A_FP
    pred[100] = True  # in the probationary rows: not scored
    assert metrics.nab_raw(pred, windows, 150) == pytest.approx(-2.0 - metrics.NAB_A_FP)
    pred[windows[0][1] - 1] = True  # at a window's last row: sigmoid(0) = 0, but the miss is gone
    assert metrics.nab_raw(pred, windows, 150) == pytest.approx(-1.0 - metrics.NAB_A_FP)
    flooded = np.ones(rows, bool)  # alarming on every row scores far below never alarming
    assert metrics.nab_normalised(metrics.nab_raw(flooded, windows, 150), perfect, never) < -100


def test_alarm_onsets():
    assert metrics.alarm_onsets(PRED).tolist() == [0, 4, 8]


def test_lagged_rows_hold_their_predecessors():
    x = np.arange(4.0)[:, None]
    assert lagged(x, 2).tolist() == [[0, 0, 0], [1, 0, 0], [2, 1, 0], [3, 2, 1]]


def test_pca_baseline_catches_an_injected_fault_at_its_designed_rate():
    rng = np.random.default_rng(3)
    mix = rng.normal(size=(3, 8))
    normal = rng.normal(size=(4000, 3)) @ mix + rng.normal(size=(4000, 8)) * 0.1
    test = rng.normal(size=(4000, 3)) @ mix + rng.normal(size=(4000, 8)) * 0.1
    monitor = PCAMonitor.fit(normal, far=0.01)
    assert monitor.loadings.shape[1] == 3  # the three latent directions, 90 % of the variance
    t2, q = monitor.alarms(test)
    assert 0.002 < np.mean(t2 | q) < 0.03  # designed 1 % (0.5 % each)
    broken = test.copy()
    broken[2000:, 5] += 3.0  # a sensor bias off the model plane: 30 noise sigmas
    t2, q = monitor.alarms(broken)
    assert np.mean(q[2000:]) > 0.99 and np.mean(q[:2000]) < 0.03


def test_pca_baseline_on_a_constant_stream_never_alarms_on_it():
    monitor = PCAMonitor.fit(np.full((100, 1), 42.0), far=0.001, lags=3)
    t2, q = monitor.alarms(np.full((50, 1), 42.0))
    assert not (t2 | q).any()
    t2, q = monitor.alarms(np.full((5, 1), 43.0))
    assert q.all()


def test_generators_are_seeded_and_keep_faults_out_of_the_fit_rows():
    a, b = datasets.univariate_set(quick=True, seed=1), datasets.univariate_set(quick=True, seed=1)
    assert all(np.array_equal(g.runs[0].x, h.runs[0].x) for g, h in zip(a, b, strict=True))
    kinds = {f.kind for g in a for f in g.runs[0].faults}
    assert kinds == set(datasets.UNIVARIATE_KINDS)
    for g in a:
        run = g.runs[0]
        assert all(f.start >= run.scored_from == g.fit_x.shape[0] for f in run.faults)
        assert np.array_equal(run.x[:run.scored_from], g.fit_x)
    dup = next(g for g in a if g.name.endswith("duplicate_times"))
    assert int(np.sum(np.diff(dup.fit_t) == 0)) == datasets.DUPLICATE_TIMES
    assert np.all(np.diff(dup.runs[0].t[dup.runs[0].scored_from:]) > 0)
    flat = next(g for g in a if g.name == "normal/flat")
    assert np.ptp(flat.runs[0].x) == 0


@pytest.mark.parametrize("fault", list(datasets.PROCESS_FAULTS))
def test_process_fault_starts_at_its_row(fault):
    layout = datasets.process_layout(0)
    normal = datasets.simulate_process(layout, 200, seed=5)
    faulty = datasets.simulate_process(layout, 200, seed=5, fault=fault, start=120)
    assert np.array_equal(normal[:120], faulty[:120])
    assert not np.array_equal(normal[120:], faulty[120:])
    # stored at limited precision: every value a whole number of its resolution
    steps = faulty / layout.resolution
    assert np.allclose(steps, np.round(steps), atol=1e-6)



def test_process_runs_start_in_steady_state():
    """The first row of a run is spread like a later one (across seeds): the plant ran its burn-in.
    Started from the bare drive (no burn-in), some variables' first rows spread 2.5-3x wider and the
    detector's replay counted that start-up as false alarms."""
    layout = datasets.process_layout(0)
    runs = np.array([datasets.simulate_process(layout, 60, seed=s) for s in range(100)])
    ratio = runs[:, 0, :].var(axis=0) / runs[:, -1, :].var(axis=0)
    assert ratio.max() < 2.0 and ratio.min() > 0.5

def write_skab_like(root, rng):
    """One SKAB-shaped file (valve1/1.csv), a labelled 6-sigma shift on rows 450-499; other folders empty."""
    for folder in ("valve1", "valve2", "other"):
        (root / folder).mkdir(parents=True)
    values = rng.normal(size=(600, 3)) @ rng.normal(size=(3, 3))
    values[450:500] += 6.0
    lines = ["datetime;a;b;c;anomaly;changepoint"]
    for r, row in enumerate(values):
        lines.append(f"2020-03-09 10:{r // 60:02d}:{r % 60:02d};" + ";".join(f"{v:.5f}" for v in row)
                     + f";{float(450 <= r < 500)};0.0")
    (root / "valve1" / "1.csv").write_text("\n".join(lines) + "\n")


def test_suite_runs_end_to_end_and_its_counts_add_up(tmp_path):
    write_skab_like(tmp_path / "skab", np.random.default_rng(0))
    out = tmp_path / "out"
    assert main(["--quick", "--skab", str(tmp_path / "skab"), "--out", str(out)]) == 0
    summary = json.loads((out / "results.json").read_text())
    assert set(summary["sets"]) == {"univariate", "process", "skab"}
    for runs in summary["runs"].values():
        for method in ("detector", "pca"):
            for run in runs[method]:
                assert sum(run["counts"].values()) == run["scored_rows"]
                assert run["counts"]["fp"] == run["false_alarms"]
    skab_pca = summary["sets"]["skab"]["pca"]
    assert skab_pca["counts"]["tp"] + skab_pca["counts"]["fn"] == 50
    assert skab_pca["faults"] == 1 and skab_pca["faults_detected"] == 1.0  # a 6-sigma shift on every channel
    process = summary["sets"]["process"]["detector"]
    assert process["faults"] == len(datasets.PROCESS_FAULTS)
    assert process["designed_far"] == pytest.approx(0.001)
    assert process["far_ratio"] == pytest.approx(process["far"] / 0.001)
    md = (out / "results.md").read_text()
    assert "PCA T²/Q" in md and "| skab |" in md and "NAB-style" in md


def test_suite_rejects_a_folder_that_is_not_skab(tmp_path, capsys):
    assert main(["--quick", "--skab", str(tmp_path), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "does not look like SKAB data" in err and err.count("\n") == 1


def test_suite_rejects_a_bad_spec_file_in_one_line(tmp_path, capsys):
    spec = tmp_path / "spec.json"
    spec.write_text('{"target_far": 2.0}')
    assert main(["--quick", "--spec", str(spec), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "target_far" in err and err.count("\n") == 1


def test_suite_runs_one_set_with_a_spec_file(tmp_path):
    spec = tmp_path / "spec.json"
    spec.write_text('{"target_far": 0.01, "iforest": false}')
    out = tmp_path / "out"
    assert main(["--quick", "--only", "process", "--spec", str(spec), "--out", str(out)]) == 0
    summary = json.loads((out / "results.json").read_text())
    assert list(summary["sets"]) == ["process"]
    assert summary["run"]["spec"]["iforest"] is False
    assert summary["sets"]["process"]["pca"]["designed_far"] == 0.01


def test_skab_set_scores_as_the_skab_benchmark_does(tmp_path):
    write_skab_like(tmp_path, np.random.default_rng(1))
    group = datasets.skab_set(tmp_path)[0]
    suite = evaluate_group(group, skab.SKAB_SPEC)["runs"]["detector"][0]["counts"]
    _, reference = skab.evaluate(skab.load_skab(tmp_path)[0], skab.SKAB_SPEC, [])
    assert suite == {k: reference[k] for k in ("tp", "fp", "fn", "tn")}


def test_seeds_prints_every_seed_and_the_mean(capsys):
    from benchmarks.detection import seeds

    assert seeds.main(["--seeds", "2", "--only", "univariate"]) == 0
    out = capsys.readouterr().out
    assert "univariate: designed FAR 0.10%" in out and "mean" in out
    assert seeds.main(["--seeds", "1", "--only", "nonsense"]) == 2
