"""Figures: a map overlaid on its image with transparency, with a colour bar and the class name."""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np


def normalise(heatmap: np.ndarray) -> np.ndarray:
    """Scale a map to [0, 1] for display (a constant map becomes all zeros)."""
    heatmap = np.asarray(heatmap, dtype=np.float32)
    lo, hi = float(heatmap.min()), float(heatmap.max())
    return (heatmap - lo) / (hi - lo) if hi > lo else np.zeros_like(heatmap)


def overlay(image, heatmap, ax=None, alpha: float = 0.5, cmap: str = "jet", title: str | None = None,
            colorbar: bool = True, label: str = "relevance", vmin=None, vmax=None):
    """Draw ``image`` (H, W, 3) uint8 with ``heatmap`` (H, W) on top, ``alpha`` opaque; return the axes."""
    ax = ax or plt.gca()
    heatmap = np.asarray(heatmap, dtype=np.float32)
    if heatmap.shape != np.asarray(image).shape[:2]:
        raise ValueError(f"heatmap {heatmap.shape} and image {np.asarray(image).shape[:2]} differ in size: "
                         "upsample the map with labkit.attribution.upsample")
    ax.imshow(image)
    shown = ax.imshow(heatmap, cmap=cmap, alpha=alpha, vmin=vmin, vmax=vmax)
    if colorbar:
        ax.figure.colorbar(shown, ax=ax, fraction=0.046, pad=0.04, label=label)
    if title:
        ax.set_title(title)
    ax.axis("off")
    return ax


def explanation_figure(image, heatmap, title: str, method: str, rgb_map: np.ndarray | None = None,
                       label: str = "relevance"):
    """Image | map overlaid (| signed RGB gradient, for guided methods): the figure `labkit explain` writes."""
    panels = 3 if rgb_map is not None else 2
    fig, axes = plt.subplots(1, panels, figsize=(4.2 * panels, 4.2), constrained_layout=True)
    axes[0].imshow(image)
    axes[0].set_title("input")
    axes[0].axis("off")
    overlay(image, heatmap, ax=axes[1], title=f"{method}: {title}", label=label)
    if rgb_map is not None:
        axes[2].imshow(normalise(rgb_map))
        axes[2].set_title(f"{method} (RGB gradient)")
        axes[2].axis("off")
    return fig


def image_grid(images, titles=None, cols: int = 8, size: float = 1.6, suptitle: str | None = None):
    """A grid of small images (e.g. maximally activating patches)."""
    n = len(images)
    rows = max(1, -(-n // cols))
    fig, axes = plt.subplots(rows, cols, figsize=(cols * size, rows * size * 1.1), squeeze=False,
                             constrained_layout=True)
    for k, ax in enumerate(axes.flat):
        ax.axis("off")
        if k < n:
            ax.imshow(images[k])
            if titles is not None:
                ax.set_title(titles[k], fontsize=8)
    if suptitle:
        fig.suptitle(suptitle)
    return fig


def live(draw, **controls):
    """The ``controls`` (ipywidgets) above a figure that ``draw(**values)`` returns, redrawn at each change.

    A change that leaves every value as already drawn (a control whose observer moved another one first)
    draws nothing. While a redraw works, the old figure is replaced by a line saying so (a figure that no longer matches
    the controls is never left on screen). The figure is handed to the Output widget from the kernel
    (``append_display_data``), not captured with ``with out:``, which can stall automated runs of a
    notebook (nbclient issue #312). Returns the VBox; its ``redraw()`` redraws with the current values.
    """
    import ipywidgets as widgets

    out = widgets.Output()
    shown = {}

    def redraw(change=None):
        values = {name: control.value for name, control in controls.items()}
        if change is not None and values == shown:
            return  # one change that moved two controls (a layer and its channel list): draw once
        shown.clear()
        shown.update(values)
        out.outputs = ()
        out.append_stdout("redrawing for " + ", ".join(f"{k}={v}" for k, v in values.items()) + " ...\n")
        fig = draw(**values)
        plt.close(fig)  # shown in `out` only
        out.outputs = ()
        out.append_display_data(fig)

    for control in controls.values():
        control.observe(redraw, names="value")
    redraw()
    box = widgets.VBox([widgets.HBox(list(controls.values())), out])
    box.redraw = redraw
    return box
