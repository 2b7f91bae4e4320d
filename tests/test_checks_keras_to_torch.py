"""The stage 07 check passes the notebook's solution and catches each mistake it claims to, with that hint."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import labkit  # noqa: F401  (pins the Keras backend)
from labkit.checks.keras_to_torch import copy_weights, keras_to_torch as check, reference_fc1


# -- the notebook's solution (solutions/07_keras_to_torch.ipynb) ------------------------------------------


def conv_kernel_to_torch(kernel):
    return np.transpose(kernel, (3, 2, 0, 1))


def dense_kernel_to_torch(kernel):
    return kernel.T


def fc1_to_torch(kernel, h, w, c):
    out = kernel.shape[1]
    rows = kernel.reshape(h, w, c, out)
    rows = rows.transpose(2, 0, 1, 3)
    return rows.reshape(h * w * c, out).T


SOLUTION = (conv_kernel_to_torch, dense_kernel_to_torch, fc1_to_torch)


def run(capsys, conv=conv_kernel_to_torch, dense=dense_kernel_to_torch, fc1=fc1_to_torch):
    ok = check(conv, dense, fc1)
    out = capsys.readouterr().out
    assert out.count("\n") == 1, out
    return ok, out


def test_passes_the_solution(capsys):
    ok, out = run(capsys)
    assert ok and out.startswith("PASS [07 keras to torch]")


def test_passes_torch_versions(capsys):
    """The same conversions written with torch tensors (permute, .T, a reshape of the output axis first)."""

    def conv(kernel):
        return torch.as_tensor(kernel).permute(3, 2, 0, 1)

    def dense(kernel):
        return torch.as_tensor(kernel).T

    def fc1(kernel, h, w, c):
        k = torch.as_tensor(kernel).T  # (out, h*w*c)
        return k.reshape(-1, h, w, c).permute(0, 3, 1, 2).reshape(k.shape[0], -1)

    assert run(capsys, conv, dense, fc1)[0]


def test_reference_fc1_by_hand():
    """h=1, w=2, c=2: Keras rows are (pixel 0: c0, c1), (pixel 1: c0, c1); torch columns (c0: p0, p1), (c1: p0, p1)."""
    kernel = np.array([[10.0], [11.0], [20.0], [21.0]])  # row value = 10 * (pixel + 1) + channel
    np.testing.assert_array_equal(reference_fc1(kernel, 1, 2, 2), [[10.0, 20.0, 11.0, 21.0]])


# -- mistakes -------------------------------------------------------------------------------------------

CONV_MUTANTS = {
    "kernel.T (OIWH)": (lambda k: k.T, "transposed in space"),
    "OIWH by hand": (lambda k: np.transpose(k, (3, 2, 1, 0)), "transposed in space"),
    "IOHW": (lambda k: np.transpose(k, (2, 3, 0, 1)), "swaps in and out"),
    "IOWH": (lambda k: np.transpose(k, (2, 3, 1, 0)), "in and out swapped, and the kernel transposed in space"),
    "reshape": (lambda k: k.reshape(k.shape[3], k.shape[2], k.shape[0], k.shape[1]), "conv_kernel_to_torch reshapes"),
    "flipped": (lambda k: np.flip(k, (0, 1)).transpose(3, 2, 0, 1), "flips the kernel in space"),
    "unchanged": (lambda k: k, "in Keras' layout"),
    "wrong permutation": (lambda k: np.transpose(k, (3, 0, 1, 2)), "has shape (5, 3, 2, 4), expected (5, 4, 3, 2)"),
}

DENSE_MUTANTS = {
    "unchanged": (lambda k: k, "returns Keras' (in, out)"),
    "reshape": (lambda k: k.reshape(k.shape[1], k.shape[0]), "dense_kernel_to_torch reshapes"),
}

FC1_MUTANTS = {
    "only transposed (the trap)": (lambda k, h, w, c: k.T, "that is the trap"),
    "inverse permutation": (lambda k, h, w, c: k.reshape(c, h, w, -1).transpose(1, 2, 0, 3).reshape(h * w * c, -1).T,
                            "inverse reordering"),
    "h and w swapped": (lambda k, h, w, c: k.reshape(h, w, c, -1).transpose(2, 1, 0, 3).reshape(h * w * c, -1).T,
                        "swaps h and w"),
    "no final transpose": (lambda k, h, w, c: k.reshape(h, w, c, -1).transpose(2, 0, 1, 3).reshape(h * w * c, -1),
                           "forgets the transpose"),
    "unchanged": (lambda k, h, w, c: k, "returns Keras' kernel unchanged"),
    "the notebook's sizes hard-coded": (lambda k, h, w, c: k.reshape(3, 3, 128, -1).transpose(2, 0, 1, 3).reshape(-1, k.shape[1]).T,
                                        "fc1_to_torch raised ValueError"),
}


@pytest.mark.parametrize("name", CONV_MUTANTS)
def test_catches_conv_mistake(capsys, name):
    fn, hint = CONV_MUTANTS[name]
    ok, out = run(capsys, conv=fn)
    assert not ok and out.startswith("HINT [07 keras to torch]") and hint in out, out


@pytest.mark.parametrize("name", DENSE_MUTANTS)
def test_catches_dense_mistake(capsys, name):
    fn, hint = DENSE_MUTANTS[name]
    ok, out = run(capsys, dense=fn)
    assert not ok and hint in out, out


@pytest.mark.parametrize("name", FC1_MUTANTS)
def test_catches_fc1_mistake(capsys, name):
    fn, hint = FC1_MUTANTS[name]
    ok, out = run(capsys, fc1=fn)
    assert not ok and hint in out, out


def test_stubs_and_none(capsys):
    def stub(kernel):
        raise NotImplementedError("replace this line with your solution")

    assert "conv_kernel_to_torch still raises NotImplementedError" in run(capsys, conv=stub)[1]
    assert "dense_kernel_to_torch returned None" in run(capsys, dense=lambda k: None)[1]


def test_a_mistake_only_the_twin_shows(capsys):
    """A conversion right on the check's kernels but wrong on a real layer: the parity of the small CNN catches it."""

    def conv_wrong_for_three_channels(kernel):
        out = np.transpose(kernel, (3, 2, 0, 1))
        return out[:, ::-1] if kernel.shape[2] == 3 else out  # scrambles the RGB input channels only

    ok, out = run(capsys, conv=conv_wrong_for_three_channels)
    assert not ok and "differs from Keras from layer 'conv1'" in out, out


# -- copy_weights ---------------------------------------------------------------------------------------


def test_copy_weights_rebuilds_the_twin_and_the_trap_breaks_it(tiny):
    from labkit.keras_to_torch import parity_report, to_torch

    bb = tiny.keras(size=8, classes=3)
    x = bb.tensor(np.random.default_rng(0).integers(0, 256, (2, 8, 8, 3), dtype=np.uint8))
    twin = to_torch(bb)
    for p in twin.parameters():
        p.data.zero_()
    assert copy_weights(twin, bb, *SOLUTION) is twin
    assert max(d for _, d in parity_report(bb, twin, x, preprocessed=True)) < 1e-5
    reference = to_torch(bb)
    for (name, p), q in zip(twin.named_parameters(), reference.parameters()):
        assert torch.equal(p, q), name

    trap = copy_weights(to_torch(bb), bb, conv_kernel_to_torch, dense_kernel_to_torch, lambda k, h, w, c: k.T)
    rows = dict(parity_report(bb, trap, x, preprocessed=True))
    assert rows["conv2"] == 0 and rows["flatten"] == 0 and rows["fc"] > 1e-3


def test_copy_weights_names_a_wrong_shape(tiny):
    from labkit.keras_to_torch import to_torch

    bb = tiny.keras(size=8, classes=3)
    with pytest.raises(ValueError, match="dense_kernel_to_torch gave 'predictions' a weight of shape"):
        copy_weights(to_torch(bb), bb, conv_kernel_to_torch, lambda k: k, fc1_to_torch)


def test_cheap():
    import time

    check(*SOLUTION)
    start = time.perf_counter()
    for _ in range(3):
        check(*SOLUTION)
    assert (time.perf_counter() - start) / 3 < 1.0
