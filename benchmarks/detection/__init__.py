"""Detection evaluation you can run: generated sets that reproduce known failure modes, SKAB, a PCA baseline.

    python -m benchmarks.detection --skab ../shared/data/skab --out out/detection

Every set is scored with one detector configuration (`DetectorSpec()` unless `--spec`),
fitted on normal data only; labels are read only when scoring. See docs/detection-evaluation.md.
"""
