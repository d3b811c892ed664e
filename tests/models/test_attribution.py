"""Attribution: every line alarm names the component and the tags behind it, in engineering units."""

import json
import math

import numpy as np
import pytest

from models import DetectorSpec, StreamingDetector, TagLimits, attribution
from models import kernels as K

TAGS = ["flow", "pressure", "power", "temp", "level", "speed"]
OFFSET = np.array([50.0, 4.0, 120.0, 60.0, 2.0, 1500.0])
SCALE = np.array([5.0, 0.4, 12.0, 3.0, 0.2, 80.0])
FAULTY = 3  # temp


def process(rows: int, seed: int) -> np.ndarray:
    """Two latent factors drive six tags (strongly correlated), plus a little noise per tag."""
    rng = np.random.default_rng(seed)
    mix = np.array([[1.0, 0.9, 0.8, 0.7, 0.2, 0.9], [0.1, -0.4, 0.5, -0.6, 1.0, 0.3]])
    x = rng.normal(size=(rows, 2)) @ mix + 0.15 * rng.normal(size=(rows, len(TAGS)))
    return x * SCALE + OFFSET


@pytest.fixture(scope="module")
def det():
    spec = DetectorSpec(limits={"level": TagLimits(0.5, 3.5)})
    return StreamingDetector(TAGS, spec).fit(process(2000, seed=1))


def run(det, rows):
    """Step through rows; return the explanation of the last one."""
    det.reset()
    ones = np.ones(len(TAGS), np.uint8)
    for r, x in enumerate(rows):
        det.step(float(r), np.ascontiguousarray(x), ones, ones)
    return det.explain()


def test_a_tag_that_breaks_the_correlation_is_named_under_spe(det):
    rows = process(300, seed=2)
    # 6 noise sigmas on temp: well inside its normal range, but its neighbours do not follow.
    step = 6 * 0.15 * SCALE[FAULTY]
    rows[-1, FAULTY] += step
    why = run(det, rows)
    assert det.out[K.O_ALARM] == 1.0
    assert why.component == "pca_spe" and why.ratio == det.out[K.C_SPE] and why.ratio > 1.0
    top = why.top[0]
    assert top.tag == "temp" and top.share > 0.5
    # The residual is the step, less the part the model explains with its components.
    assert 0.5 * step < top.deviation < 1.5 * step
    assert math.isclose(top.expected, top.value - top.deviation)
    assert math.isclose(top.percent, 100 * top.deviation / abs(top.expected))
    assert top.sigmas > 0
    assert abs(top.value - rows[-1, FAULTY]) < 1e-9


def test_a_large_step_on_one_tag_is_named_by_every_multivariate_component(det):
    rows = process(300, seed=3)
    rows[-1, FAULTY] += 8 * SCALE[FAULTY]  # 8 marginal sigmas: T², SPE and the forest all see it
    run(det, rows)
    assert det.out[K.O_ALARM] == 1.0
    for component in ("pca_spe", "iforest"):
        why = det.explain(component=component)
        assert why.component == component
        assert why.top[0].tag == "temp", component
        assert why.top[0].deviation > 0, component
    t2 = det.explain(component="pca_t2")
    assert "temp" in [c.tag for c in t2.top]


def test_a_limit_flag_is_attributed_to_its_tag(det):
    rows = process(100, seed=4)
    rows[-1, 4] = 3.9  # level above its hard limit 3.5
    why = run(det, rows)
    assert why.component == "tags" and why.ratio >= K.BINARY_SCORE  # graded by the excess
    assert why.top[0].tag == "level" and "limit" in why.top[0].flags
    assert why.flagged["level"] == ("limit",) or "limit" in why.flagged["level"]


def test_contributions_sum_to_the_statistics_the_kernel_computed(det):
    rows = process(200, seed=5)
    rows[-1, 0] += 3 * SCALE[0]
    run(det, rows)
    ts, tp = det.state["tag_state"], det.model["tag_params"]
    t2, spe = K.pca_score(tp, ts, det.model["pca_components"], det.model["pca_inv_eig"])
    dp = det.model["decision_params"]
    for c, raw in ((K.C_T2, t2), (K.C_SPE, spe)):  # the normalised score is this raw statistic
        loc, thr = dp[K.D_COMP_LOC + c], dp[K.D_COMP_THR + c]
        assert math.isclose(det.out[c], (raw - loc) / (thr - loc), rel_tol=1e-9)
    for name in ("pca_t2", "pca_spe", "iforest"):
        why = det.explain(component=name, top_k=len(TAGS))
        shares = [c.share for c in why.top]
        assert sum(shares) <= 1.0 + 1e-9 and shares == sorted(shares, reverse=True)
    spe_all = det.explain(component="pca_spe", top_k=len(TAGS))
    assert math.isclose(sum(c.share for c in spe_all.top), 1.0, rel_tol=1e-9)
    # SPE's expected values are the PCA reconstruction: mapped into the model's input space they
    # lie in the model plane (no residual), and the shares are the squared residuals over SPE.
    order = [TAGS.index(c.tag) for c in spe_all.top]
    expected = np.array([c.expected for c in spe_all.top])
    adapted = dp[K.D_ADAPT_RATE] > 0
    level = ts[order, K.TS_BASE_MEAN] if adapted else 0.0
    gain = ts[order, K.TS_BASE_GAIN] if adapted else 1.0
    fitted_level = tp[order, K.TP_BASE_MEAN] if adapted else 0.0
    z = ((expected - level) * gain + fitted_level - tp[order, K.TP_CENTER]) * tp[order, K.TP_INV_SCALE]
    centred = np.zeros(len(TAGS))
    centred[order] = z - tp[order, K.TP_PCA_MEAN]
    p = det.model["pca_components"]
    assert np.linalg.norm(centred - p.T @ (p @ centred)) < 1e-6 * np.linalg.norm(centred)
    residual = ts[:, K.TS_U] - tp[:, K.TP_PCA_MEAN] - centred
    np.testing.assert_allclose([c.share * spe for c in spe_all.top], residual[order] ** 2, rtol=1e-6)


def test_explaining_changes_nothing_and_is_json_ready(det):
    rows = process(50, seed=6)
    rows[-1, 2] += 10 * SCALE[2]
    run(det, rows)
    saved = det.checkpoint()
    outputs = (det.out.copy(), det.tag_flags.copy(), det.tag_scores.copy())
    why = det.explain(top_k=2)
    assert len(why.top) <= 2
    json.dumps(why.to_dict())
    for name, arr in det.checkpoint().items():
        np.testing.assert_array_equal(arr, saved[name])
    for now, before in zip((det.out, det.tag_flags, det.tag_scores), outputs, strict=True):
        np.testing.assert_array_equal(now, before)


def test_nothing_scored_gives_no_component(det):
    det.reset()
    n = len(TAGS)
    why = attribution.explain(det.tags, det.model, det.state, np.zeros(K.O_SIZE), np.zeros(n, np.int32),
                              np.zeros(n))
    assert why.component is None and why.top == () and why.flagged == {}
    with pytest.raises(ValueError, match="expected one of"):
        det.explain(component="nope")


def test_iforest_path_credit_goes_to_the_only_feature_that_splits():
    # One tree: the root splits feature 1 at 0.0; both children are leaves (depth 1 + c(n) = 2).
    nodes = np.zeros((3, 3), dtype=np.int32)
    nodes[0] = (1, 1, np.float32(0.0).view(np.int32))
    for leaf in (1, 2):
        nodes[leaf] = (0, leaf, np.float32(np.inf).view(np.int32))
    credit = np.zeros(3)
    K.iforest_path_credit(np.array([5.0, 1.0, -2.0]), nodes, np.array([0.0, 2.0, 2.0]),
                          np.zeros(1, dtype=np.int32), 1, credit)
    assert credit.tolist() == [0.0, 0.5, 0.0]


def test_a_rules_only_detector_names_the_tag_without_inventing_a_normal_level():
    det = StreamingDetector.rules_only(TAGS, limits={"level": (0.5, 3.5)})
    ones = np.ones(len(TAGS), np.uint8)
    frame = OFFSET.copy()
    frame[4] = 0.1
    assert det.step(0.0, frame, ones, ones)
    why = det.explain()
    assert why.component == "tags" and why.top[0].tag == "level" and why.top[0].flags == ("limit",)
    assert math.isnan(why.top[0].deviation) and why.to_dict()["top"][0]["deviation"] is None
