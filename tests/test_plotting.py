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


def test_live_draws_once_when_one_change_moves_two_controls():
    calls = []

    def draw(layer, channel):
        calls.append((layer, channel))
        return plt.figure()

    layer, channel = widgets.Dropdown(options=["a", "b"], value="a"), widgets.Dropdown(options=[0, 1, 2], value=2)
    layer.observe(lambda change: setattr(channel, "options", [0, 1] if change.new == "b" else [0, 1, 2]), names="value")
    plotting.live(draw, layer=layer, channel=channel)
    layer.value = "b"  # resets channel's options (and value) first, then the layer's own redraw
    assert calls == [("a", 2), ("b", 0)]
    channel.value = 1
    assert calls[-1] == ("b", 1) and len(calls) == 3
