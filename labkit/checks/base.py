"""What every check shares: one line of PASS or HINT, and recognising mistakes by their answers.

Every check prints one line: ``PASS ...`` or ``HINT ...`` (the first recognised mistake, phrased as what to
look at, never as the answer), and returns True or False. A check never raises because of a student's
mistake; it raises only when it is called wrongly (e.g. the wrong data passed in).

Under nbgrader's autograding (the environment variable ``LABKIT_AUTOGRADE`` set to 1, as the
``nbgrader_config.py`` that ``labkit grading init`` writes does) a failed check raises ``AssertionError``
with the same ``HINT ...`` line instead, so the autograded test cell fails and nbgrader's feedback shows the hint.

Most checks work by *mutants*: the reference answer computed with one known mistake built in (no absolute
value, a sum instead of a max...). A student's answer that matches a mutant gets that mutant's hint.
"""

from __future__ import annotations

import contextlib
import functools
import os
import traceback

import numpy as np


class Hint(Exception):
    """A recognised mistake; the message is what the student sees."""


AUTOGRADE_ENV = "LABKIT_AUTOGRADE"


def autograding() -> bool:
    """True when a failed check must fail its cell: ``LABKIT_AUTOGRADE`` is set to 1 (or true/yes)."""
    return os.environ.get(AUTOGRADE_ENV, "").strip().lower() in ("1", "true", "yes")


def report(stage: str, run) -> bool:
    """Run ``run()`` (which returns the PASS message or raises Hint) and print one line.

    Under autograding a hint is raised as ``AssertionError("HINT [stage] ...")`` instead of printed.
    """
    try:
        message = run()
    except Hint as hint:
        line = f"HINT [{stage}] {hint}"
        if autograding():
            __tracebackhide__ = True  # noqa: F841 - IPython leaves this frame out of the traceback
            raise AssertionError(line) from None
        print(line)
        return False
    print(f"PASS [{stage}] {message}")
    return True


def _student_frame(tb):
    """The innermost frame of the traceback that is the student's code: not torch's, numpy's, labkit's or
    Python's own (a Jupyter cell, ``<ipython-input-...>`` or ipykernel's ``/tmp/ipykernel_.../N.py``, is)."""
    import os
    import sysconfig

    package = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # .../labkit
    library = {os.path.abspath(sysconfig.get_paths()[k]) for k in ("stdlib", "platstdlib", "purelib", "platlib")}

    def theirs(filename: str) -> bool:
        if filename.startswith("<ipython-input") or "ipykernel_" in filename:
            return False
        if filename.startswith("<"):  # <frozen ...>, <string>: not a file of the student's
            return True
        path = os.path.abspath(filename)
        return (path.startswith(package + os.sep) or "site-packages" in path.split(os.sep)
                or any(path.startswith(lib + os.sep) for lib in library))

    frames = [f for f in traceback.extract_tb(tb) if not theirs(f.filename)]
    return frames[-1] if frames else None


def call_student(fn, *args, what: str = "your function", **kwargs):
    """Call the student's code; its own exception becomes a hint naming the exception, not a traceback.

    The hint quotes the line of the student's own code that raised (or called the library that raised),
    never a line number inside torch or numpy.
    """
    if not callable(fn):
        raise Hint(f"{what} should be a function, got a {type(fn).__name__}")
    try:
        return fn(*args, **kwargs)
    except NotImplementedError:
        raise Hint(f"{what} still raises NotImplementedError: replace the stub with your code") from None
    except Exception as exc:  # noqa: BLE001 - any error in student code is reported, not raised
        message = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        frame = _student_frame(exc.__traceback__)
        where = ""
        if frame is not None:
            code = (frame.line or "").strip()
            where = f" at line {frame.lineno} of your code" + (f", `{code}`" if code else "")
        if "does not require grad" in message:
            raise Hint(f"{what} raised 'element 0 of tensors does not require grad'{where}: the model's weights are "
                       "frozen, so nothing in the graph needs a gradient unless the input does. Take the gradient "
                       "w.r.t. a copy of the input that requires one: x = x.detach().requires_grad_(True), "
                       "before the forward pass") from None
        raise Hint(f"{what} raised {type(exc).__name__}: {message}{where}") from None


def as_array(value, what: str) -> np.ndarray:
    """The student's answer as a float numpy array (torch tensors detached)."""
    try:
        import torch

        if isinstance(value, torch.Tensor):
            value = value.detach().cpu().numpy()
    except ImportError:  # pragma: no cover
        pass
    if value is None:
        raise Hint(f"{what} returned None: return the result")
    arr = np.asarray(value, dtype=np.float64)
    return arr


def close(a, b, rtol: float = 1e-4, atol: float = 1e-6) -> bool:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return a.shape == b.shape and np.allclose(a, b, rtol=rtol, atol=atol * max(1.0, float(np.abs(b).max(initial=0))))


def match(answer, reference, mutants: dict, what: str, shape_hint: str = "", rtol: float = 1e-4):
    """Raise the hint of the first mutant the answer equals; raise a generic hint if it matches nothing.

    ``mutants`` maps a hint to the answer that mistake produces (or to None when it does not apply here).
    """
    answer = np.asarray(answer, np.float64)
    reference = np.asarray(reference, np.float64)
    if close(answer, reference, rtol=rtol):
        return
    for hint, wrong in mutants.items():
        if wrong is not None and close(answer, wrong, rtol=rtol):
            raise Hint(hint)
    if answer.shape != reference.shape:
        raise Hint(f"{what} has shape {answer.shape}, expected {reference.shape}{shape_hint}")
    raise Hint(f"{what} differs from the reference (largest difference {np.abs(answer - reference).max():.3g}): "
               "re-read the formula in the text above")


@contextlib.contextmanager
def one_thread():
    """Run torch on one thread meanwhile: a check's tensors are tiny, and on a busy machine waking torch's
    thread pool makes each small forward ~50x slower (measured: 2 ms vs 120 ms)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@functools.lru_cache(maxsize=8)
def tiny_keras_cnn(input_shape=(8, 8, 3), widths=(4, 6), kernel2=(3, 3), dense=8, classes=4, seed=6):
    """conv(relu) conv(relu) pool | flatten dense(relu) dense(softmax), He-scaled random weights; built once.

    Small enough that a check runs in milliseconds, deep enough to have every layer kind of VGG.
    """
    import keras
    from keras import layers

    rng = np.random.default_rng(seed)
    inputs = keras.Input(input_shape)
    h = layers.Conv2D(widths[0], 3, padding="same", activation="relu", name="conv1")(inputs)
    h = layers.Conv2D(widths[1], kernel2, padding="same", activation="relu", name="conv2")(h)
    h = layers.MaxPooling2D(2, name="pool")(h)
    h = layers.Flatten(name="flatten")(h)
    h = layers.Dense(dense, activation="relu", name="fc1")(h)
    outputs = layers.Dense(classes, activation="softmax", name="predictions")(h)
    model = keras.Model(inputs, outputs, name="tiny_check")
    for layer in model.layers:
        if layer.weights:
            kernel, bias = layer.get_weights()
            fan_in = int(np.prod(kernel.shape[:-1]))
            layer.set_weights([
                (rng.normal(size=kernel.shape) * (2 / fan_in) ** 0.5).astype("float32"),
                (rng.normal(size=bias.shape) * 0.1).astype("float32"),
            ])
    return model
