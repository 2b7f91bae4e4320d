"""Checks for the lab's exercises, one function per exercise, named after its stage's module.

    ok = labkit.checks.why_interpretability(pipeline, test_accuracy, news, seed=SEED)

Each prints ``PASS [...]`` or ``HINT [...]`` in one line and returns True or False (see ``checks.base``).
"""

from .why_interpretability import why_interpretability

__all__ = ["why_interpretability"]
