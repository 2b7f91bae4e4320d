"""The stage 06 check passes the notebook's solution and catches each mistake it claims to, with that hint."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import labkit  # noqa: F401  (pins the Keras backend)
from labkit.checks.guided_backprop import guided_backprop as check


# -- the notebook's solution (solutions/06_guided_backprop.ipynb) ------------------------------------------


def guided_relu_hook(module, grad_input, grad_output):
    return (grad_input[0].clamp(min=0),)


def guided_gradients(twin, x, target, hook):
    handles = [m.register_full_backward_hook(hook) for m in twin.modules() if isinstance(m, nn.ReLU)]
    try:
        x = x.detach().requires_grad_(True)
        scores = twin.logits(x)
        scores[torch.arange(len(x)), target].sum().backward()
        return x.grad
    finally:
        for handle in handles:
            handle.remove()


def run(capsys, hook, gradients=guided_gradients):
    ok = check(hook, gradients)
    out = capsys.readouterr().out
    assert out.count("\n") == 1, out  # one line, always
    return ok, out


def test_passes_the_solution(capsys):
    ok, out = run(capsys, guided_relu_hook)
    assert ok and out.startswith("PASS [06 guided backprop]")


def test_passes_equivalent_solutions(capsys):
    """Other correct ways: a mask on grad_output, an in-place clamp, torch.autograd.grad, a list."""

    def masked(module, grad_input, grad_output):
        return (grad_input[0] * (grad_output[0] > 0),)

    def in_place(module, grad_input, grad_output):
        grad_input[0].clamp_(min=0)
        return grad_input

    def as_list(module, grad_input, grad_output):
        return [torch.relu(grad_input[0])]

    def with_autograd_grad(twin, x, target, hook):
        handles = []
        try:
            for _, relu in twin.relus():
                handles.append(relu.register_full_backward_hook(hook))
            x = x.clone().requires_grad_(True)
            score = twin.logits(x).gather(1, target[:, None]).sum()
            return torch.autograd.grad(score, x)[0]
        finally:
            for h in handles:
                h.remove()

    for hook in (masked, in_place, as_list):
        assert run(capsys, hook)[0], hook.__name__
    assert run(capsys, guided_relu_hook, with_autograd_grad)[0]


def test_hook_alone(capsys):
    ok, out = run(capsys, guided_relu_hook, None)
    assert ok and "now write guided_gradients" in out


# -- mistakes in the hook -------------------------------------------------------------------------------

HOOK_MUTANTS = {
    "plain gradient": (lambda m, gi, go: gi, "returns the plain gradient"),
    "plain gradient, tuple rebuilt": (lambda m, gi, go: (gi[0],), "returns the plain gradient"),
    "deconvnet": (lambda m, gi, go: (go[0].clamp(min=0),), "deconvnet rule"),
    "grad_output passed on": (lambda m, gi, go: go, "skips the ReLU altogether"),
    "negative part": (lambda m, gi, go: (gi[0].clamp(max=0),), "keeps the negative gradients"),
    "absolute value": (lambda m, gi, go: (gi[0].abs(),), "takes the absolute value"),
    "tensor, not a tuple": (lambda m, gi, go: gi[0].clamp(min=0), "returned a tensor"),
    "None": (lambda m, gi, go: None, "returned None"),
    "forgot the return": (lambda m, gi, go: (gi[0].clamp_(min=0), None)[1], "returned None"),
    "two gradients": (lambda m, gi, go: (gi[0].clamp(min=0), go[0]), "returned 2 gradients"),
    "(None,)": (lambda m, gi, go: (None,), "returned (None,)"),
    "a number": (lambda m, gi, go: 0.0, "returned a float"),
}


@pytest.mark.parametrize("name", HOOK_MUTANTS)
def test_catches_hook_mistake(capsys, name):
    hook, hint = HOOK_MUTANTS[name]
    ok, out = run(capsys, hook)
    assert not ok and out.startswith("HINT [06 guided backprop]") and hint in out, out


def test_hook_stub_and_crash(capsys):
    def stub(module, grad_input, grad_output):
        raise NotImplementedError("replace this line with your solution")

    def crash(module, grad_input, grad_output):
        return (grad_input.clamp(min=0),)  # a tuple has no clamp

    assert "still raises NotImplementedError" in run(capsys, stub)[1]
    out = run(capsys, crash)[1]
    assert "guided_relu_hook raised AttributeError" in out


# -- mistakes in guided_gradients -----------------------------------------------------------------------


def _relus(twin):
    return [m for m in twin.modules() if isinstance(m, nn.ReLU)]


def never_removed(twin, x, target, hook):
    for m in _relus(twin):
        m.register_full_backward_hook(hook)
    x = x.detach().requires_grad_(True)
    twin.logits(x)[torch.arange(len(x)), target].sum().backward()
    return x.grad


def removed_without_finally(twin, x, target, hook):
    handles = [m.register_full_backward_hook(hook) for m in _relus(twin)]
    x = x.detach().requires_grad_(True)
    twin.logits(x)[torch.arange(len(x)), target].sum().backward()
    for h in handles:
        h.remove()
    return x.grad


def features_only(twin, x, target, hook):
    handles = [m.register_full_backward_hook(hook) for m in twin.features.modules() if isinstance(m, nn.ReLU)]
    try:
        x = x.detach().requires_grad_(True)
        twin.logits(x)[torch.arange(len(x)), target].sum().backward()
        return x.grad
    finally:
        for h in handles:
            h.remove()


def own_hook(twin, x, target, hook):
    return guided_gradients(twin, x, target, guided_relu_hook)  # ignores the argument


def hooked_after_backward(twin, x, target, hook):
    x = x.detach().requires_grad_(True)
    twin.logits(x)[torch.arange(len(x)), target].sum().backward()
    handles = [m.register_full_backward_hook(hook) for m in _relus(twin)]
    for h in handles:
        h.remove()
    return x.grad


def _variant(score):
    def fn(twin, x, target, hook):
        handles = [m.register_full_backward_hook(hook) for m in _relus(twin)]
        try:
            x = x.detach().requires_grad_(True)
            score(twin, x, target).backward()
            return x.grad
        finally:
            for h in handles:
                h.remove()

    return fn


def rows(n):
    return torch.arange(n)


probability = _variant(lambda twin, x, t: twin(x)[rows(len(x)), t].sum())
all_classes = _variant(lambda twin, x, t: twin.logits(x).sum())
predicted_class = _variant(lambda twin, x, t: twin.logits(x).max(dim=1).values.sum())


def no_requires_grad(twin, x, target, hook):
    handles = [m.register_full_backward_hook(hook) for m in _relus(twin)]
    try:
        twin.logits(x)[torch.arange(len(x)), target].sum().backward()
        return x.grad
    finally:
        for h in handles:
            h.remove()


def returns_nothing(twin, x, target, hook):
    guided_gradients(twin, x, target, hook)


def nchw(twin, x, target, hook):
    return guided_gradients(twin, x, target, hook).permute(0, 3, 1, 2)


def old_style_hooks(twin, x, target, hook):
    """The course's snippet: the deprecated register_backward_hook (torch then refuses full hooks on the module)."""
    handles = [m.register_backward_hook(hook) for m in _relus(twin)]
    try:
        x = x.detach().requires_grad_(True)
        twin.logits(x)[torch.arange(len(x)), target].sum().backward()
        return x.grad
    finally:
        for h in handles:
            h.remove()


def full_hooks_on_a_spoilt_twin(twin, x, target, hook):
    """The solution, on a twin that once had an old-style hook (the notebook's twin after a first try)."""
    for m in _relus(twin):
        m.register_backward_hook(lambda *a: None).remove()
    return guided_gradients(twin, x, target, hook)


GRADIENT_MUTANTS = {
    "register_backward_hook": (old_style_hooks, "uses the old register_backward_hook: use register_full_backward_hook"),
    "twin spoilt by an old hook": (full_hooks_on_a_spoilt_twin, "rebuild your twin"),
    "hooks never removed": (never_removed, "still registered on the twin after guided_gradients returned"),
    "no finally": (removed_without_finally, "when the backward pass fails, guided_gradients leaves its hooks"),
    "classifier ReLUs missed": (features_only, "the hook ran on 2 of the twin's 3 ReLUs (not on classifier.fc1_relu)"),
    "hook argument ignored": (own_hook, "the `hook` passed to guided_gradients never ran"),
    "hooked after the backward": (hooked_after_backward, "never ran"),
    "probability": (probability, "back-propagates the probability"),
    "sum of all logits": (all_classes, "back-propagates every class's score"),
    "predicted class": (predicted_class, "explains the predicted class"),
    "x without requires_grad": (no_requires_grad, "x = x.detach().requires_grad_(True)"),
    "no return": (returns_nothing, "guided_gradients returned None"),
    "NCHW gradient": (nchw, "has shape (3, 3, 8, 8), expected (3, 8, 8, 3)"),
}


@pytest.mark.parametrize("name", GRADIENT_MUTANTS)
def test_catches_gradients_mistake(capsys, name):
    fn, hint = GRADIENT_MUTANTS[name]
    ok, out = run(capsys, guided_relu_hook, fn)
    assert not ok and out.startswith("HINT [06 guided backprop]") and hint in out, out


def test_an_error_inside_torch_quotes_the_students_line(capsys):
    """The hint names the line of the student's code that called into torch, not torch's own line."""
    import inspect

    lines, first = inspect.getsourcelines(no_requires_grad)
    number = first + next(i for i, line in enumerate(lines) if ".backward()" in line)
    ok, out = run(capsys, guided_relu_hook, no_requires_grad)
    assert not ok and f"at line {number} of your code, `twin.logits(x)[torch.arange(len(x)), target].sum().backward()`" in out, out


def test_an_in_place_relu_gets_its_hint(capsys):
    """A student who makes the ReLUs in-place (or hooks a torchvision model) hears why it fails."""

    def make_in_place(twin, x, target, hook):
        for m in _relus(twin):
            m.inplace = True
        return guided_gradients(twin, x, target, hook)

    ok, out = run(capsys, guided_relu_hook, make_in_place)
    assert not ok and "in-place ReLU" in out, out


def test_the_check_leaves_nothing_behind(capsys):
    """Run with a student who never removes hooks, then with the solution: the second run still passes."""
    import torch.nn.modules.module as mm

    run(capsys, guided_relu_hook, never_removed)
    assert run(capsys, guided_relu_hook)[0]
    assert not mm._global_backward_hooks and not mm._global_forward_hooks


def test_cheap():
    import time

    check(guided_relu_hook, guided_gradients)  # build the tiny model once
    start = time.perf_counter()
    for _ in range(3):
        check(guided_relu_hook, guided_gradients)
    assert (time.perf_counter() - start) / 3 < 1.0
