"""Gradient saliency (Simonyan, Vedaldi & Zisserman, 2014): how strongly each pixel moves the class score.

    saliency(x)_ij = max_c | d S_t(x) / d x_ijc |

The gradient is taken w.r.t. the **preprocessed** input (what the network sees). Preprocessing is
affine per channel (minivgg: x/127.5 - 1; vgg16: a channel flip and a mean subtraction), so this equals
the gradient w.r.t. the raw pixels up to a constant scale (1/127.5 for minivgg, 1 for vgg16): the map's
shape does not depend on the choice.

The default score is the **logit** (the paper's unnormalised class score S_c). The probability's
gradient, p_c (dS_c/dx - sum_j p_j dS_j/dx), also depends on every other class: a pixel may matter only
because it lowers a competitor, and once the model is confident (p_c ~ 1) the gradient vanishes.
``score="probability"`` is there to show exactly that.

One forward and one backward per pass of images: the backward starts from the sum of each image's own
target score, and images do not interact, so each image gets the gradient of its own score.
"""

from __future__ import annotations

import numpy as np
import torch

from .attribution import Explanation, class_scores, images_per_pass, passes, prepare, resolve_targets, to_numpy


def input_gradient(model, images, target=None, score: str = "logit", preprocessed: bool = False):
    """(gradient (N, H, W, C) of each image's target score w.r.t. its preprocessed input, targets (N,)).

    A large batch runs in passes of :func:`labkit.attribution.images_per_pass` images (2 at 224 x 224 on a
    CPU): the same numbers, less memory held for the backward pass, and faster on a CPU.
    """
    x = prepare(model, images, preprocessed)
    parts = passes(len(x), images_per_pass(x.shape[1], x.shape[2], x.device), target)
    if len(parts) == 1:  # the whole batch in one pass, as it comes
        return _gradient(model, x, target, score)
    grads, targets = zip(*(_gradient(model, x[part], part_target, score) for part, part_target in parts))
    return torch.cat(grads), torch.cat(targets)


def _gradient(model, x: torch.Tensor, target, score: str):
    x = x.detach().requires_grad_(True)  # a new leaf: the caller's tensor is left as it is
    with torch.enable_grad():  # even if the caller is inside torch.no_grad()
        scores = class_scores(model, x, score)
        targets = resolve_targets(target, scores)
        (grad,) = torch.autograd.grad(scores.gather(1, targets[:, None]).sum(), x)
    return grad, targets


def saliency(model, images, target=None, score: str = "logit", preprocessed: bool = False) -> Explanation:
    """Simonyan et al.'s saliency maps: max over RGB of |d score / d preprocessed pixel|.

    ``model``: a Backbone or a torch module taking the preprocessed NHWC batch. ``target``: None (the
    predicted class), one class, or one per image. ``score``: "logit" (default) or "probability".
    ``maps`` (N, H, W) are the saliency maps; ``raw`` (N, H, W, 3) is the signed gradient.
    """
    grad, targets = input_gradient(model, images, target, score, preprocessed)
    # |.| and max over RGB in torch: numpy's reduction over a last axis of length 3 costs 20x more.
    return Explanation("saliency", to_numpy(grad.abs().amax(dim=-1)), to_numpy(targets).astype(np.int64), to_numpy(grad))
