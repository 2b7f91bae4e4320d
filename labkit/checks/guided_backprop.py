"""Check for stage 06: the guided ReLU backward hook, and the function that hooks a twin with it.

    ok = labkit.checks.guided_backprop(guided_relu_hook, guided_gradients)

Part 1 calls ``guided_relu_hook(module, grad_input, grad_output)`` by hand on a ReLU whose input had
both signs, with an upstream gradient of both signs, so that plain backprop, the deconvnet rule and
guided backprop give three different answers. Part 2 runs ``guided_gradients(twin, x, target, hook)`` on
the torch twin of a tiny Keras CNN with a *counting* reference hook (so a mistake in part 1 does not
hide one in part 2): every ReLU must fire, the gradient must be the reference's, no hook may be left on
the twin afterwards, not even when the backward pass fails. Part 3 runs the two together.
"""

from __future__ import annotations



from .base import Hint, as_array, call_student, close, match, one_thread, report, tiny_keras_cnn

STAGE = "06 guided backprop"
_TINY = {}  # the tiny Keras model, built once per session (a few hundred ms)

_HOOK_DICTS = (
    "_forward_hooks",
    "_forward_pre_hooks",
    "_backward_hooks",
    "_backward_pre_hooks",
    "_forward_hooks_with_kwargs",
    "_forward_pre_hooks_with_kwargs",
    "_forward_hooks_always_called",
)


class _Boom(RuntimeError):
    """Raised by the check's failing hook, to see whether the student's hooks survive an error."""


# ----------------------------------------------------------------------------------------------------
# Small cases


def _hook_case():
    """A ReLU's backward by hand: its input x, the upstream gradient g, and grad_input = (x > 0) * g."""
    import torch

    g = torch.Generator().manual_seed(6)
    x = torch.randn(2, 3, 4, 4, generator=g)
    grad_out = torch.randn(2, 3, 4, 4, generator=g)
    grad_in = (x > 0).float() * grad_out
    return x, grad_in, grad_out


def _tiny_keras():
    """conv(relu) conv(relu) pool | flatten dense(relu) dense(softmax) on 8x8 RGB, He-scaled random weights."""
    return tiny_keras_cnn((8, 8, 3), (4, 6), (3, 3), dense=8, classes=4, seed=6)


def _twin_case():
    """A fresh twin of the tiny model (fresh: whatever a student leaves on it dies with it), a batch, targets."""
    import torch

    from ..keras_to_torch import to_torch

    twin = to_torch(_tiny_keras())
    if "x" not in _TINY:
        _TINY["x"] = torch.randn(3, 8, 8, 3, generator=torch.Generator().manual_seed(7))
        # targets that are NOT the predicted classes, so that using the argmax instead shows
        _TINY["target"] = (_predicted(twin, _TINY["x"]) + 1) % 4
    return twin, _TINY["x"].clone(), _TINY["target"].clone()


def _predicted(twin, x):
    import torch

    with torch.no_grad():
        return twin.logits(x).argmax(1)


def _hooks_left(module) -> int:
    return sum(len(getattr(m, d, {}) or {}) for m in module.modules() for d in _HOOK_DICTS)


def _relus(twin):
    from torch import nn

    return [m for m in twin.modules() if isinstance(m, nn.ReLU)]


# ----------------------------------------------------------------------------------------------------
# Part 1: the hook, called by hand


def _check_hook(hook) -> None:
    import torch
    from torch import nn

    _, grad_in, grad_out = _hook_case()
    relu = nn.ReLU()
    # the student gets copies: a hook that edits grad_input in place must not change the mutants
    out = call_student(hook, relu, (grad_in.clone(),), (grad_out.clone(),), what="guided_relu_hook")
    if out is None:
        raise Hint("guided_relu_hook returned None, which tells torch to keep the plain gradient: return a tuple "
                   "holding the new gradient, (new_grad,)")
    if isinstance(out, torch.Tensor):
        raise Hint("guided_relu_hook returned a tensor; a full backward hook returns a tuple with one gradient per "
                   "input of the module, here (new_grad,)")
    if not isinstance(out, (tuple, list)):
        raise Hint(f"guided_relu_hook returned a {type(out).__name__}: return a tuple, (new_grad,)")
    if len(out) != 1:
        raise Hint(f"guided_relu_hook returned {len(out)} gradients; a ReLU has one input, so return (new_grad,)")
    if out[0] is None:
        raise Hint("guided_relu_hook returned (None,), which zeroes the gradient: return (new_grad,)")
    answer = as_array(out[0], "guided_relu_hook")
    reference = grad_in.clamp(min=0)
    match(answer, reference.numpy(), {
        "guided_relu_hook returns the plain gradient (grad_input unchanged): keep only its positive part": grad_in.numpy(),
        "guided_relu_hook clamps grad_output: that is the deconvnet rule, which ignores where the ReLU was off in the "
        "forward pass; grad_input already carries that mask": grad_out.clamp(min=0).numpy(),
        "guided_relu_hook returns grad_output unchanged: that skips the ReLU altogether": grad_out.numpy(),
        "guided_relu_hook keeps the negative gradients instead of the positive ones": grad_in.clamp(max=0).numpy(),
        "guided_relu_hook takes the absolute value: guided backprop drops negative gradients, it does not flip them":
            grad_in.abs().numpy(),
    }, "the gradient guided_relu_hook returns", shape_hint=" (the shape of grad_input[0])")


# ----------------------------------------------------------------------------------------------------
# Part 2: hooking the twin


def _reference_gradient(twin, x, target, score="logit", guided=True, relus=None):
    """The gradient of the target score w.r.t. x, with the guided rule on ``relus`` (default: all)."""
    import torch

    from ..guided_backprop import _guided_hook

    handles = [r.register_full_backward_hook(_guided_hook) for r in (relus if relus is not None else _relus(twin))] if guided else []
    try:
        xx = x.detach().clone().requires_grad_(True)
        with torch.enable_grad():
            scores = twin.logits(xx) if score == "logit" else twin(xx)
            if target is None:
                picked = scores.sum()
            else:
                picked = scores.gather(1, torch.as_tensor(target).reshape(-1, 1)).sum()
            (grad,) = torch.autograd.grad(picked, xx)
    finally:
        for h in handles:
            h.remove()
    return grad.numpy()


def _counting(hook, fired: list):
    def counted(module, grad_input, grad_output):
        fired.append(module)
        return hook(module, grad_input, grad_output)

    return counted


def _call_gradients(fn, twin, x, target, hook):
    """Call the student's guided_gradients; torch's own errors get a hint about their usual cause."""
    try:
        return call_student(fn, twin, x.clone(), target.clone(), hook, what="guided_gradients")
    except Hint as hint:
        text = str(hint)
        if "Cannot use both regular backward hooks and full backward hooks" in text:
            raise Hint("guided_gradients raised 'Cannot use both regular backward hooks and full backward hooks': a "
                       "module that once had a hook from the old register_backward_hook refuses full ones for good. "
                       "Use register_full_backward_hook only, and rebuild your twin (run the cell that makes it "
                       "again)") from None
        if "is a view and is being modified inplace" in text:
            raise Hint("guided_gradients ran into an in-place ReLU: a full backward hook cannot wrap one; set "
                       "relu.inplace = False before hooking it (the twin's are already)") from None
        raise


def _match_gradient_mutants(answer, reference, twin, x, target) -> None:
    match(answer, reference, {
        "guided_gradients returns the plain gradient: the hooks must be in place while the backward pass runs":
            _reference_gradient(twin, x, target, guided=False),
        "guided_gradients back-propagates the probability (twin(x) ends with a softmax): use the logit, "
        "twin.logits(x)": _reference_gradient(twin, x, target, score="probability"),
        "guided_gradients back-propagates every class's score: pick each image's target class before summing":
            _reference_gradient(twin, x, None),
        "guided_gradients explains the predicted class: use the `target` given, one class per image":
            _reference_gradient(twin, x, _predicted(twin, x)),
    }, "the gradient guided_gradients returns", shape_hint=" (the shape of x: one gradient per input pixel, NHWC)")


def _old_style_hooks(module) -> bool:
    """Whether a hook from the deprecated ``register_backward_hook`` was ever put on one of the modules
    (torch marks such a module for good: it then refuses full backward hooks)."""
    return any(getattr(m, "_is_full_backward_hook", None) is False for m in module.modules())


OLD_HOOK_HINT = (
    "guided_gradients uses the old register_backward_hook: use register_full_backward_hook. The old kind is "
    "deprecated because on a module made of several operations it sees only the last operation's gradients, "
    "not the module's (on a lone ReLU it happens to agree); a module that once had one refuses full hooks "
    "for good, so rebuild your twin too (run the cell that makes it again)")


def _check_gradients(fn) -> None:
    from ..guided_backprop import _guided_hook

    twin, x, target = _twin_case()
    relus = _relus(twin)
    fired: list = []
    out = _call_gradients(fn, twin, x, target, _counting(_guided_hook, fired))
    if _old_style_hooks(twin):
        raise Hint(OLD_HOOK_HINT)
    left = _hooks_left(twin)
    if left:
        raise Hint(f"{left} hook(s) are still registered on the twin after guided_gradients returned: keep the handles "
                   "that register_full_backward_hook returns and call .remove() on each, in a finally block")
    answer = as_array(out, "guided_gradients")
    if not fired:
        raise Hint("the `hook` passed to guided_gradients never ran: register that argument (not a function of yours "
                   "by name) on every nn.ReLU of the twin, before the backward pass")
    hooked = {id(m) for m in fired}
    missing = [r for r in relus if id(r) not in hooked]
    if missing:
        names = [n for n, m in twin.named_modules() if any(m is r for r in missing)]
        raise Hint(f"the hook ran on {len(relus) - len(missing)} of the twin's {len(relus)} ReLUs (not on "
                   f"{', '.join(names)}): register it on every nn.ReLU in twin.modules(), the classifier's too")
    # The reference and the mutants on a fresh twin with the same weights: the student's code may have left
    # the one it was given unable to take the reference's hooks.
    fresh, _, _ = _twin_case()
    reference = _reference_gradient(fresh, x, target)
    if not close(answer, reference):  # the mutants cost a backward pass each: only when needed
        _match_gradient_mutants(answer, reference, fresh, x, target)

    # A backward that fails: the hooks must still come off (the same twin: none is left on it by now).
    twin2, x2, target2 = twin, x, target

    def failing(module, grad_input, grad_output):
        raise _Boom("the check's hook fails on purpose")

    try:
        fn(twin2, x2.clone(), target2.clone(), failing)
    except Exception:  # noqa: BLE001 - the failure is the point; what matters is what is left behind
        pass
    if _hooks_left(twin2):
        raise Hint("when the backward pass fails, guided_gradients leaves its hooks on the twin: remove them in a "
                   "`finally:` block (try: ... backward ... finally: for h in handles: h.remove())")
    if any(r.inplace for r in _relus(twin2)):
        raise Hint("guided_gradients leaves some of the twin's ReLUs in place (inplace=True): put back what you changed")


# ----------------------------------------------------------------------------------------------------
# Part 3: the two together


def _check_together(hook, fn) -> None:
    from ..guided_backprop import guided_backprop as reference

    twin, x, target = _twin_case()
    answer = as_array(_call_gradients(fn, twin, x, target, hook), "guided_gradients")
    expected = reference(twin, x, target, preprocessed=True).raw
    match(answer, expected, {}, "guided_gradients(twin, x, target, guided_relu_hook)")


def guided_backprop(guided_relu_hook, guided_gradients=None) -> bool:
    """Stage 06: ``guided_relu_hook(module, grad_input, grad_output)`` and ``guided_gradients(twin, x, target, hook)``.

    ``guided_gradients`` may be left out to check the hook alone.
    """

    def run() -> str:
        with one_thread():
            return _run()

    def _run() -> str:
        _check_hook(guided_relu_hook)
        if guided_gradients is None:
            return "guided_relu_hook lets only positive gradients through where the ReLU was on; now write guided_gradients"
        _check_gradients(guided_gradients)
        _check_together(guided_relu_hook, guided_gradients)
        return ("guided_relu_hook passes only positive gradients where the ReLU was on; guided_gradients hooks every "
                "ReLU, matches the reference, and removes its hooks, also after an error")

    return report(STAGE, run)
