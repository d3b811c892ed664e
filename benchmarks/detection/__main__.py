"""Run the detection evaluation: every set, one detector configuration, the PCA T²/Q baseline alongside.

    python -m benchmarks.detection --skab ../shared/data/skab --out out/detection
    python -m benchmarks.detection --quick --out out/detection-quick     # small sizes, no SKAB
    python -m benchmarks.detection --skab ... --spec recipe.json          # compare a recipe
    python -m benchmarks.detection --skab ... --spec skab                 # the SKAB recipe

Prints the tables and writes `results.md` and `results.json` (every figure) to --out.
"""

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

from benchmarks import skab
from benchmarks.detection import datasets
from benchmarks.detection.evaluate import evaluate_set, summarise
from benchmarks.detection.report import markdown, tables
from models import DetectorSpec

SETS = ("univariate", "process", "skab")
LABEL_COLUMNS = ("set", "method", "kind", "fault", "stream")


def detector_version() -> str:
    """The commit the run used, with '+modified' when models/ has uncommitted changes."""
    root = Path(__file__).resolve().parents[2]
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True,
                                text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "models"], cwd=root, capture_output=True,
                               text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return commit + ("+modified" if dirty else "")


def load_spec(path: Path | None) -> DetectorSpec:
    """DetectorSpec() without a path; 'skab' names the SKAB recipe of benchmarks.skab; else a JSON file."""
    if path is None:
        return DetectorSpec()
    if str(path) == "skab":
        return skab.SKAB_SPEC
    return DetectorSpec.from_dict(json.loads(path.read_text()))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--skab", type=Path, help="SKAB data folder (holds valve1/, valve2/, other/); "
                                              "SKAB is left out without it")
    ap.add_argument("--out", type=Path, default=Path("out/detection"), help="folder for results.md/json")
    ap.add_argument("--spec", type=Path, help="JSON detector spec to evaluate instead of DetectorSpec() "
                                              "('skab': the SKAB recipe of benchmarks.skab)")
    ap.add_argument("--quick", action="store_true", help="small generated sets (CI smoke)")
    ap.add_argument("--seed", type=int, default=0, help="seed of the generated sets")
    ap.add_argument("--only", default="", help="comma-separated sets to run (univariate, process, skab)")
    args = ap.parse_args(argv)
    err = Console(stderr=True)
    if args.skab is not None and not all((args.skab / f).is_dir() for f in skab.FOLDERS):
        err.print(f"[red]error:[/] {args.skab} does not look like SKAB data (expected folders "
                  f"{', '.join(skab.FOLDERS)}): pass the SKAB data folder", soft_wrap=True)
        return 2
    try:
        spec = load_spec(args.spec)
    except (OSError, ValueError, TypeError) as exc:
        err.print(f"[red]error:[/] --spec {args.spec}: {exc}", soft_wrap=True)
        return 2

    only = [s for s in args.only.split(",") if s] or list(SETS)
    unknown = sorted(set(only) - set(SETS))
    if unknown:
        err.print(f"[red]error:[/] --only {','.join(unknown)}: expected some of {', '.join(SETS)}",
                  soft_wrap=True)
        return 2
    makers = {"univariate": lambda: datasets.univariate_set(args.quick, args.seed),
              "process": lambda: datasets.process_set(args.quick, args.seed),
              "skab": lambda: datasets.skab_set(args.skab)}
    sets = {name: makers[name]() for name in only if name != "skab" or args.skab is not None}
    results, timings = {}, {}
    for name, groups in sets.items():
        started = time.perf_counter()
        results[name] = evaluate_set(groups, spec)
        timings[name] = round(time.perf_counter() - started, 2)
    summary = summarise(results, spec.target_far)
    command = "python -m benchmarks.detection " + " ".join(argv if argv is not None else sys.argv[1:])
    summary["run"] = {"command": command, "detector_version": detector_version(), "quick": args.quick,
                      "seed": args.seed, "spec": spec.to_dict(), "spec_file": str(args.spec or ""),
                      "designed_far": spec.target_far, "seconds": timings,
                      "when": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}

    console = Console(width=None if sys.stdout.isatty() else 200)
    for title, header, rows in tables(summary):
        table = Table(title=title)
        for col in header:
            table.add_column(col, justify="left" if col in LABEL_COLUMNS else "right")
        for row in rows:
            table.add_row(*row)
        console.print(table)
    for line in summary["notes"]:
        console.print(line, soft_wrap=True)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(json.dumps(summary, indent=2))
    (args.out / "results.md").write_text(markdown(summary))
    console.print(f"{command}; detector {summary['run']['detector_version']}; seconds per set {timings}; "
                  f"results in {args.out}", soft_wrap=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
