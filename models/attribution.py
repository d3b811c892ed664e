"""Why the line alarmed: the component that drives the line score and the tags behind it.

Computed on demand from the state the last `kernels.step` left behind (the held
values, the scaled model input, the adaptive baselines and the outputs), so the
hot path pays nothing when nobody asks. Per component:

- tags: each tag's own normalised score (its worst per-tag detector) and its flags;
- pca_t2: the classic MSPC contribution c_i * sum_a p_ai t_a / lambda_a (c the centred
  input, t = P c the scores), which sums to T² over the tags; a tag may contribute
  negatively (it pulls the sample back towards the centre);
- pca_spe: the squared residual r_i² of each tag, r = c - Pᵀ P c, which sums to SPE;
- iforest: `kernels.iforest_path_credit`, the depth-weighted split counts along the
  sample's path through every tree.

Deviations are in engineering units: what the component saw minus what it expected
(the PCA reconstruction for SPE; the tag's normal level for the others), mapped back
through the scaler and the adaptive baseline.
"""

import math
from dataclasses import dataclass

import numpy as np

from models import kernels as K


@dataclass(frozen=True)
class TagContribution:
    tag: str
    share: float  # this tag's part of the component's statistic (the shares sum to 1)
    value: float  # the tag's held value
    expected: float  # what the component expected for it (nan when it has no expectation)
    deviation: float  # value - expected, engineering units, signed
    percent: float  # deviation as a percentage of |expected| (nan when expected is 0 or nan)
    sigmas: float  # deviation in the tag's robust standard deviations (nan when unknown)
    flags: tuple[str, ...]  # the tag's flags on this frame (models.names.FLAG_NAMES)


@dataclass(frozen=True)
class Attribution:
    component: str | None  # the component driving the line score; None when nothing scored
    ratio: float  # its normalised score: the statistic over its own limit (1.0 = at the limit)
    components: dict[str, float]  # every component's normalised score
    top: tuple[TagContribution, ...]  # the component's top tags, largest share first
    flagged: dict[str, tuple[str, ...]]  # every tag with a flag on this frame
    # Tags that never had a usable value since reset: until each has one, PCA and the forest stay off.
    waiting: tuple[str, ...] = ()

    @property
    def rule_finding(self) -> bool:
        """The ratio is a rule's grade (hard limit, flatline: kernels.BINARY_SCORE and up), not a
        statistic over its limit: a fact, to be reported without a ratio."""
        return self.component == "tags" and self.ratio >= K.BINARY_SCORE

    def to_dict(self) -> dict:
        """JSON-ready (nan -> None). Built field by field: `dataclasses.asdict` deep-copies every
        value and took two thirds of a line alarm's explanation (~65 of ~100 us, 3 tags)."""
        return {"component": self.component, "ratio": finite(self.ratio),
                "components": {k: finite(v) for k, v in self.components.items()},
                "top": [{"tag": t.tag, "share": finite(t.share), "value": finite(t.value),
                         "expected": finite(t.expected), "deviation": finite(t.deviation),
                         "percent": finite(t.percent), "sigmas": finite(t.sigmas), "flags": list(t.flags)}
                        for t in self.top],
                "flagged": {k: list(v) for k, v in self.flagged.items()}, "waiting": list(self.waiting)}


def finite(v: float) -> float | None:
    return v if math.isfinite(v) else None


def flag_names(bits: int) -> tuple[str, ...]:
    return tuple(name for bit, name in sorted(K.FLAG_NAMES.items()) if bits & bit)


def explain(tags: list[str], model: dict[str, np.ndarray], state: dict[str, np.ndarray],
            out: np.ndarray, tag_flags: np.ndarray, tag_scores: np.ndarray, top_k: int = 3,
            component: str | None = None, fitted: bool = True) -> Attribution:
    """Attribute the latest step's line score (or `component`'s score) to the tags.

    `model` and `state` are the detector's arrays (StreamingDetector.model/.state), `out`,
    `tag_flags`, `tag_scores` its latest step outputs; `fitted` False for a rules-only
    detector (no normal level to deviate from). Reads them, changes nothing.
    """
    if component is not None and component not in K.COMPONENT_NAMES:
        raise ValueError(f"component {component!r}: expected one of {', '.join(K.COMPONENT_NAMES)}")
    tp, ts, dp = model["tag_params"], state["tag_state"], model["decision_params"]
    ratios = {name: float(out[c]) for c, name in enumerate(K.COMPONENT_NAMES)}
    flagged = {tag: flag_names(int(f)) for tag, f in zip(tags, tag_flags, strict=True) if f}
    waiting = tuple(tag for tag, have in zip(tags, ts[:, K.TS_HAVE], strict=True) if have == 0.0)
    if component is None:
        weighted = dp[K.D_W_TAGS:K.D_W_TAGS + K.C_SIZE] * out[:K.C_SIZE]
        if not weighted.max() > 0.0:
            return Attribution(None, 0.0, ratios, (), flagged, waiting)
        component = K.COMPONENT_NAMES[int(np.argmax(weighted))]
    c = K.COMPONENT_NAMES.index(component)
    adapted = dp[K.D_ADAPT_RATE] > 0.0 and state["decision_state"][K.DS_BASE_READY] != 0.0
    # A difference in the models' scaled input, in engineering units of today's baseline.
    to_units = tp[:, K.TP_INV_SCALE] * (ts[:, K.TS_BASE_GAIN] if adapted else 1.0)
    # Today's normal level and spread (the robust scale) of each tag; a rules-only detector has none.
    base_mean = ts[:, K.TS_BASE_MEAN] if adapted else tp[:, K.TP_BASE_MEAN]
    base_sd = 1.0 / to_units
    if not fitted:
        base_mean = base_sd = np.full(len(tags), np.nan)
    share, scaled = _contributions(c, model, tp, ts, dp, tag_scores)
    value = ts[:, K.TS_HELD]
    deviation = value - base_mean if scaled is None else scaled / to_units
    expected = value - deviation
    order = np.argsort(-share, kind="stable")[:max(top_k, 0)]
    top = []
    for i in order:
        if share[i] <= 0.0:
            break
        exp = float(expected[i])
        dev = float(deviation[i])
        top.append(TagContribution(
            tag=tags[i], share=float(share[i]), value=float(value[i]), expected=exp, deviation=dev,
            percent=100.0 * dev / abs(exp) if exp != 0.0 and math.isfinite(exp) else math.nan,
            sigmas=float(dev / base_sd[i]),
            flags=flag_names(int(tag_flags[i]))))
    return Attribution(component, ratios[component], ratios, tuple(top), flagged, waiting)


def _contributions(c, model, tp, ts, dp, tag_scores):
    """Share per tag, and the deviation the model saw in scaled units (None: from the normal level)."""
    n = tp.shape[0]
    if c == K.C_TAGS:
        total = tag_scores.sum()
        return (tag_scores / total if total > 0.0 else np.zeros(n)), None
    u = ts[:, K.TS_U]  # the multivariate models' scaled input
    if c == K.C_IFOREST:
        credit = np.zeros(n)
        if model["f_roots"].shape[0] > 0:
            K.iforest_path_credit(np.ascontiguousarray(u), model["f_nodes"], model["f_leaf_depth"],
                                  model["f_roots"], int(dp[K.D_F_DEPTH]), credit)
        total = credit.sum()
        return (credit / total if total > 0.0 else credit), u  # from the scaler's centre
    components, inv_eig = model["pca_components"], model["pca_inv_eig"]
    centred = u - tp[:, K.TP_PCA_MEAN]
    scores = components @ centred
    if c == K.C_T2:
        part = centred * (components.T @ (scores * inv_eig))
        total = part.sum()
        return (part / total if total > 0.0 else np.zeros(n)), centred
    residual = centred - components.T @ scores
    part = residual * residual
    total = part.sum()
    return (part / total if total > 0.0 else np.zeros(n)), residual
