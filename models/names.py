"""The names and bit values the detector's outputs and settings use, importable without numba.

The config schema, the CLI and the controller name flags, components and
calibration methods; they import this module, never the kernels (which pull
numba). `models.kernels` takes its flag bits from here: numba compiles these
values into the kernels and its on-disk cache does not see an edit of this file,
so a change of a bit value must come with a change of models/kernels.py (which
invalidates the cache). Bit values are part of the artifact and alarm contract:
add new bits, never renumber.

>>> FLAG_BITS["flatline"] == FLAG_FLAT
True
>>> [FLAG_NAMES[b] for b in sorted(FLAG_NAMES)][:3]
['invalid', 'limit', 'rate_of_change']
"""

# Per-tag flag bits (int32 bitmask in the detector's tag_flags output)
FLAG_INVALID = 1  # latest fresh sample was NaN/inf or bad quality: not fed to any model
FLAG_LIMIT = 2  # held value outside the hard limits, or latest fresh sample outside the usable range
FLAG_ROC = 4
FLAG_FLAT = 8
FLAG_EWMA = 16
FLAG_CUSUM = 32
FLAG_NAMES = {
    FLAG_INVALID: "invalid",
    FLAG_LIMIT: "limit",
    FLAG_ROC: "rate_of_change",
    FLAG_FLAT: "flatline",
    FLAG_EWMA: "ewma_z",
    FLAG_CUSUM: "cusum",
}
FLAG_BITS = {name: bit for bit, name in FLAG_NAMES.items()}
# Per-tag detectors that may feed the line score (DetectorSpec.line_flags); validity always alarms apart.
LINE_FLAG_NAMES = ("limit", "rate_of_change", "flatline", "ewma_z", "cusum")

# Components of the line score, in the order of the detector's `components` output
COMPONENT_NAMES = ("tags", "pca_t2", "pca_spe", "iforest")

# Threshold calibration estimators (DetectorSpec.calibration)
CALIBRATION_METHODS = ("quantile", "pot")
