"""Checks for the lab's exercises, one function per exercise, named after its stage's module.

    ok = labkit.checks.why_interpretability(pipeline, test_accuracy, news, seed=SEED)

Each prints ``PASS [...]`` or ``HINT [...]`` in one line and returns True or False (see ``checks.base``).
"""

from .why_interpretability import why_interpretability

__all__ = ["why_interpretability"]
from .cam import cam, cam_head  # noqa: E402
__all__ += ["cam", "cam_head"]
from .gradcam import gradcam, gradcam_split  # noqa: E402
__all__ += ["gradcam", "gradcam_split"]
from .guided_backprop import guided_backprop  # noqa: E402
__all__ += ["guided_backprop"]
from .keras_to_torch import copy_weights, keras_to_torch  # noqa: E402
__all__ += ["keras_to_torch", "copy_weights"]
from .patches import patches  # noqa: E402
__all__ += ["patches"]
from .occlusion import occlusion  # noqa: E402
__all__ += ["occlusion"]
from .saliency import saliency  # noqa: E402
__all__ += ["saliency"]
from .evaluation import cascading_randomisation, deletion_curve  # noqa: E402
__all__ += ["deletion_curve", "cascading_randomisation"]
from .debugging import debugging  # noqa: E402
__all__ += ["debugging"]
