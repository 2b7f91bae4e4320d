"""How long each notebook widget takes to redraw, for every value of every control.

    .venv/bin/python bench/widgets.py [--solutions solutions] [--values 12] [NOTEBOOK ...]

Every solution notebook with an ipywidgets control (found by globbing ``solutions/*.ipynb``, so new stages
are covered) is run in a Jupyter kernel (nbclient) up to and including the cell that builds its widget.
The script then sets each control the cell created, in turn, to each of its values (at most ``--values``
of them, spread over the range; the others stay at their defaults) and times the call: observers run
synchronously in the kernel, so the time is the whole redraw the student waits for, the figure rendered
to PNG included (``plotting.live`` and ``interact`` both send a rendered figure). Each value is visited
twice: "first" is the first visit (nothing cached yet), "again" the second.

The course's target is every redraw within 2 s on minivgg on 2 CPU cores. Run it on a quiet machine:
times on a loaded one are upper bounds. Each notebook's redraws are also given in units of a reference
workload timed in the same kernel (minivgg's forward pass of 64 images): time that reference on the
machine you care about to scale them.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import nbformat

ROOT = Path(__file__).resolve().parent.parent
TARGET_S = 2.0

# Runs in the kernel before the widget cell: remembers which widgets exist, so the cell's own are known.
BEFORE = "from ipywidgets.widgets import widget as _bw\n_bench_before = set(_bw._instances)"

# Runs in the kernel after the widget cell: times every value of every control the cell created.
MEASURE = r'''
import json as _json, time as _time
import ipywidgets as _w
from ipywidgets.widgets import widget as _bw

def _bench_values(control, most):
    if hasattr(control, "options") and not isinstance(control, _w.SelectionRangeSlider):
        values = [v[1] if isinstance(v, tuple) and len(v) == 2 else v for v in control.options]
    elif isinstance(control, (_w.IntSlider, _w.BoundedIntText)):
        values = list(range(control.min, control.max + 1, control.step or 1))
    elif isinstance(control, (_w.FloatSlider, _w.BoundedFloatText)):
        n = int(round((control.max - control.min) / control.step)) + 1
        values = [control.min + i * control.step for i in range(n)]
    elif isinstance(control, (_w.Checkbox, _w.ToggleButton)):
        values = [False, True]
    else:
        return []
    if len(values) > most:
        values = [values[round(i * (len(values) - 1) / (most - 1))] for i in range(most)]
    return values

_bench_new = [w for key, w in list(_bw._instances.items()) if key not in _bench_before]
_bench_controls = [w for w in _bench_new if isinstance(w, _w.ValueWidget)
                   and not isinstance(w, (_w.Output, _w.Label, _w.HTML, _w.Box))]
def _bench_reference():
    """A fixed workload timed beside the redraws: minivgg's forward pass of 64 images (best of 3)."""
    import labkit.data as _d, labkit.models as _m
    _bb = _m.load("minivgg")
    _x = _d.make_shapes(64, seed=0).images
    _best = 1e9
    for _ in range(3):
        _t = _time.perf_counter()
        _bb.predict(_x)
        _best = min(_best, _time.perf_counter() - _t)
    return _best

_bench_ref = _bench_reference()
_bench_result = []
for _c in _bench_controls:
    _default = _c.value
    _rows = []
    for _v in [v for v in _bench_values(_c, MOST) if v != _default]:
        _times = []
        for _visit in range(2):
            _t = _time.perf_counter()
            _c.value = _v
            _times.append(_time.perf_counter() - _t)
            _c.value = _default  # back to the default for the next value (its redraw is not timed)
        _rows.append([repr(_v), _times[0], _times[1]])
    _bench_result.append({"control": f"{type(_c).__name__} {getattr(_c, 'description', '')!s}".strip(), "rows": _rows})
print("BENCH_JSON " + _json.dumps({"reference": _bench_ref, "controls": _bench_result}))
'''


def widget_cells(nb) -> list[int]:
    """Indices of the code cells that build a widget: they use ipywidgets and end with live()/interact()."""
    found = []
    for i, cell in enumerate(nb.cells):
        if cell.cell_type != "code":
            continue
        src = cell.source
        uses_widgets = any("ipywidgets" in c.source for c in nb.cells[: i + 1] if c.cell_type == "code")
        if uses_widgets and any(call in src for call in ("live(", "interact(", "interactive(")):
            found.append(i)
    return found


def run_notebook(path: Path, most: int, timeout: int) -> list[dict]:
    from nbclient import NotebookClient

    nb = nbformat.read(str(path), as_version=4)
    targets = widget_cells(nb)
    if not targets:
        return []
    client = NotebookClient(nb, timeout=timeout, kernel_name="python3", allow_errors=False,
                            resources={"metadata": {"path": str(path.parent)}})
    results = []
    with client.setup_kernel():
        done = 0
        for target in targets:
            for i in range(done, target):
                if nb.cells[i].cell_type == "code":
                    client.execute_cell(nb.cells[i], i)
            nb.cells.append(nbformat.v4.new_code_cell(BEFORE))
            client.execute_cell(nb.cells[-1], len(nb.cells) - 1)
            t = time.perf_counter()
            client.execute_cell(nb.cells[target], target)
            first_draw = time.perf_counter() - t
            probe = nbformat.v4.new_code_cell(MEASURE.replace("MOST", str(most)))
            nb.cells.append(probe)
            client.execute_cell(probe, len(nb.cells) - 1)
            text = "".join(o.get("text", "") for o in probe.outputs if o.output_type == "stream")
            line = next(l for l in text.splitlines() if l.startswith("BENCH_JSON "))
            measured = json.loads(line[len("BENCH_JSON "):])
            results.append({"cell": target, "first_draw": first_draw, **measured})
            done = target + 1
    return results


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("notebooks", nargs="*", help="notebooks to measure (default: every solution with a widget)")
    parser.add_argument("--solutions", default=str(ROOT / "solutions"))
    parser.add_argument("--values", type=int, default=12, help="at most this many values per control")
    parser.add_argument("--timeout", type=int, default=600, help="seconds per cell")
    args = parser.parse_args(argv)
    paths = [Path(p) for p in args.notebooks] or sorted(Path(args.solutions).glob("*.ipynb"))
    os.environ.setdefault("MPLBACKEND", "module://matplotlib_inline.backend_inline")
    print(f"backbone: {os.environ.get('LABKIT_BACKBONE', 'minivgg')}; cores: {os.cpu_count()}; "
          f"load average at start: {os.getloadavg()[0]:.1f}")
    worst = 0.0
    for path in paths:
        for widget in run_notebook(path, args.values, args.timeout):
            ref = widget["reference"]
            print(f"\n{path.name}, cell {widget['cell']}: the cell (first draw included) took {widget['first_draw']:.2f} s; "
                  f"reference (minivgg forward of 64 images) {ref:.3f} s; x: redraw time / reference")
            print(f"  {'control':<28}{'values':>7}{'first: median':>15}{'max':>8}{'again: median':>15}{'max':>8}")
            for control in widget["controls"]:
                rows = control["rows"]
                if not rows:
                    continue
                first = sorted(r[1] for r in rows)
                again = sorted(r[2] for r in rows)
                slowest = max(rows, key=lambda r: r[1])
                worst = max(worst, first[-1], again[-1])
                print(f"  {control['control'][:27]:<28}{len(rows):>7}{first[len(first) // 2]:>15.2f}{first[-1]:>8.2f}"
                      f"{again[len(again) // 2]:>15.2f}{again[-1]:>8.2f}   slowest: {slowest[0]} "
                      f"(first {first[-1] / ref:.0f}x, again {again[-1] / ref:.0f}x)")
    print(f"\nslowest redraw: {worst:.2f} s (target {TARGET_S:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
