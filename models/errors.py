"""The errors of models/: one root, `ModelError`, that the controller translates for the user.

>>> issubclass(NotFittedError, ModelError) and issubclass(CalibrationWarning, UserWarning)
True
"""


class ModelError(ValueError):
    """A model that cannot be used; the message is one line naming the file or the call and the fix."""


class NotFittedError(ModelError, RuntimeError):
    """The detector has no fitted (or loaded) model yet: call fit(), rules_only() or load()."""


class CalibrationWarning(UserWarning):
    """Fit calibrated, but a cap, a floor or one component decided it: read the calibration report."""
