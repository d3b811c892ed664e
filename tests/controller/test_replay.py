"""`linesentry replay`: a recorded CSV through a fitted model, scores CSV, summary and plot."""

import csv
import sys
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from controller import replay as rp
from controller.cli import app
from controller.config import load_config
from hil_tests.rig.training import simulated_normal
from models import StreamingDetector

DEMO = "configs/demo_line.toml"
FAULT_TAG = "motor_current"
FAULT = (1000, 1400)  # rows of the injected step
runner = CliRunner()


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args], env={"COLUMNS": "200"})


def write_csv(path: Path, header: list[str], times, rows) -> Path:
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["time", *header])
        w.writerows([[repr(float(t)), *map(float, r)] for t, r in zip(times, rows, strict=True)])
    return path


@pytest.fixture(scope="module")
def tags():
    return load_config(DEMO).detector_tags()


@pytest.fixture(scope="module")
def model(tmp_path_factory, tags):
    """A model of the demo line's detector tags fitted on simulated normal operation (as `fit` does)."""
    cfg = load_config(DEMO)
    times, rows = simulated_normal(tags, seconds=120.0)
    det = StreamingDetector(tags, cfg.detector_spec(), dict(cfg.detector.units)).fit(rows[::2], times[::2])
    path = tmp_path_factory.mktemp("model") / "model.npz"
    det.save(path)
    return path


@pytest.fixture(scope="module")
def faulty(tmp_path_factory, tags):
    """40 s of fresh normal operation (another seed) with a +8 sigma step on motor_current."""
    times, rows = simulated_normal(tags, seconds=40.0, seed=7)
    times, rows = times[::2], rows[::2].copy()
    k = tags.index(FAULT_TAG)
    rows[FAULT[0]:FAULT[1], k] += 8 * rows[:, k].std()
    path = write_csv(tmp_path_factory.mktemp("data") / "faulty.csv", tags, times, rows)
    return path, times, rows


def test_replay_writes_scores_and_a_plot_that_show_the_fault(tmp_path, model, faulty, tags):
    import matplotlib  # noqa: F401  (dev extra; a missing one must fail, not skip)
    data, times, _ = faulty
    scores, png = tmp_path / "scores.csv", tmp_path / "out" / "replay.png"
    result = invoke("replay", DEMO, data, "--model", model, "-o", scores, "--plot", png)
    assert result.exit_code == 0, result.output
    assert f"{len(times)} " in result.output and "alarm intervals" in result.output
    assert "max line score" in result.output and f"plot written to {png}" in result.output

    raw = png.read_bytes()
    assert raw[:8] == b"\x89PNG\r\n\x1a\n" and len(raw) > 20_000

    with scores.open(newline="") as f:
        rows = list(csv.reader(f))
    assert rows[0] == ["time", "score", "alarm", *(f"{t}_flags" for t in tags)]
    body = np.array(rows[1:], dtype=float)
    assert body.shape == (len(times), 3 + len(tags))
    np.testing.assert_allclose(body[:, 0], times)
    alarm = body[:, 2].astype(bool)
    a, b = FAULT
    assert not alarm[:a].any()  # no false alarm on the normal part before the fault
    assert alarm[a:b].mean() > 0.9  # the step is alarmed (within a few rows of its onset)
    assert alarm[a:a + 20].any()
    flags = body[:, 3 + tags.index(FAULT_TAG)].astype(int)
    assert (flags[a:b] != 0).mean() > 0.5 and (flags[:a] != 0).sum() <= 2
    assert body[a:b, 1].max() > body[:a, 1].max()


def test_replay_uses_the_configs_model_by_default(tmp_path, model, faulty):
    text = Path(DEMO).read_text().replace('model = "../state/demo_line/model.npz"', f'model = "{model}"')
    config = tmp_path / "line.toml"
    config.write_text(text)
    result = invoke("replay", config, faulty[0])
    assert result.exit_code == 0, result.output
    assert "alarm rows" in result.output


def test_replay_without_matplotlib_is_exit_2_with_the_install_hint(tmp_path, model, faulty, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib -> ImportError
    result = invoke("replay", DEMO, faulty[0], "--model", model, "--plot", tmp_path / "x.png")
    assert result.exit_code == 2
    assert "install the plot extra: pip install 'linesentry[plot]'" in result.output
    assert result.output.count("\n") == 1 and not (tmp_path / "x.png").exists()


def test_replay_bad_inputs_are_exit_2_one_line(tmp_path, model, faulty, tags):
    result = invoke("replay", DEMO, faulty[0], "--model", tmp_path / "missing.npz")
    assert result.exit_code == 2 and "not found" in result.output
    result = invoke("replay", DEMO, tmp_path / "missing.csv", "--model", model)
    assert result.exit_code == 2 and "cannot read" in result.output
    wrong = tmp_path / "wrong.csv"
    wrong.write_text("a,b\n1,2\n")
    result = invoke("replay", DEMO, wrong, "--model", model)
    assert result.exit_code == 2 and "header" in result.output
    partial = write_csv(tmp_path / "partial.csv", tags[:2], [0.0], [[1.0, 2.0]])
    result = invoke("replay", DEMO, partial, "--model", model)
    assert result.exit_code == 2 and "no column for detector tag" in result.output
    other = tmp_path / "other.npz"
    times, rows = simulated_normal(tags[:3], seconds=20.0)
    StreamingDetector(tags[:3]).fit(rows[::4], times[::4]).save(other)
    result = invoke("replay", DEMO, faulty[0], "--model", other)
    assert result.exit_code == 2 and "does not match the configured tags" in result.output
    assert result.output.count("\n") == 1


def test_replay_without_any_model_is_exit_2(tmp_path):
    data = write_csv(tmp_path / "d.csv", ["seal_temp"], [0.0], [[150.0]])
    result = invoke("replay", "configs/secure_opcua.toml", data)  # a config with no [detector] model
    assert result.exit_code == 2 and "no model" in result.output


def test_chunked_replay_equals_one_batch(model, faulty, tags):
    from models import load_model

    _, times, rows = faulty
    det = load_model(model, expected_tags=tags)
    done = []
    chunked = rp.replay(det, times, rows, chunk_rows=333, progress=done.append)
    whole = rp.replay(det, times, rows, chunk_rows=len(times))
    assert sum(done) == len(times) and len(done) == -(-len(times) // 333)
    np.testing.assert_array_equal(chunked.score, whole.score)
    np.testing.assert_array_equal(chunked.tag_flags, whole.tag_flags)
    np.testing.assert_array_equal(chunked.alarm, whole.alarm)


def test_intervals():
    assert rp.intervals(np.array([0, 1, 1, 0, 1], bool)) == [(1, 3), (4, 5)]
    assert rp.intervals(np.zeros(3, bool)) == []
    assert rp.intervals(np.ones(2, bool)) == [(0, 2)]


def test_read_csv_errors(tmp_path):
    bad = tmp_path / "bad.csv"
    bad.write_text("time,a\n0,1\n1,x\n")
    with pytest.raises(rp.ReplayError, match="not numeric"):
        rp.read_csv(bad, ["a"])
    empty = tmp_path / "empty.csv"
    empty.write_text("time,a\n")
    with pytest.raises(rp.ReplayError, match="no data rows"):
        rp.read_csv(empty, ["a"])
    ok = tmp_path / "ok.csv"
    ok.write_text("time,b,a\n0,1,2\n\n1,3,4\n")
    times, values = rp.read_csv(ok, ["a", "b"])
    assert times.tolist() == [0, 1] and values.tolist() == [[2, 1], [4, 3]]


# ------------------------------------------------------------------ the plot an engineer reads
@pytest.fixture(scope="module")
def replayed(model, faulty, tags):
    from models import load_model

    _, times, rows = faulty
    det = load_model(model, expected_tags=tags)
    return det, times, rows, rp.replay(det, times, rows)


def test_every_rise_of_the_line_alarm_is_explained_as_the_live_step_explains_it(replayed, tags):
    det, times, rows, result = replayed
    rises = [a for a, _ in rp.intervals(result.alarm)]
    assert rises and np.all(np.diff(result.explained_rows) > 0)
    assert len(result.explained_rows) >= rp.EXPLAIN_SAMPLES // 2  # spread over the whole replay
    ones = np.ones(len(tags), np.uint8)
    det.reset()
    for k in range(rises[0] + 1):  # the live path: one step per row, then explain()
        det.step(times[k], np.ascontiguousarray(rows[k]), ones, ones)
    live, replayed_why = det.explain(top_k=len(tags)), result.explained_at(rises[0])
    assert replayed_why == live  # the same component, ratio and tags, bit for bit
    assert live.top[0].tag == FAULT_TAG


def test_the_plot_has_a_wall_clock_axis_a_legend_per_shading_and_an_attribution_panel(replayed, tags):
    import matplotlib.dates as mdates
    import matplotlib.pyplot as plt
    from matplotlib.colors import to_rgb

    from models.names import FLAG_NAMES

    det, times, rows, result = replayed
    stop = np.where(np.arange(len(times)) >= FAULT[0] + 30, 1.0, 0.0)  # the line stop the alarm wrote
    epoch = times + 1_796_108_716.195  # a recording's epoch seconds
    fig = rp.figure(epoch, rows, tags, result, det.threshold, {"motor_current": "A"},
                    actuators={"conveyor_line_stop": stop})
    axes = fig.axes
    bottom = axes[-1]
    assert isinstance(bottom.xaxis.get_major_formatter(), mdates.ConciseDateFormatter)
    first, last = (mdates.num2date(x).timestamp() for x in bottom.get_xlim())
    assert first <= epoch[0] + 1 and last >= epoch[-1] - 1 and first > epoch[0] - 60  # not "seconds since"
    assert bottom.get_xlabel() == "time (UTC)"

    kinds = {name for bit, name in FLAG_NAMES.items() if (result.tag_flags & bit).any()}
    assert kinds  # the step on motor_current raises flags
    (legend,) = fig.legends
    labels = [t.get_text() for t in legend.get_texts()]
    assert labels == ["line alarm", *(f"flag: {k}" for k in rp.FLAG_COLOURS if k in kinds)]
    assert len(set(rp.FLAG_COLOURS.values())) == len(rp.FLAG_COLOURS) == len(FLAG_NAMES)  # a colour per kind
    current = axes[tags.index(FAULT_TAG)]
    shaded = {tuple(round(c, 3) for c in p.get_facecolor()[:3]) for p in current.patches}
    for bit, name in FLAG_NAMES.items():
        colour = tuple(round(c, 3) for c in to_rgb(rp.FLAG_COLOURS[name]))
        assert (colour in shaded) == bool((result.tag_flags[:, tags.index(FAULT_TAG)] & bit).any()), name

    act = next(ax for ax in axes if ax.get_ylabel() == "actuators")
    assert [line.get_label() for line in act.get_lines()] == ["conveyor_line_stop"]
    score = axes[-2]
    notes = [t.get_text() for t in score.texts]
    assert len(notes) == len(rp.intervals(result.alarm)) and notes[0].startswith(f"#1: {FAULT_TAG} ")
    why = axes[-1]
    assert why.get_ylabel().startswith("attribution")
    assert len(why.collections) == len(tags)  # one stacked band per tag
    assert [t.get_text() for t in why.get_legend().get_texts()][0].startswith("driver: ")
    plt.close(fig)


def test_actuators_are_read_from_the_recording_when_it_has_them(tmp_path, tags):
    from controller.config import load_config

    assert rp.actuator_tags(load_config(DEMO)) == ["conveyor_line_stop"]
    path = write_csv(tmp_path / "rec.csv", [*tags, "conveyor_line_stop"], [0.0, 1.0],
                     [[1.0] * len(tags) + [0.0], [1.0] * len(tags) + [1.0]])
    got = rp.read_actuators(path, ["conveyor_line_stop", "line_stop"])
    assert list(got) == ["conveyor_line_stop"] and got["conveyor_line_stop"].tolist() == [0.0, 1.0]


def test_a_clock_step_back_breaks_every_line_and_shading_and_is_marked(replayed, tags):
    """A recording whose wall clock steps back an hour (an NTP step) inside the line alarm: the
    lines joined the rows either side of it with a stroke across the hour, the alarm's shading
    covered the whole hour, and nothing said the clock stepped."""
    import matplotlib.pyplot as plt

    det, times, rows, result = replayed
    a, b = rp.intervals(result.alarm)[0]
    step = (a + b) // 2
    epoch = times + 1_796_108_716.195
    epoch[step:] -= 3600.0
    fig = rp.figure(epoch, rows, tags, result, det.threshold)
    current = fig.axes[tags.index(FAULT_TAG)]
    (trace,) = current.get_lines()[:1]
    y = np.asarray(trace.get_ydata(), dtype=float)
    assert len(y) == len(times) + 1 and np.isnan(y[step]) and not np.isnan(np.delete(y, step)).any()
    hour = 3600.0 / 86400.0  # matplotlib dates are days
    widths = [p.get_width() for p in current.patches]
    assert widths and max(widths) < hour / 2  # no shading spans the hour the clock stepped over
    notes = [t.get_text() for t in fig.axes[-2].texts]
    assert "clock step \u221260 min" in notes
    assert "1 clock step(s) back" in fig._suptitle.get_text()
    plt.close(fig)


def test_duration_text():
    assert [rp.duration_text(s) for s in (-3600.0, 42.0, -3 * 86400.0, 90.0)] == [
        "\u22121 h", "+42 s", "\u22123 d", "+1.5 min"]


def test_a_gap_in_the_recording_breaks_the_lines_and_is_no_clock_step(replayed, tags):
    """A recording with a stop and a restart an hour later: a stroke joined the last row before
    the stop to the first after it, as if there were data in the hour between."""
    import matplotlib.pyplot as plt

    det, times, rows, result = replayed
    gap = len(times) // 3
    epoch = times + 1_796_108_716.195
    epoch[gap:] += 3600.0
    fig = rp.figure(epoch, rows, tags, result, det.threshold)
    y = np.asarray(fig.axes[0].get_lines()[0].get_ydata(), dtype=float)
    assert len(y) == len(times) + 1 and np.isnan(y[gap])
    assert "clock step" not in fig._suptitle.get_text() and not fig.axes[-2].texts[len(rp.intervals(
        result.alarm)):]  # a gap is not a clock step: no marker
    assert rp.breaks(times).size == 0  # the replay's own 20 ms rows: nothing to break
    plt.close(fig)
