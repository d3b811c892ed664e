"""Smoke test of benchmarks/latency.py: it runs and writes its figures. No timing thresholds."""

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _positive(value) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and value > 0


def test_latency_benchmark_quick(tmp_path):
    out = tmp_path / "tmp.json"
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks.latency", "--quick", "--tags", "8", "--json", str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    res = json.loads(out.read_text())

    for key in ("machine", "config", "targets", "timer_overhead_ns", "live", "river_hst",
                "sklearn_iforest", "ratios", "batch", "target_check", "wall_seconds"):
        assert key in res, key
    assert res["config"]["iforest_trees"] == 100
    assert res["config"]["tags"] == [8]

    for mode in ("gc_frozen", "gc_enabled"):
        fig = res["live"]["8"][mode]
        for k in ("n", "mean_us", "p50_us", "p99_us", "p999_us", "max_us"):
            assert _positive(fig[k]), (mode, k, fig[k])
        assert fig["p50_us"] <= fig["p99_us"] <= fig["p999_us"] <= fig["max_us"]
    assert res["live"]["8"]["gc_frozen"]["n"] == 5_000

    for section in ("river_hst", "sklearn_iforest"):
        fig = res[section]["8"]
        for k in ("n", "mean_us", "p50_us", "p99_us", "p999_us", "max_us"):
            assert _positive(fig[k]), (section, k, fig[k])
    for k in ("river_mean", "river_p50", "river_p99", "sklearn_mean", "sklearn_p50"):
        assert _positive(res["ratios"]["8"][k]), k

    batch = res["batch"]["8"]
    for k in ("rows", "seconds_median", "tag_samples_per_s", "rows_per_s"):
        assert _positive(batch[k]), k
