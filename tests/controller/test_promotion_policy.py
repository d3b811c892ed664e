"""The model lifecycle's pure parts (controller.lifecycle): the pure-Python binomial statistics against
scipy, the derived bounds, the promotion and rollback verdicts, the hot-path counters and the
validation of a new model, on plain objects."""

from __future__ import annotations

import math
import subprocess
import sys
from types import SimpleNamespace

import numpy as np
import pytest
from scipy import stats as sp

from controller.config.models import ModelsSection
from controller.errors import ModelLoadError
from controller.lifecycle.counters import DIFFERENCES, Challenger, Watch
from controller.lifecycle.policy import (
    ROLLBACK_ALPHA,
    Policy,
    promotion_verdict,
    rollback_verdict,
    target_far,
)
from controller.lifecycle.stats import binomial_cdf, binomial_sf, clopper_pearson_upper
from controller.lifecycle.validate import check_model


@pytest.mark.parametrize(("k", "n", "p"), [(0, 10, 0.1), (3, 10, 0.1), (9, 10, 0.5), (2, 1498, 0.002),
                                           (40, 100_000, 0.0003), (350, 360_000, 0.001), (5, 5, 0.3)])
def test_binomial_tails_match_scipy(k, n, p):
    assert binomial_cdf(k, n, p) == pytest.approx(sp.binom.cdf(k, n, p), rel=1e-9, abs=1e-300)
    assert binomial_sf(k, n, p) == pytest.approx(sp.binom.sf(k - 1, n, p), rel=1e-9, abs=1e-300)


@pytest.mark.parametrize(("k", "n", "p"), [(3, 10**11, 2e-11), (10**6, 10**12, 1e-6), (10**4, 10**9, 1e-5)])
def test_binomial_tails_of_rare_events_in_very_many_rows_match_scipy(k, n, p):
    """lgamma of ~1e12 alone would lose the digits of the beta prefactor (stats._log_beta)."""
    assert binomial_cdf(k, n, p) == pytest.approx(sp.binom.cdf(k, n, p), rel=1e-7)
    assert binomial_sf(k, n, p) == pytest.approx(sp.binom.sf(k - 1, n, p), rel=1e-7)


def test_binomial_tails_match_scipy_over_random_cases():
    rng = np.random.default_rng(17)
    for _ in range(300):
        n = int(10 ** rng.uniform(0, 7))
        p = float(10 ** rng.uniform(-5, -0.05))
        k = int(rng.integers(0, n + 1)) if rng.random() < 0.3 else int(rng.binomial(n, p))
        assert binomial_cdf(k, n, p) == pytest.approx(sp.binom.cdf(k, n, p), rel=1e-7, abs=1e-12), (k, n, p)
        assert binomial_sf(k, n, p) == pytest.approx(sp.binom.sf(k - 1, n, p), rel=1e-7, abs=1e-12), (k, n, p)


@pytest.mark.parametrize(("k", "n"), [(0, 1498), (1, 1498), (10, 1000), (500, 360_000), (0, 1)])
def test_clopper_pearson_upper_matches_the_beta_quantile(k, n):
    assert clopper_pearson_upper(k, n, 0.05) == pytest.approx(sp.beta.ppf(0.95, k + 1, n - k), rel=1e-7)
    assert clopper_pearson_upper(n, n) == 1.0


def test_no_scipy_at_run_time():
    code = ("import sys, controller.lifecycle.manager, controller.lifecycle.policy;"
            "assert 'scipy' not in sys.modules, 'scipy imported'")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr


def test_bounds_derived_from_the_designed_rate_unless_configured():
    p = Policy.derive(ModelsSection(), 0.001)
    assert (p.mode, p.max_alarm_rate, p.rollback_alarm_rate, p.min_agreement) == ("manual", 0.002, 0.01, 0.99)
    assert p.min_rows == math.ceil(math.log(20) / 0.002) == 1498
    assert (p.challenge_s, p.watch_s) == (3600.0, 3600.0)
    cfg = ModelsSection(promotion="auto", max_alarm_rate=0.01, min_rows=5, rollback_alarm_rate=0.2)
    q = Policy.derive(cfg, 0.001)
    assert (q.mode, q.max_alarm_rate, q.min_rows, q.rollback_alarm_rate) == ("auto", 0.01, 5, 0.2)
    assert Policy.derive(ModelsSection(max_alarm_rate=0.01), 0.001).min_rows == math.ceil(math.log(20) / 0.01)
    # the designed rate comes from the artifact's calibration report, else its spec
    assert target_far({"summary": {"calibration": {"designed_far": 0.004}}}, None) == 0.004
    assert target_far({}, SimpleNamespace(target_far=0.02)) == 0.02


@pytest.mark.parametrize(("kwargs", "key"), [({"min_agreement": 1.5}, "min_agreement"),
                                             ({"max_alarm_rate": 0.0}, "max_alarm_rate"),
                                             ({"challenge_s": 0.0}, "challenge_s"),
                                             ({"promotion": "sometimes"}, "promotion"),
                                             ({"min_rows": 0}, "min_rows"),
                                             ({"report_s": -1.0}, "report_s")])
def test_bad_bounds_are_refused(kwargs, key):
    with pytest.raises(ValueError, match=key):
        ModelsSection(**kwargs)


def test_promotion_needs_the_time_the_rows_a_low_rate_and_agreement():
    p = Policy.derive(ModelsSection(promotion="auto", challenge_s=60.0), 0.001)  # 1498 rows, < 0.002
    assert promotion_verdict(p, rows=5000, rises=0, agreement=1.0, elapsed_s=59.0).startswith("collecting")
    assert promotion_verdict(p, rows=1497, rises=0, agreement=1.0, elapsed_s=99.0).startswith("collecting")
    assert promotion_verdict(p, rows=1498, rises=0, agreement=1.0, elapsed_s=60.0) == "within bounds"
    # 1 rise in 1498 rows: the rate is 0.00067, but its 95 % bound (0.0032) is not below 0.002 yet
    one = promotion_verdict(p, rows=1498, rises=1, agreement=1.0, elapsed_s=60.0)
    assert one.startswith("collecting: rises 1 in 1498 rows not shown below 0.002"), one
    assert promotion_verdict(p, rows=2370, rises=1, agreement=1.0, elapsed_s=60.0).startswith("collecting")
    assert promotion_verdict(p, rows=2371, rises=1, agreement=1.0, elapsed_s=60.0) == "within bounds"
    assert sp.beta.ppf(0.95, 2, 2370) < 0.002 < sp.beta.ppf(0.95, 2, 2369)  # the same edge by scipy
    high = promotion_verdict(p, rows=1500, rises=3, agreement=1.0, elapsed_s=60.0)
    assert high == "outside bounds: rises 3 in 1500 rows (0.002 a row) not below 0.002", high
    assert promotion_verdict(p, rows=10_000, rises=5, agreement=0.995, elapsed_s=60.0) == "within bounds"
    low = promotion_verdict(p, rows=10_000, rises=0, agreement=0.98, elapsed_s=60.0)
    assert low == "outside bounds: agreement 0.9800 below 0.99", low


def test_rollback_on_a_rate_of_rises_shown_above_the_bound_or_a_stuck_alarm():
    p = Policy.derive(ModelsSection(), 0.001)  # bound 0.01 a row, min_rows 1498
    assert rollback_verdict(p, rows=10_000, rises=100, on_run=0) == ""  # at the bound: no evidence above
    # the smallest count the test rejects at alpha 0.001 for 10 000 rows (scipy's view of it)
    k = int(sp.binom.isf(ROLLBACK_ALPHA, 10_000, 0.01)) + 1
    assert sp.binom.sf(k - 1, 10_000, 0.01) < ROLLBACK_ALPHA <= sp.binom.sf(k - 2, 10_000, 0.01)
    assert rollback_verdict(p, rows=10_000, rises=k - 1, on_run=0) == ""
    assert rollback_verdict(p, rows=10_000, rises=k, on_run=0).startswith(f"rises {k} in 10000 rows")
    assert rollback_verdict(p, rows=5000, rises=1, on_run=1497) == ""
    assert rollback_verdict(p, rows=5000, rises=1, on_run=1498).startswith("line alarm on for 1498 rows")


class ScriptedDetector:
    """Alarms as scripted, one value per step; raises where the script says "boom"."""

    def __init__(self, script):
        self.script, self.frames = list(script), []

    def step(self, t, x, fresh, good):
        self.frames.append((t, x.copy()))
        value = self.script.pop(0)
        if value == "boom":
            raise ValueError("step: bad frame")
        return value


def _line(n: int = 3) -> SimpleNamespace:
    return SimpleNamespace(frame_values=np.arange(float(n)), frame_fresh=np.ones(n, np.uint8),
                           frame_good=np.ones(n, np.uint8))


def test_challenger_counts_agreement_rates_rises_and_where_they_differ():
    active = [False, True, True, False, False, True, False, False]
    mine = [False, False, True, True, False, True, True, False]
    c = Challenger(ScriptedDetector(mine), _line())
    for i, a in enumerate(active):
        c.after(float(i), 1000.0 + i, a)
    assert c.rows == 8 and c.alarm_rows == 4 and c.active_alarm_rows == 3
    assert c.rises == 2 and c.active_rises == 2
    assert (c.only_active, c.only_challenger) == (1, 2)
    assert c.agreement == pytest.approx(5 / 8)
    assert list(c.differences) == [(1001.0, "active"), (1003.0, "challenger"), (1006.0, "challenger")]
    fig = c.figures()
    assert fig["alarm_rate"] == {"active": 3 / 8, "challenger": 4 / 8}
    assert fig["rises"]["challenger_per_row"] == 2 / 8
    assert fig["differences"][0] == {"at": 1001.0, "alarmed": "active"}
    assert [t for t, _ in c.detector.frames] == [float(i) for i in range(8)]  # the active's clock


def test_challenger_keeps_only_the_last_differences_and_stops_on_a_failure():
    n = 3 * DIFFERENCES
    c = Challenger(ScriptedDetector([i % 2 == 0 for i in range(n)] + ["boom", True]), _line())
    for i in range(n + 2):
        c.after(float(i), float(i), False)
    assert len(c.differences) == DIFFERENCES and c.differences[-1][0] == n - 2
    assert c.failed == "ValueError: step: bad frame" and c.rows == n  # skipped from the failure on
    assert len(c.detector.frames) == n + 1


async def test_challenger_steps_on_a_copy_after_the_writes_when_the_row_wrote():
    line = _line()
    c = Challenger(ScriptedDetector([True]), line)
    c.after(1.0, 1.0, True, later=True)
    line.frame_values[:] = -1.0  # the next batch overwrites the frame before the callback runs
    assert c.rows == 0
    import asyncio

    await asyncio.sleep(0)
    assert c.rows == 1 and c.detector.frames[0][1].tolist() == [0.0, 1.0, 2.0]


def test_watch_counts_rows_rises_and_the_run_of_alarm_rows():
    w = Watch()
    for alarm in [False, True, True, False, True, True, True, False]:
        w.observe(alarm)
    assert (w.rows, w.alarm_rows, w.rises, w.on_run, w.longest_on) == (8, 5, 2, 0, 3)
    w.observe(True)
    assert w.on_run == 1 and w.rises == 3


def _model(units=None, threshold=0.7, calibration=None):
    return SimpleNamespace(units=units or {}, threshold=threshold,
                           metadata={"summary": {"calibration": calibration or {}}})


def test_validation_refuses_other_units_a_broken_threshold_and_a_pinned_calibration():
    cfg = SimpleNamespace(detector=SimpleNamespace(units={"motor_current": "A", "oil_temp": "degC"}))
    check_model(_model(), cfg, "m.npz")  # units not given in the model: nothing to compare
    check_model(_model({"motor_current": "A", "other": "x"}), cfg, "m.npz")
    with pytest.raises(ModelLoadError) as exc:
        check_model(_model({"motor_current": "mA"}), cfg, "m.npz")
    assert "motor_current 'mA' (model) vs 'A' (config)" in str(exc.value) and "\n" not in str(exc.value)
    for bad in (float("nan"), float("inf"), 0.0, 1.0):
        with pytest.raises(ModelLoadError, match="unusable line threshold"):
            check_model(_model(threshold=bad), cfg, "m.npz")
    pinned = _model(calibration={"pinned_at_cap": True, "warnings": ["line threshold pinned at 0.99"]})
    with pytest.raises(ModelLoadError, match=r"at the cap \(.*\): line threshold pinned"):
        check_model(pinned, cfg, "m.npz")


def test_a_bad_models_key_in_the_line_config_is_one_line_naming_it(tmp_path):
    from controller.config import load_config
    from controller.config.errors import ConfigError
    from hil_tests.rig.demo_config import DEMO_CONFIG

    path = tmp_path / "line.toml"
    path.write_text(DEMO_CONFIG.read_text() + '\n[models]\npromotion = "auto"\nmin_agreement = 1.5\n')
    with pytest.raises(ConfigError) as exc:
        load_config(path)
    message = str(exc.value).strip()
    assert "min_agreement" in message and "\n" not in message, message
    path.write_text(DEMO_CONFIG.read_text() + '\n[models]\npromotion = "auto"\nchallenge_s = 60\n')
    models = load_config(path).models
    assert (models.promotion, models.challenge_s, models.max_alarm_rate) == ("auto", 60.0, None)


def test_a_small_min_rows_does_not_roll_back_every_alarm_that_lasts():
    p = Policy.derive(ModelsSection(min_rows=1), 0.001)  # quick promotions asked for
    assert p.stuck_rows == math.ceil(math.log(1000) / 0.01) == 691
    assert rollback_verdict(p, rows=5000, rises=1, on_run=690) == ""
    assert rollback_verdict(p, rows=5000, rises=1, on_run=691).startswith("line alarm on for 691 rows")
    assert Policy.derive(ModelsSection(), 0.001).stuck_rows == 1498  # min_rows when it is the larger
