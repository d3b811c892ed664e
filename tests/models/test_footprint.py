"""A running service loads a model and steps it without scikit-learn or scipy's fitting modules.

numba imports `scipy` (a version check) and `scipy.linalg` (its BLAS bindings) on its
own when scipy is installed; anything beyond what numba pulls is ours and must not be.
"""

import subprocess
import sys

import numpy as np

from models import StreamingDetector

HEAVY = ("scipy", "sklearn")
PRINT_HEAVY = f"print(sorted(m for m in sys.modules if m.split('.')[0] in {HEAVY!r}))"

NUMBA_ALONE = f"""
import sys, numba, numpy as np
numba.njit(lambda a: a.sum())(np.zeros(2))
{PRINT_HEAVY}
"""

SERVICE = f"""
import sys, numpy as np
import models.detector
det = models.detector.StreamingDetector.load(sys.argv[1])
ones = np.ones(det.n, np.uint8)
det.step(0.0, np.zeros(det.n), ones, ones)
det.run_batch(np.zeros((3, det.n)))
models.detector.StreamingDetector.rules_only(["a"], limits={{"a": (0, 1)}}).step(0.0, np.zeros(1),
                                                                                np.ones(1, np.uint8),
                                                                                np.ones(1, np.uint8))
{PRINT_HEAVY}
"""


def _modules(code: str, *args: str) -> set[str]:
    done = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, check=True)
    return set(eval(done.stdout.strip().splitlines()[-1]))


def test_loading_and_stepping_a_model_imports_nothing_heavy_beyond_numba(tmp_path):
    path = tmp_path / "model.npz"
    x = np.random.default_rng(0).normal(size=(200, 3))
    StreamingDetector(["a", "b", "c"]).fit(x).save(path)
    ours = _modules(SERVICE, str(path)) - _modules(NUMBA_ALONE)
    assert sorted(ours) == []


def test_the_spec_and_the_names_import_no_numba_numpy_scipy_or_sklearn():
    code = "import sys, models.spec, models.names, models.errors\n" + PRINT_HEAVY.replace(
        repr(HEAVY), repr(("scipy", "sklearn", "numba", "numpy")))
    assert _modules(code) == set()
