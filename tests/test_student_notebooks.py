"""The student-notebook rule: an unfilled exercise breaks only its own cell, its check and what uses its result.

Every released student notebook (``notebooks/*.ipynb``, so new stages are covered as they are added) is run
once, to the end, with errors allowed, exactly as handed out: every exercise unfilled. Then every failing
cell must be explained:

* an **exercise cell** (it holds the release stub ``# YOUR CODE HERE``) may fail;
* any other cell may fail only in a top-level statement that **reads a result of an exercise**: a name an
  exercise cell defines in the solution (``solutions/`` holds the same cell, by id), or (transitively) a name defined by a statement that read one. The statement is
  found from the line number in the kernel's traceback, so a cell that dies on ``NameError: images``
  because ``images`` was defined in an exercise cell after the failing call is caught: ``images`` itself
  does not depend on the exercise;
* a **check cell** (``ok = checks.<stage>(...)``) may not fail at all: run before its exercise is done it
  prints one ``HINT`` line, the check's usual answer to an unfinished exercise.

The test cannot pass vacuously: each notebook must have an exercise whose stub actually raised, and the
notebook must have been run to its last cell.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import nbformat
import pytest

from labkit import release as rel

ROOT = Path(__file__).resolve().parent.parent
STUDENT = sorted((ROOT / "notebooks").glob("*.ipynb"))
CHECK_CELL = re.compile(r"^ok\s*=\s*checks\.\w+\(", re.M)
ANSI = re.compile(r"\x1b\[[0-9;]*m")
# ipykernel >= 6.13 names the cell "Cell In[7], line 3"; older ones "<ipython-input-7-...> in <module>\n----> 3".
CELL_LINE = re.compile(r"(?:Cell In\s*\[\d*\],\s*line (\d+))|(?:<ipython-input-[^>]*> in <module>[^\n]*\n(?:[^\n]*\n)*?-+> (\d+))")


# ----------------------------------------------------------------------------------------------------
# Static analysis: which statements read an exercise's result


def _code(source: str) -> str:
    """A cell's Python, with IPython magics and shell escapes blanked (line numbers kept)."""
    return "\n".join("" if line.lstrip().startswith(("%", "!")) else line for line in source.splitlines())


def _reads(node: ast.AST) -> set[str]:
    return {n.id for n in ast.walk(node) if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Load)}


def _defines(node: ast.AST) -> set[str]:
    names = {n.id for n in ast.walk(node) if isinstance(n, ast.Name) and isinstance(n.ctx, (ast.Store, ast.Del))}
    for n in ast.walk(node):
        if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(n.name)
        elif isinstance(n, (ast.Import, ast.ImportFrom)):
            names.update((a.asname or a.name).split(".")[0] for a in n.names)
    return names


def is_exercise(cell) -> bool:
    return cell.cell_type == "code" and rel.CODE_STUB in cell.source


def tainted_statements(cells, solution: dict[str, str] | None = None):
    """Walk the code cells in order. Returns the names that carry an exercise's result, and for every
    non-exercise cell its top-level statements as (first line, last line, reads an exercise's result).

    ``solution`` maps cell ids to the solution's sources: an exercise's names are those its solution
    defines (the student's stub defines none of them)."""
    solution = solution or {}
    tainted: set[str] = set()
    statements: dict[int, list[tuple[int, int, bool]]] = {}
    for index, cell in enumerate(cells):
        if cell.cell_type != "code":
            continue
        tree = ast.parse(_code(cell.source))
        if is_exercise(cell):
            tainted |= _defines(tree) | _defines(ast.parse(_code(solution.get(cell.get("id"), ""))))
            continue
        rows = []
        for stmt in tree.body:
            dirty = bool(_reads(stmt) & tainted)
            if dirty:
                tainted |= _defines(stmt)
            rows.append((stmt.lineno, stmt.end_lineno, dirty))
        statements[index] = rows
    return tainted, statements


def failing_line(error) -> int | None:
    """The line of the cell where the error was raised, from the kernel's traceback (its first cell frame)."""
    text = ANSI.sub("", "\n".join(error.get("traceback", [])))
    match = CELL_LINE.search(text)
    return int(match.group(1) or match.group(2)) if match else None


def unexplained_failures(cells, solution: dict[str, str] | None = None) -> list[str]:
    """Every failing cell the rule does not allow, as one line each (empty: the notebook obeys the rule)."""
    _, statements = tainted_statements(cells, solution)
    problems = []
    for index, cell in enumerate(cells):
        if cell.cell_type != "code":
            continue
        errors = [o for o in cell.outputs if o.output_type == "error"]
        first_line = cell.source.strip().splitlines()[0][:70] if cell.source.strip() else ""
        where = f"cell {index} ({first_line!r})"
        if CHECK_CELL.search(cell.source):
            text = "".join(o.get("text", "") for o in cell.outputs if o.output_type == "stream")
            if errors:
                problems.append(f"{where}: the check raised {errors[0].ename}: {errors[0].evalue} (expected a HINT line)")
            elif not text.startswith("HINT ["):
                problems.append(f"{where}: the check of an unfilled exercise printed {text[:120]!r}, not a HINT line")
            continue
        if not errors or is_exercise(cell):
            continue
        error = errors[0]
        line = failing_line(error)
        if line is None:
            problems.append(f"{where}: {error.ename}: {error.evalue} (no cell line in the traceback)")
            continue
        dirty = [d for first, last, d in statements[index] if first <= line <= last]
        if not (dirty and dirty[0]):
            problems.append(f"{where}: line {line} raised {error.ename}: {error.evalue}, "
                            "but that statement does not use any exercise's result")
    return problems


# ----------------------------------------------------------------------------------------------------
# The analysis itself, on hand-built notebooks (no kernel)


def _nb(*cells):
    made = []
    for source, error in cells:
        cell = nbformat.v4.new_code_cell(source)
        if error:
            ename, line = error
            cell.outputs = [nbformat.v4.new_output(
                "error", ename=ename, evalue="x",
                traceback=[f"\x1b[0;31m{ename}\x1b[0m", f"Cell \x1b[0;32mIn[3], line {line}\x1b[0m", "..."])]
        made.append(cell)
    return made


STUB = f'{rel.CODE_STUB}\nraise NotImplementedError("{rel.STUB_MESSAGE}")'


def test_analysis_blames_a_name_defined_after_the_exercise_call():
    """The stage 07 defect: `images` set in a cell after a call that uses the exercise, so it is never set."""
    cells = _nb(
        (f"def f(k):\n    {STUB.replace(chr(10), chr(10) + '    ')}", None),
        ("twin = f(1)\nimages = load()", ("NotImplementedError", 1)),
        ("print(twin)", ("NameError", 1)),
        ("show(images)", ("NameError", 1)),
    )
    problems = unexplained_failures(cells)
    assert len(problems) == 1 and problems[0].startswith("cell 3") and "does not use" in problems[0], problems


def test_analysis_takes_an_exercises_names_from_its_solution():
    cells = _nb((STUB, ("NotImplementedError", 2)), ("print(model)", ("NameError", 1)))
    cells[0].id = "ex"
    assert "does not use" in unexplained_failures(cells)[0]
    assert unexplained_failures(cells, {"ex": "model = fit()\nscore = 1"}) == []


def test_analysis_allows_the_exercise_its_users_and_their_users():
    cells = _nb(
        (f"x = 1\n{STUB}", ("NotImplementedError", 2)),
        ("y = 2\nz = x + 1", ("NameError", 2)),
        ("w = [z]", ("NameError", 1)),
        ("print(y, w)", ("NameError", 1)),
    )
    assert unexplained_failures(cells) == []


def test_analysis_demands_a_hint_from_each_check_cell():
    cells = _nb((f"def f():\n    {STUB.replace(chr(10), chr(10) + '    ')}", None), ("ok = checks.thing(f)", ("NameError", 1)))
    assert "the check raised NameError" in unexplained_failures(cells)[0]
    cells[1].outputs = [nbformat.v4.new_output("stream", name="stdout", text="PASS [x] fine\n")]
    assert "not a HINT line" in unexplained_failures(cells)[0]
    cells[1].outputs = [nbformat.v4.new_output("stream", name="stdout", text="HINT [x] f still raises\n")]
    assert unexplained_failures(cells) == []


def test_failing_line_reads_both_traceback_styles():
    assert failing_line({"traceback": ["\x1b[1;31mNameError\x1b[0m", "Cell \x1b[1;32mIn[12], line 4\x1b[0m"]}) == 4
    assert failing_line({"traceback": ["<ipython-input-3-abc> in <module>\n      1 a\n----> 2 b(x)"]}) == 2


# ----------------------------------------------------------------------------------------------------
# Every student notebook, run to the end


def run_student(path: Path, km):
    """The notebook's cells after a run to the end with every error allowed (cell i of the notebook)."""
    from nbclient import NotebookClient

    nb = nbformat.read(str(path), as_version=4)
    nb.cells.insert(0, nbformat.v4.new_code_cell(
        f"%reset -f\nimport os, matplotlib\nmatplotlib.use('Agg')\nos.chdir({str(path.parent)!r})"))
    client = NotebookClient(nb, km=km, timeout=300, kernel_name="python3", allow_errors=True, record_timing=False)
    try:
        client.execute()
    finally:
        if client.kc is not None:
            client.kc.stop_channels()
    return nb.cells[1:]


@pytest.mark.parametrize("path", STUDENT, ids=lambda p: p.name)
def test_unfilled_exercises_break_only_what_uses_them(path, kernel):
    cells = run_student(path, kernel)
    code = [c for c in cells if c.cell_type == "code"]
    assert code and all(c.execution_count is not None for c in code), "the notebook was not run to its end"
    stubs = [c for c in code if is_exercise(c)]
    assert stubs, "no exercise stub in this student notebook"
    raised = [c for c in stubs if any(o.output_type == "error" for o in c.outputs)]
    assert raised or any(CHECK_CELL.search(c.source) for c in code), "no exercise failed: is the stub in place?"
    solution = {c.get("id"): c.source for c in nbformat.read(str(ROOT / "solutions" / path.name), as_version=4).cells}
    problems = unexplained_failures(cells, solution)
    assert not problems, f"{path.name}: an unfilled exercise breaks cells that do not use it:\n" + "\n".join(problems)
