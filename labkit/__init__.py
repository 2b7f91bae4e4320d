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


class WeightsError(RuntimeError):
    """Weights are missing, corrupt or could not be downloaded (``labkit.models.WeightsError``)."""


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

# The submodules load on first use (``labkit.models``, ``from labkit import data``): importing labkit itself
# pins the backend and nothing more, so ``labkit --help`` does not pay for torch and Keras.
_LAZY = ("data", "models")


def lazy_import(name: str):
    """The module ``name``, executed on first attribute access (``importlib.util.LazyLoader``).

    For the modules that register a `labkit` subcommand: ``nbformat = lazy_import("nbformat")`` at the top
    costs nothing until the subcommand runs, where ``import nbformat`` would cost ``labkit --help`` a second.
    """
    import importlib.util

    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.find_spec(name)
    if spec is None:
        raise ModuleNotFoundError(f"No module named {name!r}", name=name)
    loader = importlib.util.LazyLoader(spec.loader)
    spec.loader = loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    loader.exec_module(module)
    return module


def __getattr__(name):
    if name in _LAZY:
        import importlib

        return importlib.import_module(f".{name}", __name__)
    raise AttributeError(f"module 'labkit' has no attribute {name!r}")


__all__ = ["BackendError", "WeightsError", "data", "models", "__version__"]
