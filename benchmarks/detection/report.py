"""The evaluation's tables, as rows shared by the console and the markdown file."""

from benchmarks.detection import metrics
from benchmarks.detection.evaluate import METHODS

SHOWN = ("detector", "pca")  # the set tables; the per-fault tables also show T² and Q alone
METHOD_NAMES = {"detector": "detector", "pca": "PCA T²/Q", "pca_t2": "PCA T² only", "pca_q": "PCA Q only"}


def _pct(v: float | None) -> str:
    return "-" if v is None else f"{100 * v:.1f} %"


def _num(v: float | None, fmt: str = ".0f") -> str:
    return "-" if v is None else format(v, fmt)


def _delay(p: dict) -> list[str]:
    return [_num(p["median_delay_rows"]), _num(p["median_delay_s"])]


def set_table(summary: dict) -> tuple[str, list[str], list[list[str]]]:
    header = ["set", "method", "faults", "detection (rows)", "faults detected", "delay (rows)",
              "delay (s)", "FAR", "designed", "FAR / designed", "fit's FAR bound"]
    rows = []
    for name, by_method in summary["sets"].items():
        for m in SHOWN:
            p = by_method[m]
            rows.append([name, METHOD_NAMES[m], str(p["faults"]), _pct(p["detection_rate"]),
                         _pct(p["faults_detected"]), *_delay(p), f"{100 * p['far']:.2f} %",
                         f"{100 * p['designed_far']:.2f} %", f"{p['far_ratio']:.1f}x",
                         "-" if p.get("fit_far_bound") is None else f"{100 * p['fit_far_bound']:.2f} %"])
    return "Per set: detection rate is the mean over faults of the share of faulty rows flagged; " \
           "FAR the share of normal scored rows flagged; fit's FAR bound the median over fits of the " \
           "upper 95 % bound the detector's fit reports", header, rows


def kind_table(summary: dict) -> tuple[str, list[str], list[list[str]]]:
    columns = ("detection", "detected", "delay (rows)", "delay (s)", "FAR")
    header = ["set", "kind", "faults"] + [f"{METHOD_NAMES[m]} {col}" for m in SHOWN for col in columns]
    rows = []
    for name, by_method in summary["kinds"].items():
        for kind, p0 in by_method["detector"].items():
            row = [name, kind, str(p0["faults"])]
            for m in SHOWN:
                p = by_method[m][kind]
                row += [_pct(p["detection_rate"]), _pct(p["faults_detected"]), *_delay(p),
                        f"{100 * p['far']:.2f} %"]
            rows.append(row)
    return "Per fault kind (FAR: on the normal rows of the runs holding that kind)", header, rows


def process_table(summary: dict) -> tuple[str, list[str], list[list[str]]] | None:
    runs = summary["runs"].get("process")
    if not runs:
        return None
    header = ["fault", "kind"] + [METHOD_NAMES[m] for m in METHODS] + ["detector delay (s)", "PCA delay (s)"]
    rows = []
    names = list(dict.fromkeys(r["run"] for r in runs["detector"]))
    plants = len(runs["detector"]) // len(names)
    for name in names:
        same = {m: [r for r in runs[m] if r["run"] == name] for m in METHODS}
        if not same["detector"][0]["faults"]:
            far = [sum(r["false_alarms"] for r in same[m]) / sum(r["normal_rows"] for r in same[m])
                   for m in METHODS]
            rows.append([name, "-", *(f"FAR {100 * f:.2f} %" for f in far), "-", "-"])
            continue
        faults = {m: [r["faults"][0] for r in same[m]] for m in METHODS}
        rates = [sum(f["flagged"] / f["rows"] for f in faults[m]) / len(faults[m]) for m in METHODS]
        delays = [metrics.median_or_none([f["delay_s"] for f in faults[m] if f["flagged"]])
                  for m in ("detector", "pca")]
        rows.append([name, faults["detector"][0]["kind"], *map(_pct, rates), *map(_num, delays)])
    return (f"Process set, per fault (share of faulty rows flagged, mean over {plants} plant(s); "
            "the normal run shows its FAR)"), header, rows


def stream_table(summary: dict) -> tuple[str, list[str], list[list[str]]] | None:
    runs = summary["runs"].get("univariate")
    if not runs:
        return None
    header = ["stream"] + [f"{METHOD_NAMES[m]} {col}" for m in SHOWN
                           for col in ("FAR", "detected", "NAB raw")]
    rows = []
    for i, run in enumerate(runs["detector"]):
        row = [run["run"]]
        for m in SHOWN:
            r = runs[m][i]
            found = sum(1 for f in r["faults"] if f["flagged"])
            row += [f"{100 * r['false_alarms'] / r['normal_rows']:.2f} %", f"{found}/{len(r['faults'])}",
                    f"{r['nab']['raw']:.1f}"]
        rows.append(row)
    return "Univariate set, per stream (NAB raw: never alarming scores -1 per anomaly)", header, rows


def skab_table(summary: dict) -> tuple[str, list[str], list[list[str]]] | None:
    if "skab" not in summary["sets"]:
        return None
    header = ["method", "F1", "FAR", "MAR", "TP", "FP", "FN", "TN"]
    rows = []
    for m in SHOWN:
        p = summary["sets"]["skab"][m]
        rows.append([METHOD_NAMES[m], f"{p['f1']:.3f}", _pct(p["far"]), _pct(p["mar"]),
                     *(str(p["counts"][k]) for k in ("tp", "fp", "fn", "tn"))])
    return "SKAB, pooled over files (fit on the first 400 rows of each)", header, rows


def nab_table(summary: dict) -> tuple[str, list[str], list[list[str]]] | None:
    if "univariate" not in summary["sets"]:
        return None
    header = ["method", "NAB-style score", "never alarms", "perfect", "windows detected",
              "false alarm onsets / 1000 rows"]
    rows = []
    for m in SHOWN:
        p = summary["sets"]["univariate"][m]
        rows.append([METHOD_NAMES[m], f"{p['nab']['score']:.1f}", "0.0", "100.0",
                     _pct(p["faults_detected"]), f"{p['false_alarm_onsets_per_1000']:.1f}"])
    return "Univariate set, NAB-style score (standard profile, normalised)", header, rows


def tables(summary: dict) -> list[tuple[str, list[str], list[list[str]]]]:
    made = [set_table(summary), kind_table(summary), process_table(summary), skab_table(summary),
            nab_table(summary), stream_table(summary)]
    return [t for t in made if t is not None]


def markdown(summary: dict) -> str:
    run = summary["run"]
    lines = [f"# Detection evaluation ({run['when']})", "",
             f"`{run['command']}` — detector {run['detector_version']}, designed FAR "
             f"{100 * run['designed_far']:.2f} %, spec {run['spec_file'] or 'DetectorSpec() defaults'}", ""]
    for title, header, rows in tables(summary):
        lines += [f"## {title}", "", "| " + " | ".join(header) + " |",
                  "|" + "|".join("---" for _ in header) + "|"]
        lines += ["| " + " | ".join(r) + " |" for r in rows]
        lines.append("")
    if summary["notes"]:
        lines += ["## Notes", ""] + [f"- {n}" for n in summary["notes"]] + [""]
    return "\n".join(lines)
