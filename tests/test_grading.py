"""labkit grading: nbgrader metadata stamped from the source, the course directory, and a real nbgrader round trip.

The round trip (``test_round_trip_*``) runs nbgrader's own commands in a temporary course directory:
``labkit grading init``, ``nbgrader generate_assignment``, three submissions, ``nbgrader autograde``,
``nbgrader generate_feedback`` and ``nbgrader export``. It executes every notebook three times (one kernel per
notebook and submission), so it is the slowest test of the suite; its fixture runs it once for all its tests.
Each cell is bounded by the course config's per-cell timeout and each nbgrader command by ``nbgrader()``'s timeout.
The third submission also deletes a (right) test cell in another notebook: nbgrader must add it back.
"""

from __future__ import annotations

import ast
import contextlib
import csv
import html
import io
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook, new_raw_cell

from labkit import grading
from labkit import release as rel
from labkit.checks import base

ROOT = Path(__file__).resolve().parent.parent
SOLUTIONS = sorted((ROOT / "solutions").glob("*.ipynb"))
nbgrader_missing = shutil.which("nbgrader", path=str(Path(sys.executable).parent)) is None
needs_nbgrader = pytest.mark.skipif(nbgrader_missing, reason="nbgrader is not installed (pip install 'labkit[grading]')")


def lab_notebook():
    cells = [
        new_markdown_cell("# A stage"),
        new_code_cell("import numpy as np\nfrom labkit import checks"),
        new_code_cell("def area(r):\n    ### BEGIN SOLUTION\n    return np.pi * r ** 2\n    ### END SOLUTION"),
        new_code_cell("# NBVAL_CHECK_OUTPUT\nok = checks.saliency(area)"),
        new_code_cell("twin = checks.copy_weights(a, b, c, d, e)"),  # a helper of checks, not a check
        new_markdown_cell("Why?\n\n### BEGIN SOLUTION\nBecause.\n### END SOLUTION"),
        new_raw_cell("raw"),
    ]
    for i, cell in enumerate(cells):
        cell["id"] = f"c{i}"
    return new_notebook(cells=cells, metadata={"kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"}})


# ----------------------------------------------------------------------------------------------------
# Stamping


def test_check_names_are_the_checks_not_their_helpers():
    names = grading.check_names()
    assert {"why_interpretability", "patches", "occlusion", "saliency", "cam", "gradcam", "guided_backprop", "keras_to_torch"} <= names
    assert "copy_weights" not in names and "report" not in names


def test_stamp_derives_each_cell_from_its_source():
    nb = grading.stamp_notebook(lab_notebook(), "x.ipynb")
    meta = [c.metadata.get("nbgrader") for c in nb.cells]
    assert [m and m["grade_id"] for m in meta] == [
        "locked-c0", "locked-c1", "exercise-c2", "check-saliency-c3", "locked-c4", "answer-c5", None]
    exercise, check, answer, locked = meta[2], meta[3], meta[5], meta[4]
    assert exercise["solution"] and not exercise["grade"] and not exercise["locked"] and "points" not in exercise
    assert check["grade"] and check["locked"] and not check["solution"] and check["points"] == grading.POINTS["check"]
    assert answer["grade"] and answer["solution"] and not answer["locked"] and answer["points"] == grading.POINTS["answer"]
    assert locked["locked"] and not locked["grade"] and not locked["solution"]
    assert all(m["schema_version"] == 3 for m in meta if m)
    assert grading.points(nb) == {"check": 1, "answer": 1}
    assert grading.problems(nb, "x.ipynb") == []


def test_stamp_is_idempotent_keeps_points_and_changes_nothing_else():
    plain = lab_notebook()
    once = grading.stamp_notebook(plain, "x.ipynb")
    assert grading.stamp_notebook(once, "x.ipynb") == once
    once.cells[3].metadata.nbgrader["points"] = 4  # the instructor weighs this check more
    assert grading.stamp_notebook(once, "x.ipynb").cells[3].metadata.nbgrader["points"] == 4
    for cell in once.cells:
        cell.metadata.pop("nbgrader", None)
    assert once == plain
    # and labkit release writes the same student notebook from either
    assert rel._canonical(rel.student_notebook(grading.stamp_notebook(plain, "x.ipynb"), "x.ipynb")) == \
        rel._canonical(rel.student_notebook(plain, "x.ipynb"))


@pytest.mark.parametrize(
    "index, source, message",
    [
        (2, "x = 1  ### BEGIN SOLUTION\n### END SOLUTION", "alone on its line"),
        (2, "### BEGIN SOLUTION\nx = 1\n### END SOLUTION\nok = checks.saliency(f)", "both an exercise and checks.saliency"),
    ],
)
def test_stamp_refuses_what_nbgrader_would_misread(index, source, message):
    nb = lab_notebook()
    nb.cells[index].source = source
    with pytest.raises(grading.GradingError, match=message) as err:
        grading.stamp_notebook(nb, "x.ipynb")
    assert "\n" not in str(err.value) and "cell 2" in str(err.value)


def test_stamp_refuses_a_cell_without_id():
    nb = lab_notebook()
    del nb.cells[1]["id"]
    with pytest.raises(grading.GradingError, match="has no id"):
        grading.stamp_notebook(nb, "x.ipynb")


def test_problems_catch_an_unstamped_exercise_and_an_ungraded_one():
    nb = grading.stamp_notebook(lab_notebook(), "x.ipynb")
    new = new_code_cell("def more():\n    ### BEGIN SOLUTION\n    pass\n    ### END SOLUTION")
    new["id"] = "new1"
    nb.cells.insert(4, new)  # a new exercise someone added, not stamped, with no check after it
    found = grading.problems(nb, "x.ipynb")
    assert any("cell 4: nbgrader metadata" in p for p in found)
    assert any("cell 4: an exercise with no check cell" in p for p in found)


def test_stamp_files_in_place_and_check_mode(tmp_path, capsys):
    nbformat.write(lab_notebook(), tmp_path / "01_a.ipynb")
    before = (tmp_path / "01_a.ipynb").read_bytes()
    assert grading.main(["stamp", str(tmp_path), "--check"]) == 1
    assert "not stamped: 01_a.ipynb" in capsys.readouterr().err
    assert (tmp_path / "01_a.ipynb").read_bytes() == before
    assert grading.main(["stamp", str(tmp_path)]) == 0
    after = (tmp_path / "01_a.ipynb").read_bytes()
    assert after != before and grading.main(["stamp", str(tmp_path)]) == 0
    assert (tmp_path / "01_a.ipynb").read_bytes() == after
    assert grading.main(["grading", "stamp", str(tmp_path), "--check"]) == 0


@pytest.mark.parametrize("path", SOLUTIONS, ids=lambda p: p.name)
def test_every_solution_is_stamped_for_nbgrader(path):
    """Fails for a new or edited notebook until `labkit grading stamp` has run, or when an exercise has no check."""
    nb = nbformat.read(str(path), as_version=4)
    assert grading.problems(nb, path.name) == []
    assert grading.points(nb)["check"] >= 1


# ----------------------------------------------------------------------------------------------------
# Checks under autograding


def _failing_check():
    def run():
        raise base.Hint("look at the sign")
    return base.report("99 demo", run)


def test_a_failed_check_prints_its_hint_for_a_student(monkeypatch, capsys):
    monkeypatch.delenv(base.AUTOGRADE_ENV, raising=False)
    assert _failing_check() is False
    assert capsys.readouterr().out == "HINT [99 demo] look at the sign\n"


@pytest.mark.parametrize("value", ["1", "true", "yes"])
def test_a_failed_check_raises_its_hint_under_autograding(monkeypatch, capsys, value):
    monkeypatch.setenv(base.AUTOGRADE_ENV, value)
    with pytest.raises(AssertionError, match=re.escape("HINT [99 demo] look at the sign")):
        _failing_check()
    assert base.report("99 demo", lambda: "all good") is True
    assert capsys.readouterr().out == "PASS [99 demo] all good\n"


# ----------------------------------------------------------------------------------------------------
# labkit grading init


def test_init_writes_a_course_and_refuses_to_overwrite(tmp_path, capsys):
    sol = tmp_path / "solutions"
    sol.mkdir()
    nbformat.write(lab_notebook(), sol / "01_a.ipynb")  # not stamped: init stamps what it copies
    course = tmp_path / "course"
    report = grading.init(course, sol)
    assert sorted(map(str, report.written)) == ["nbgrader_config.py", "source/labkit/01_a.ipynb"]
    copied = nbformat.read(str(course / "source/labkit/01_a.ipynb"), as_version=4)
    assert copied == grading.stamp_notebook(lab_notebook(), "01_a.ipynb")
    config = (course / "nbgrader_config.py").read_text()
    compile(config, "nbgrader_config.py", "exec")
    for needle in ('os.environ["LABKIT_AUTOGRADE"] = "1"', "c.CourseDirectory.course_id = 'labkit'",
                   f"c.Execute.timeout = {grading.CELL_TIMEOUT_S}", "c.ClearSolutions.code_stub"):
        assert needle in config
    assert grading.init(course, sol).written == []  # same content: nothing to do, no refusal

    (course / "nbgrader_config.py").write_text("# the instructor's own\n")
    with pytest.raises(grading.GradingError, match="already has nbgrader_config.py .*--force"):
        grading.init(course, sol)
    assert (course / "nbgrader_config.py").read_text() == "# the instructor's own\n"
    assert grading.main(["init", str(course), "--solutions", str(sol)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("labkit grading init: error:") and err.count("\n") == 1
    assert grading.main(["init", str(course), "--solutions", str(sol), "--force"]) == 0
    assert (course / "nbgrader_config.py").read_text() == config


def test_grading_is_a_labkit_subcommand(tmp_path):
    from labkit import cli

    args = cli.build_parser().parse_args(["grading", "init", str(tmp_path / "c"), "--force"])
    assert args.func is grading._run_init and args.force
    args = cli.build_parser().parse_args(["grading", "stamp", "--check"])
    assert args.func is grading._run_stamp


# ----------------------------------------------------------------------------------------------------
# The round trip with nbgrader


def nbgrader(course: Path, *args: str, timeout: float = 3600) -> subprocess.CompletedProcess:
    """Run an nbgrader command in the course directory, with this interpreter's environment."""
    bindir = str(Path(sys.executable).parent)  # nbgrader runs `alembic` from the PATH
    env = dict(os.environ, PATH=bindir + os.pathsep + os.environ.get("PATH", ""),
               PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
    env.pop(base.AUTOGRADE_ENV, None)  # the course's config must set it
    done = subprocess.run([os.path.join(bindir, "nbgrader"), *args], cwd=course, env=env, capture_output=True,
                          text=True, timeout=timeout)
    assert done.returncode == 0, f"nbgrader {' '.join(args)} failed:\n{done.stdout[-3000:]}\n{done.stderr[-6000:]}"
    return done


WRONG_NOTEBOOK = "07_keras_to_torch.ipynb"
WRONG_FUNCTION = "conv_kernel_to_torch"
WRONG_BODY = "return kernel.T"  # the typical mistake: .T reverses all four axes
DELETED_IN = next(p.name for p in SOLUTIONS if p.name != WRONG_NOTEBOOK)  # where the third student deletes a test cell


def _replace_region_after(source: str, anchor: str, body: str) -> str:
    """``source`` with the first solution region after the line holding ``anchor`` replaced by ``body``."""
    lines = source.split("\n")
    start = next(i for i, line in enumerate(lines) if anchor in line)
    begin = next(i for i in range(start, len(lines)) if rel._BEGIN_RE.match(lines[i]))
    end = next(i for i in range(begin, len(lines)) if rel._END_RE.match(lines[i]))
    indent = rel._BEGIN_RE.match(lines[begin]).group(1)
    return "\n".join(lines[:begin] + [indent + body] + lines[end + 1:])


def expected_hint() -> str:
    """The line the stage 07 check prints for the wrong answer, run here as a student would."""
    import numpy as np

    from labkit import checks

    namespace = {"np": np}
    nb = nbformat.read(str(ROOT / "solutions" / WRONG_NOTEBOOK), as_version=4)
    cell = next(c for c in nb.cells if f"def {WRONG_FUNCTION}(" in c.source)
    code = _replace_region_after(cell.source, f"def {WRONG_FUNCTION}(", WRONG_BODY)
    tree = ast.parse(code)
    tree.body = [node for node in tree.body if isinstance(node, ast.FunctionDef)]  # the definitions only
    exec(compile(tree, WRONG_NOTEBOOK, "exec"), namespace)
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        ok = checks.keras_to_torch(namespace["conv_kernel_to_torch"], namespace["dense_kernel_to_torch"], namespace["fc1_to_torch"])
    line = out.getvalue().strip()
    assert not ok and line.startswith("HINT [07 keras to torch] conv_kernel_to_torch"), line
    return line


def submission(released: Path, source: Path, kind: str):
    """A student's notebook: the released one, with the solutions filled in (kind full or wrong) or untouched (stub)."""
    nb = nbformat.read(str(released), as_version=4)
    if kind == "stub":
        return nb
    solution = {c.id: c.source for c in nbformat.read(str(source), as_version=4).cells}
    for cell in nb.cells:
        if cell.metadata.get("nbgrader", {}).get("solution"):
            cell.source = solution[cell.id]
    if kind == "wrong" and released.name == WRONG_NOTEBOOK:
        exercise = next(c for c in nb.cells if f"def {WRONG_FUNCTION}(" in c.source)
        exercise.source = _replace_region_after(exercise.source, f"def {WRONG_FUNCTION}(", WRONG_BODY)
        test = next(c for c in nb.cells if c.metadata.get("nbgrader", {}).get("grade_id", "").startswith("check-"))
        test.source = 'ok = True\nprint("PASS [07 keras to torch] all three conversions are right")'  # tampered
    if kind == "wrong" and released.name == DELETED_IN:
        # a right answer whose test cell the student deleted: nbgrader adds it back (add_missing_cells) and it passes
        nb.cells = [c for c in nb.cells if not c.metadata.get("nbgrader", {}).get("grade_id", "").startswith("check-")]
    return nb


@pytest.fixture(scope="module")
def generated(tmp_path_factory):
    """A course directory after `labkit grading init` and `nbgrader generate_assignment labkit`."""
    if nbgrader_missing:
        pytest.skip("nbgrader is not installed (pip install 'labkit[grading]')")
    course = tmp_path_factory.mktemp("course") / "c"
    assert grading.main(["init", str(course)]) == 0
    nbgrader(course, "generate_assignment", "labkit")
    released = sorted((course / "release" / "labkit").glob("*.ipynb"))
    assert [p.name for p in released] == [p.name for p in SOLUTIONS]
    return course


@pytest.fixture(scope="module")
def course(generated):
    """The same course after three submissions, autograde, feedback and export (runs each notebook 3 times)."""
    course = generated
    for student in ("full", "stub", "wrong"):
        folder = course / "submitted" / student / "labkit"
        folder.mkdir(parents=True)
        for path in sorted((course / "release" / "labkit").glob("*.ipynb")):
            nbformat.write(submission(path, course / "source" / "labkit" / path.name, student), str(folder / path.name))
    nbgrader(course, "autograde", "labkit")
    nbgrader(course, "generate_feedback", "labkit")
    nbgrader(course, "export", "--to", str(course / "grades.csv"))
    return course


@needs_nbgrader
def test_nbgrader_hands_out_what_labkit_release_writes(generated):
    """Same cells, ids, types and sources as `labkit release`; nbgrader's own metadata aside."""
    course = generated
    for path in SOLUTIONS:
        mine = nbformat.reads(rel.render(path), as_version=4)
        theirs = nbformat.read(str(course / "release" / "labkit" / path.name), as_version=4)
        assert [(c.id, c.cell_type, c.source) for c in theirs.cells] == [(c.id, c.cell_type, c.source) for c in mine.cells], path.name
        locked = [c for c in theirs.cells if c.metadata["nbgrader"].get("locked")]
        assert locked and all(c.metadata.get("editable") is False for c in locked)


def scores(course: Path) -> dict:
    """{(student, notebook, grade_id): (auto_score, max_score)} from nbgrader's gradebook."""
    from nbgrader.api import Gradebook

    out = {}
    with Gradebook(f"sqlite:///{course / 'gradebook.db'}") as gb:
        for student in ("full", "stub", "wrong"):
            for notebook in gb.find_assignment("labkit").notebooks:
                sub = gb.find_submission_notebook(notebook.name, "labkit", student)
                for grade in sub.grades:
                    out[student, notebook.name + ".ipynb", grade.name] = (grade.auto_score, grade.max_score)
    return out


@needs_nbgrader
def test_round_trip_scores(course):
    got = scores(course)
    checks = {k: v for k, v in got.items() if k[2].startswith("check-")}
    per_student = {s: sum(v[0] or 0 for k, v in checks.items() if k[0] == s) for s in ("full", "stub", "wrong")}
    total = sum(v[1] for k, v in checks.items() if k[0] == "full")
    lost = sum(v[1] for k, v in checks.items() if k[0] == "wrong" and k[1] == WRONG_NOTEBOOK)
    assert total == sum(grading.points(nbformat.read(str(p), as_version=4))["check"] for p in SOLUTIONS)
    assert per_student["full"] == total, {k: v for k, v in checks.items() if k[0] == "full" and v[0] != v[1]}
    assert per_student["stub"] == 0
    assert all(v[0] == v[1] for k, v in checks.items() if k[0] == "wrong" and k[1] == DELETED_IN)  # the deleted check came back
    assert per_student["wrong"] == total - lost and lost > 0, {k: v for k, v in checks.items() if k[0] == "wrong" and v[0] != v[1]}
    # written answers: untouched stubs score 0 at once; written ones wait for the instructor
    answers = {k: v for k, v in got.items() if k[2].startswith("answer-")}
    assert all(v[0] == 0 for k, v in answers.items() if k[0] == "stub")
    assert all(v[0] is None for k, v in answers.items() if k[0] == "full")

    with open(course / "grades.csv", newline="") as f:
        rows = {row["student_id"]: row for row in csv.DictReader(f)}
    assert float(rows["full"]["score"]) == total and float(rows["stub"]["score"]) == 0
    assert float(rows["wrong"]["score"]) == total - lost


@needs_nbgrader
def test_round_trip_restores_the_tampered_test_cell_and_shows_the_hint(course):
    graded = nbformat.read(str(course / "autograded" / "wrong" / "labkit" / WRONG_NOTEBOOK), as_version=4)
    test = next(c for c in graded.cells if c.metadata.get("nbgrader", {}).get("grade_id", "").startswith("check-"))
    source = nbformat.read(str(course / "source" / "labkit" / WRONG_NOTEBOOK), as_version=4)
    assert test.source == next(c for c in source.cells if c.id == test.id).source  # nbgrader put the check back
    hint = expected_hint()
    feedback = (course / "feedback" / "wrong" / "labkit" / WRONG_NOTEBOOK.replace(".ipynb", ".html")).read_text()
    text = " ".join(html.unescape(re.sub(r"<[^>]+>", "", feedback)).split())
    assert f"AssertionError: {hint}" in text
