"""Fit the detector and the PCA baseline on each group's normal rows, replay its runs, score and pool.

The detector is fitted exactly as a new user would: `StreamingDetector(tags, spec).fit(x, times)`
on the normal rows, then `run_batch(x, times)` over each run from a fresh state. A fit the
detector refuses is recorded (with its message) and scored as a detector that never alarms;
warnings the fit gives (e.g. a threshold decided by one component) are recorded as notes.
"""

import json
import warnings
from dataclasses import asdict

import numpy as np

from benchmarks.detection import metrics
from benchmarks.detection.datasets import Group, Run
from benchmarks.detection.pca_baseline import UNIVARIATE_LAGS, PCAMonitor
from models import DetectorSpec, StreamingDetector

METHODS = ("detector", "pca", "pca_t2", "pca_q")  # pca = T² or Q; the parts shown for insight
THRESHOLD_CAP = 0.99  # the detector's line-threshold cap; a threshold there means calibration pinned


def json_safe(value):
    """The detector's fit summary as plain JSON (numpy scalars and arrays become numbers and lists)."""
    return json.loads(json.dumps(value, default=lambda o: o.tolist() if hasattr(o, "tolist") else str(o)))


def score_run(run: Run, pred: np.ndarray) -> dict:
    """Every figure of one run's alarms that the summaries pool."""
    scored = np.arange(run.x.shape[0]) >= run.scored_from
    label = run.label
    windows = metrics.nab_windows(run.x.shape[0], run.faults)
    in_window = np.zeros_like(label)
    for lo, hi in windows:
        in_window[lo:hi] = True
    onsets = metrics.alarm_onsets(pred)
    onsets = onsets[(onsets >= run.scored_from) & ~in_window[onsets]]
    return {
        "run": run.name,
        "scored_rows": int(scored.sum()),
        "normal_rows": int((scored & ~label).sum()),
        "false_alarms": int((pred & scored & ~label).sum()),
        "counts": metrics.confusion(pred[scored], label[scored]),
        "faults": [asdict(metrics.fault_score(pred, run.t, f)) for f in run.faults],
        "nab": {"raw": metrics.nab_raw(pred, windows, run.scored_from),
                "perfect": metrics.nab_perfect(run.x.shape[0], windows, run.scored_from),
                "never": -metrics.NAB_A_FN * len(windows), "windows": len(windows)},
        "false_alarm_onsets": int(onsets.size),
    }


def evaluate_group(group: Group, spec: DetectorSpec) -> dict:
    """Fit both methods on the group's normal rows and score every run."""
    diag: dict = {"group": group.name, "fit_error": None, "threshold": None}
    det = None
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            det = StreamingDetector(group.tags, spec).fit(group.fit_x, group.fit_t)
            diag["threshold"] = det.threshold
            diag["fit_summary"] = json_safe(det.summary)
        except ValueError as exc:  # the detector refused the training data: say so, score as never alarming
            diag["fit_error"] = str(exc)
    diag["warnings"] = [f"{w.category.__name__}: {w.message}" for w in caught]
    pca = PCAMonitor.fit(group.fit_x, spec.target_far, UNIVARIATE_LAGS if len(group.tags) == 1 else 0)
    runs = {m: [] for m in METHODS}
    for run in group.runs:
        if det is not None:
            det.reset()
            pred = det.run_batch(run.x, run.t).alarm
        else:
            pred = np.zeros(run.x.shape[0], dtype=bool)
        t2, q = pca.alarms(run.x)
        for method, p in zip(METHODS, (pred, t2 | q, t2, q), strict=True):
            runs[method].append({"group": group.name, **score_run(run, p)})
    return {"diagnostics": diag, "runs": runs}


def evaluate_set(groups: list[Group], spec: DetectorSpec) -> dict:
    out = {"diagnostics": [], "runs": {m: [] for m in METHODS}}
    for group in groups:
        res = evaluate_group(group, spec)
        out["diagnostics"].append(res["diagnostics"])
        for m in METHODS:
            out["runs"][m] += res["runs"][m]
    return out


def pool(runs: list[dict], designed_far: float) -> dict:
    """Pool the runs of one method over a set (or over one fault kind's faults)."""
    faults = [f for r in runs for f in r["faults"]]
    detected = [f for f in faults if f["flagged"]]
    normal = sum(r["normal_rows"] for r in runs)
    far = sum(r["false_alarms"] for r in runs) / normal if normal else 0.0
    counts = {k: sum(r["counts"][k] for r in runs) for k in ("tp", "fp", "fn", "tn")}
    nab = {k: sum(r["nab"][k] for r in runs) for k in ("raw", "perfect", "never", "windows")}
    scored = sum(r["scored_rows"] for r in runs)
    return {
        "faults": len(faults),
        "detection_rate": float(np.mean([f["flagged"] / f["rows"] for f in faults])) if faults else None,
        "faults_detected": len(detected) / len(faults) if faults else None,
        "median_delay_rows": metrics.median_or_none([f["delay_rows"] for f in detected]),
        "median_delay_s": metrics.median_or_none([f["delay_s"] for f in detected]),
        "far": far, "designed_far": designed_far, "far_ratio": far / designed_far,
        "normal_rows": normal,
        "counts": counts, **metrics.outlier_scores(counts),
        "nab": {**nab, "score": metrics.nab_normalised(nab["raw"], nab["perfect"], nab["never"])},
        "false_alarm_onsets_per_1000": (1000.0 * sum(r["false_alarm_onsets"] for r in runs) / scored
                                        if scored else 0.0),
    }


def by_kind(runs: list[dict], designed_far: float) -> dict[str, dict]:
    """Per fault kind: the faults of that kind (FAR over the runs holding them)."""
    kinds = sorted({f["kind"] for r in runs for f in r["faults"]})
    out = {}
    for kind in kinds:
        holding = [{**r, "faults": [f for f in r["faults"] if f["kind"] == kind]}
                   for r in runs if any(f["kind"] == kind for f in r["faults"])]
        out[kind] = pool(holding, designed_far)
    return out


def fit_far_bound(diags: list[dict]) -> float | None:
    """Median over fits of the false-alarm bound the detector's own fit reports (upper 95 %), if it does."""
    bounds = [d["fit_summary"].get("calibration", {}).get("holdout_exceedance", {}).get("upper_95")
              for d in diags if d.get("fit_summary")]
    return metrics.median_or_none([b for b in bounds if b is not None])


def summarise(results: dict[str, dict], designed_far: float) -> dict:
    """Every figure, per set and method, per fault kind, per process fault; plus diagnostic notes."""
    summary: dict = {"sets": {}, "kinds": {}, "runs": {}, "diagnostics": {}, "notes": []}
    for name, res in results.items():
        summary["sets"][name] = {m: pool(res["runs"][m], designed_far) for m in METHODS}
        summary["sets"][name]["detector"]["fit_far_bound"] = fit_far_bound(res["diagnostics"])
        summary["kinds"][name] = {m: by_kind(res["runs"][m], designed_far) for m in METHODS}
        summary["runs"][name] = res["runs"]
        diags = res["diagnostics"]
        summary["diagnostics"][name] = diags
        refused = [d for d in diags if d["fit_error"]]
        pinned = [d["group"] for d in diags if d["threshold"] is not None and (
            d["threshold"] >= THRESHOLD_CAP
            or d["fit_summary"].get("calibration", {}).get("pinned_at_cap", False))]
        zero = [d["group"] for d in diags if d["threshold"] == 0.0]
        for d in refused:
            summary["notes"].append(f"{name}: fit refused {d['group']} (scored as never alarming): "
                                    f"{d['fit_error']}")
        if pinned:
            summary["notes"].append(f"{name}: line threshold at the {THRESHOLD_CAP} cap on {len(pinned)} of "
                                    f"{len(diags)} fits: {', '.join(pinned)}")
        if zero:
            summary["notes"].append(f"{name}: line threshold exactly 0 on {', '.join(zero)}")
        summary["notes"] += [f"{name}: fit of {d['group']} warned: {w}" for d in diags for w in d["warnings"]]
    return summary
