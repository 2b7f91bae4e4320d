"""plotting.live: the widget helper every stage's browser uses."""

import matplotlib

matplotlib.use("Agg")

import ipywidgets as widgets  # noqa: E402
import matplotlib.pyplot as plt  # noqa: E402

from labkit import plotting  # noqa: E402


def test_live_redraws_on_change_and_never_leaves_a_stale_figure():
    seen_during_draw = []
    calls = []

    def draw(size, centred):
        seen_during_draw.append([dict(o) for o in box.children[1].outputs] if calls else [])
        calls.append((size, centred))
        fig, ax = plt.subplots()
        ax.set_title(f"{size} {centred}")
        return fig

    box = None
    size, centred = widgets.IntSlider(3, min=1, max=9), widgets.Checkbox(False)
    box = plotting.live(draw, size=size, centred=centred)
    out = box.children[1]
    assert calls == [(3, False)] and list(box.children[0].children) == [size, centred]
    assert len(out.outputs) == 1 and out.outputs[0]["output_type"] == "display_data"  # the figure, nothing else
    size.value = 5
    centred.value = True
    assert calls == [(3, False), (5, False), (5, True)]
    # while each redraw ran, the old figure was gone: only the line saying what is being drawn
    for during, values in zip(seen_during_draw[1:], ["size=5, centred=False", "size=5, centred=True"]):
        assert len(during) == 1 and during[0]["output_type"] == "stream" and values in during[0]["text"]
    assert len(out.outputs) == 1 and out.outputs[0]["output_type"] == "display_data"
    assert plt.get_fignums() == []  # every figure closed: shown in the widget only
    box.redraw()
    assert calls[-1] == (5, True)
