"""DetectorSpec validation and its dict round trip."""

import json
import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from models import DetectorSpec, TagLimits

INVALID = [
    # (field that is wrong, overrides)
    ("ewma_alpha", {"ewma_alpha": 0.0}),
    ("ewma_alpha", {"ewma_alpha": 1.5}),
    ("ewma_alpha", {"ewma_alpha": math.nan}),
    ("input_alpha", {"input_alpha": 0.0}),
    ("smooth_alpha", {"smooth_alpha": 2.0}),
    ("z_max", {"z_max": 0.0}),
    ("z_max", {"z_max": math.nan}),
    ("cusum_h", {"cusum_h": -1.0}),
    ("roc_factor", {"roc_factor": 0.0}),
    ("cusum_k", {"cusum_k": -0.1}),
    ("cusum_margin", {"cusum_margin": 0.5}),
    ("warmup", {"warmup": 0}),
    ("flat_factor", {"flat_factor": -1.0}),
    ("flat_min_seconds", {"flat_min_seconds": -1.0}),
    ("flat_eps", {"flat_eps": -0.5}),
    ("pca_variance", {"pca_variance": 0.0}),
    ("pca_variance", {"pca_variance": 1.2}),
    ("pca_max_components", {"pca_max_components": 0}),
    ("pca_max_components", {"pca_max_components": -2}),
    ("pca_limits", {"pca_limits": "f-test"}),
    ("iforest_trees", {"iforest_trees": 0}),
    ("iforest_max_samples", {"iforest_max_samples": 1}),
    ("component_far", {"component_far": 0.0}),
    ("component_far", {"component_far": 0.5}),
    ("target_far", {"target_far": 0.0}),
    ("target_far", {"target_far": 0.7}),
    ("calibration", {"calibration": "median"}),
    ("threshold_margin", {"threshold_margin": 0.0}),
    ("holdout_fraction", {"holdout_fraction": -0.1}),
    ("holdout_fraction", {"holdout_fraction": 0.95}),
    ("debounce_k", {"debounce_k": 0}),
    ("debounce_k", {"debounce_k": 3, "debounce_n": 2}),
    ("debounce_n", {"debounce_n": 0}),
    ("clear_n", {"clear_n": 0}),
    ("hysteresis", {"hysteresis": 0.0}),
    ("hysteresis", {"hysteresis": 1.5}),
    ("weights", {"weights": (1.0, 1.0, 1.0)}),
    ("weights", {"weights": (1.0, -1.0, 1.0, 1.0)}),
    ("weights", {"weights": (1.0, math.nan, 1.0, 1.0)}),
    ("line_flags", {"line_flags": ("limit", "invalid")}),
    ("limits", {"limits": {"a": TagLimits(5.0, 1.0)}}),
    ("limits", {"limits": {"a": TagLimits(2.0, 2.0)}}),
    ("limits", {"limits": {"a": TagLimits(math.nan, 2.0)}}),
]


@pytest.mark.parametrize("field,overrides", INVALID, ids=[f"{f}-{i}" for i, (f, _) in enumerate(INVALID)])
def test_invalid_values_raise_value_error_naming_the_field(field, overrides):
    with pytest.raises(ValueError) as err:
        DetectorSpec(**overrides)
    assert field in str(err.value), str(err.value)


def test_all_problems_are_reported_at_once():
    with pytest.raises(ValueError) as err:
        DetectorSpec(ewma_alpha=0.0, clear_n=0, hysteresis=2.0)
    msg = str(err.value)
    assert "ewma_alpha" in msg and "clear_n" in msg and "hysteresis" in msg


def test_defaults_and_disabling_values_are_valid():
    DetectorSpec()
    DetectorSpec(z_max=math.inf, cusum_h=math.inf, roc_factor=math.inf, flat_factor=0.0,
                 holdout_fraction=0.0, line_flags=(), weights=(0.0, 1.0, 0.0, 1.0),
                 limits={"a": TagLimits(hi=3.0), "b": TagLimits(lo=-1.0)})


FULL = DetectorSpec(
    ewma_alpha=0.2, z_max=math.inf, warmup=5, cusum_k=1.0, cusum_h=4.0, roc_factor=2.0,
    flat_factor=0.0, flat_eps=0.01, limits={"a": TagLimits(-1.0, 2.5), "b": TagLimits(hi=9.0)},
    line_flags=("limit", "cusum"), pca=False, pca_variance=0.8, pca_max_components=3,
    pca_limits="theoretical", iforest_trees=7, iforest_max_samples=64, input_alpha=0.5, seed=42,
    component_far=0.02, target_far=0.005, calibration="quantile", holdout_fraction=0.0,
    refit=False, threshold_margin=1.2, smooth_alpha=0.3, debounce_k=2, debounce_n=5, clear_n=4,
    hysteresis=0.6, weights=(1.0, 0.5, 0.0, 2.0),
)


@pytest.mark.parametrize("spec", [DetectorSpec(), FULL])
def test_to_dict_from_dict_round_trip_including_json(spec):
    d = spec.to_dict()
    assert DetectorSpec.from_dict(d) == spec
    # The dict is what artifacts store as JSON: it must survive that too (inf limits included).
    assert DetectorSpec.from_dict(json.loads(json.dumps(d))) == spec


def test_from_dict_fills_defaults_and_validates():
    assert DetectorSpec.from_dict({"z_max": 4.0}) == DetectorSpec(z_max=4.0)
    with pytest.raises(ValueError, match="z_max"):
        DetectorSpec.from_dict({"z_max": -4.0})


def test_from_dict_rejects_unknown_keys_by_name():
    d = DetectorSpec().to_dict()
    d["z_maxx"] = 3.0
    d["colour"] = "red"
    with pytest.raises(ValueError) as err:
        DetectorSpec.from_dict(d)
    assert "z_maxx" in str(err.value) and "colour" in str(err.value)


@settings(max_examples=60, deadline=None)
@given(
    ewma_alpha=st.floats(0.001, 1.0),
    warmup=st.integers(1, 500),
    cusum_h=st.one_of(st.just(math.inf), st.floats(0.1, 100)),
    limits=st.dictionaries(st.text(min_size=1, max_size=8),
                           st.tuples(st.floats(-1e6, 0), st.floats(0.001, 1e6)), max_size=3),
    debounce=st.integers(1, 10).flatmap(lambda n: st.tuples(st.integers(1, n), st.just(n))),
    weights=st.tuples(*[st.floats(0, 10)] * 4),
    line_flags=st.lists(st.sampled_from(["limit", "rate_of_change", "flatline", "ewma_z", "cusum"]),
                        unique=True).map(tuple),
    max_comp=st.one_of(st.none(), st.integers(1, 20)),
)
def test_round_trip_property(ewma_alpha, warmup, cusum_h, limits, debounce, weights, line_flags,
                             max_comp):
    spec = DetectorSpec(ewma_alpha=ewma_alpha, warmup=warmup, cusum_h=cusum_h,
                        limits={k: TagLimits(*v) for k, v in limits.items()},
                        debounce_k=debounce[0], debounce_n=debounce[1], weights=weights,
                        line_flags=line_flags, pca_max_components=max_comp)
    assert DetectorSpec.from_dict(json.loads(json.dumps(spec.to_dict()))) == spec
