"""labkit: a teaching lab kit for explaining the predictions of CNN image classifiers.

The course runs Keras 3 on the PyTorch backend, so importing labkit pins ``KERAS_BACKEND=torch`` before
Keras is first imported. If Keras was already imported with another backend it is too late to switch,
and labkit says how to fix it instead of failing later in a confusing way.
"""

import os
import sys

__version__ = "0.1.0"


class BackendError(RuntimeError):
    """Keras was imported with a backend other than torch before labkit."""


def _pin_keras_backend() -> None:
    if "keras" in sys.modules:
        backend = sys.modules["keras"].backend.backend()
        if backend != "torch":
            raise BackendError(
                f"Keras is already running on the {backend!r} backend; labkit needs torch: "
                "restart the kernel and import labkit before keras (or set KERAS_BACKEND=torch)"
            )
    os.environ["KERAS_BACKEND"] = "torch"


_pin_keras_backend()

from . import data, models  # noqa: E402  (the backend must be pinned first)

__all__ = ["BackendError", "data", "models", "__version__"]
