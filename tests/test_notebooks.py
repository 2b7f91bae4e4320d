"""The repository's notebooks: students' ones are up to date with the solutions and stop at the first exercise.

The solutions themselves are run by nbval from the Makefile (``pytest --nbval-lax solutions/``); the
release machinery is tested in tmp folders in tests/test_release.py.
"""

from __future__ import annotations

from pathlib import Path

import nbformat
import pytest

from labkit import release as rel

ROOT = Path(__file__).resolve().parent.parent
SOLUTIONS = sorted((ROOT / "solutions").glob("*.ipynb"))
STUDENT = sorted((ROOT / "notebooks").glob("*.ipynb"))


def test_release_check_passes_on_the_repo(capsys):
    assert SOLUTIONS, "no solutions notebooks"
    code = rel.main(["--check", "--solutions", str(ROOT / "solutions"), "--notebooks", str(ROOT / "notebooks")])
    out = capsys.readouterr()
    assert code == 0, f"student notebooks are out of date, run `labkit release`:\n{out.err}"
    assert [p.name for p in STUDENT] == [p.name for p in SOLUTIONS]


@pytest.mark.parametrize("path", SOLUTIONS, ids=lambda p: p.name)
def test_solutions_are_ready_for_nbval(path):
    """Each solution has an exercise, compares some output under nbval, and was saved after a clean run."""
    nb = nbformat.read(str(path), as_version=4)
    sources = [c.source for c in nb.cells]
    assert any(rel.BEGIN in s for s in sources), "no exercise (### BEGIN SOLUTION) in this stage"
    checked = [c for c in nb.cells if c.cell_type == "code" and ("NBVAL_CHECK_OUTPUT" in c.source or "nbval-check-output" in c.metadata.get("tags", []))]
    assert checked, "no cell marked # NBVAL_CHECK_OUTPUT: nbval --nbval-lax would compare nothing"
    assert all(c.outputs for c in checked), "a checked cell has no stored output: run the notebook and save it"
    errors = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs if o.output_type == "error"]
    assert not errors, f"stored outputs hold an error: {errors[0].ename}: {errors[0].evalue}"
    assert nb.metadata.kernelspec.name == "python3"


def first_stub(nb) -> int:
    for index, cell in enumerate(nb.cells):
        if cell.cell_type == "code" and rel.CODE_STUB in cell.source:
            return index
    raise AssertionError("the student notebook has no exercise stub")


@pytest.mark.parametrize("path", STUDENT, ids=lambda p: p.name)
def test_student_notebook_stops_at_its_first_exercise(path, kernel):
    """Run as handed out, a student notebook runs cleanly until the NotImplementedError of its first stub."""
    from nbclient import NotebookClient
    from nbclient.exceptions import CellExecutionError

    nb = nbformat.read(str(path), as_version=4)
    stub = first_stub(nb)
    reset = nbformat.v4.new_code_cell(f"%reset -f\nimport os\nos.chdir({str(path.parent)!r})")
    nb.cells.insert(0, reset)  # cell i of the notebook is cell i + 1 here
    client = NotebookClient(nb, km=kernel, timeout=120, kernel_name="python3", allow_errors=False, record_timing=False)
    try:
        with pytest.raises(CellExecutionError) as err:
            client.execute()
    finally:
        if client.kc is not None:
            client.kc.stop_channels()
    assert err.value.ename == "NotImplementedError", f"first error is {err.value.ename}: {err.value.evalue}"
    cells = nb.cells[1:]
    failed = [i for i, c in enumerate(cells) if c.cell_type == "code" and any(o.output_type == "error" for o in c.outputs)]
    assert failed == [stub], f"the first error came from cell {failed}, the first exercise is cell {stub}"
    ran = [i for i, c in enumerate(cells) if c.cell_type == "code" and c.execution_count is not None]
    assert ran and max(ran) == stub  # everything before it ran, nothing after it
