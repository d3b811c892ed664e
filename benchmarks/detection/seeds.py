"""The generated sets over many seeds: realised vs designed FAR and detection, detector and PCA T²/Q.

    python -m benchmarks.detection.seeds --seeds 20                 # seeds 0-19, DetectorSpec()
    python -m benchmarks.detection.seeds --seeds 10 --spec r.json   # another recipe

One seed's process set holds about 9,000 normal rows and a few dozen false-alarm rows that come in
clusters, so its realised FAR moves by 2-5x between seeds (0.17 % to 0.86 % at one commit): a
calibration is judged on the mean over many draws, which this prints per seed and pooled.
"""

import argparse
import sys
import warnings
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.table import Table

from benchmarks.detection import datasets
from benchmarks.detection.__main__ import load_spec
from benchmarks.detection.evaluate import evaluate_set, pool

MAKERS = {"univariate": datasets.univariate_set, "process": datasets.process_set}


def seed_figures(name: str, seed: int, spec) -> dict:
    with warnings.catch_warnings():  # the fits' warnings are the main suite's business
        warnings.simplefilter("ignore")
        runs = evaluate_set(MAKERS[name](seed=seed), spec)["runs"]
    out = {}
    for method in ("detector", "pca"):
        p = pool(runs[method], spec.target_far)
        out[method] = (p["far"], p["detection_rate"], p["normal_rows"])
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=int, default=20, help="seeds 0..N-1")
    ap.add_argument("--spec", type=Path, help="JSON detector spec (default DetectorSpec())")
    ap.add_argument("--only", default="univariate,process", help="comma-separated sets")
    args = ap.parse_args(argv)
    spec = load_spec(args.spec)
    console = Console(width=None if sys.stdout.isatty() else 160)
    for name in [s for s in args.only.split(",") if s]:
        if name not in MAKERS:
            console.print(f"[red]error:[/] --only {name}: expected some of {', '.join(MAKERS)}")
            return 2
        table = Table(title=f"{name}: designed FAR {spec.target_far:.2%}")
        for col in ("seed", "detector FAR", "x design", "detector detection", "PCA T²/Q FAR",
                    "PCA T²/Q detection"):
            table.add_column(col, justify="right")
        rows = []
        for seed in range(args.seeds):
            f = seed_figures(name, seed, spec)
            rows.append([*f["detector"][:2], *f["pca"][:2]])
            table.add_row(str(seed), f"{rows[-1][0]:.3%}", f"{rows[-1][0] / spec.target_far:.1f}x",
                          f"{rows[-1][1]:.1%}", f"{rows[-1][2]:.3%}", f"{rows[-1][3]:.1%}")
        m = np.mean(rows, axis=0)
        table.add_row("mean", f"{m[0]:.3%}", f"{m[0] / spec.target_far:.1f}x", f"{m[1]:.1%}",
                      f"{m[2]:.3%}", f"{m[3]:.1%}", style="bold")
        console.print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
