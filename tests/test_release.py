"""labkit release in temporary folders: stubs, cleared outputs, determinism, --check, edited notebooks, atomicity."""

from __future__ import annotations

import argparse
import os

import nbformat
import pytest
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook, new_output

from labkit import release as rel

SOLUTION_CODE = """\
import math

def area(r):
    ### BEGIN SOLUTION
    return math.pi * r ** 2
    ### END SOLUTION

### BEGIN SOLUTION
answer = area(2.0)
### END SOLUTION
print(answer)
"""

STUDENT_CODE = """\
import math

def area(r):
    # YOUR CODE HERE
    raise NotImplementedError("replace this line with your solution")

# YOUR CODE HERE
raise NotImplementedError("replace this line with your solution")
print(answer)
"""


def solution_notebook(extra_line: str = "") -> nbformat.NotebookNode:
    code = new_code_cell(SOLUTION_CODE + extra_line, execution_count=3)
    code.outputs = [new_output("stream", name="stdout", text="12.566370614359172\n")]
    code.metadata["tags"] = ["nbval-check-output"]
    code.metadata["execution"] = {"iopub.execute_input": "2024-01-01T00:00:00Z"}
    plain = new_code_cell("# NBVAL_CHECK_OUTPUT\nprint(1 + 1)", execution_count=4)
    plain.outputs = [new_output("stream", name="stdout", text="2\n")]
    cells = [
        new_markdown_cell("# A stage\nSome story."),
        code,
        plain,
        new_markdown_cell("Why?\n\n### BEGIN SOLUTION\nBecause.\n### END SOLUTION\nThe end."),
    ]
    for i, cell in enumerate(cells):
        cell["id"] = f"cell-{i}"  # fixed ids: the test compares bytes across notebooks built separately
    nb = new_notebook(cells=cells)
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    return nb


@pytest.fixture
def lab(tmp_path):
    sol, stu = tmp_path / "solutions", tmp_path / "notebooks"
    sol.mkdir()
    nbformat.write(solution_notebook(), sol / "01_first.ipynb")
    nbformat.write(solution_notebook("print('second')\n"), sol / "02_second.ipynb")
    return sol, stu


def snapshot(folder):
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def student(stu, name="01_first.ipynb"):
    return nbformat.read(str(stu / name), as_version=4)


def test_regions_become_stubs_at_their_indentation(lab):
    sol, stu = lab
    report = rel.release(sol, stu)
    assert report.written == ["01_first.ipynb", "02_second.ipynb"] and report.ok
    nb = student(stu)
    assert nb.cells[1].source == STUDENT_CODE
    assert nb.cells[3].source == "Why?\n\nYOUR ANSWER HERE\nThe end."
    assert nb.cells[0].source == "# A stage\nSome story."  # cells without regions are untouched
    text = (stu / "01_first.ipynb").read_text()
    assert "math.pi" not in text and "Because." not in text and "BEGIN SOLUTION" not in text
    assert nb.metadata.labkit.solution_regions == 3


def test_the_stub_raises_not_implemented(lab):
    sol, stu = lab
    rel.release(sol, stu)
    source = student(stu).cells[1].source
    with pytest.raises(NotImplementedError, match="replace this line"):
        exec(compile(source, "cell", "exec"), {})


def test_outputs_cleared_and_nbval_metadata_kept(lab):
    sol, stu = lab
    rel.release(sol, stu)
    code = [c for c in student(stu).cells if c.cell_type == "code"]
    assert all(c.outputs == [] and c.execution_count is None for c in code)
    assert code[0].metadata["tags"] == ["nbval-check-output"]
    assert "execution" not in code[0].metadata  # timing records are noise
    assert code[1].source.startswith("# NBVAL_CHECK_OUTPUT")
    assert [c.id for c in student(stu).cells] == [f"cell-{i}" for i in range(4)]
    nbformat.validate(student(stu))


def test_output_is_deterministic(lab, tmp_path):
    sol, stu = lab
    rel.release(sol, stu)
    first = snapshot(stu)
    other = tmp_path / "other"
    rel.release(sol, other)
    assert snapshot(other) == first  # a second folder, built separately: the same bytes
    mtime = (stu / "01_first.ipynb").stat().st_mtime_ns
    report = rel.release(sol, stu)
    assert report.unchanged == ["01_first.ipynb", "02_second.ipynb"] and not report.written
    assert snapshot(stu) == first and (stu / "01_first.ipynb").stat().st_mtime_ns == mtime  # not even rewritten
    assert rel.render(sol / "01_first.ipynb") == rel.render(sol / "01_first.ipynb")


def test_missing_cell_ids_are_derived_not_random(tmp_path):
    nb = solution_notebook()
    for cell in nb.cells:
        del cell["id"]
    out = [rel._canonical(rel.student_notebook(nb, "x.ipynb")) for _ in range(2)]
    assert out[0] == out[1]


def test_stored_hash_is_the_content_hash(lab):
    sol, stu = lab
    rel.release(sol, stu)
    nb = student(stu)
    assert nb.metadata.labkit.release_sha256 == rel.content_sha256(nb)
    assert not rel.edited(stu / "01_first.ipynb")


def test_check_writes_nothing_and_finds_missing_stale_extra(lab):
    sol, stu = lab
    report = rel.release(sol, stu, check=True)
    assert report.missing == ["01_first.ipynb", "02_second.ipynb"] and report.exit_code == 1
    assert not stu.exists()
    rel.release(sol, stu)
    assert rel.release(sol, stu, check=True).ok

    nbformat.write(solution_notebook(), sol / "99_orphan.ipynb")
    rel.release(sol, stu)
    (sol / "99_orphan.ipynb").unlink()  # extra: release wrote it, its solution is gone
    nbformat.write(solution_notebook("print('changed')\n"), sol / "01_first.ipynb")  # solution changed: stale
    (stu / "02_second.ipynb").unlink()  # missing
    nbformat.write(solution_notebook(), stu / "my_notes.ipynb")  # a student's own: listed, never touched
    before = snapshot(stu)
    report = rel.release(sol, stu, check=True)
    assert (report.stale, report.missing, report.extra) == (["01_first.ipynb"], ["02_second.ipynb"], ["99_orphan.ipynb"])
    assert report.left_alone == ["my_notes.ipynb"]
    assert report.exit_code == 1 and snapshot(stu) == before
    lines = "\n".join(report.lines())
    assert "stale: 01_first.ipynb (run `labkit release`)" in lines
    assert "extra: 99_orphan.ipynb has no solutions notebook (run `labkit release`: it removes it)" in lines


def test_unedited_notebook_is_updated_without_backup(lab):
    sol, stu = lab
    rel.release(sol, stu)
    nbformat.write(solution_notebook("print('v2')\n"), sol / "01_first.ipynb")
    report = rel.release(sol, stu)
    assert report.written == ["01_first.ipynb"] and report.ok and not report.backups
    assert "print('v2')" in student(stu).cells[1].source
    assert not (stu / rel.BACKUP_DIR).exists()


def edit(stu, name="01_first.ipynb"):
    nb = student(stu, name)
    nb.cells[1].source = nb.cells[1].source.replace('raise NotImplementedError("replace this line with your solution")\n', "return 3.14 * r * r\n", 1)
    nbformat.write(nb, str(stu / name))
    return (stu / name).read_bytes()


def test_edited_notebook_is_not_overwritten_without_force(lab):
    sol, stu = lab
    rel.release(sol, stu)
    work = edit(stu)
    assert rel.edited(stu / "01_first.ipynb")
    nbformat.write(solution_notebook("print('v2')\n"), sol / "01_first.ipynb")
    report = rel.release(sol, stu)
    assert report.refused == ["01_first.ipynb"] and report.exit_code == 1
    assert (stu / "01_first.ipynb").read_bytes() == work
    assert any("--force" in line for line in report.lines())
    check = rel.release(sol, stu, check=True)
    assert check.stale == ["01_first.ipynb"] and "was edited since release wrote it" in " ".join(check.lines())


def test_force_overwrites_and_keeps_a_backup(lab):
    sol, stu = lab
    rel.release(sol, stu)
    work = edit(stu)
    report = rel.release(sol, stu, force=True)
    assert report.written == ["01_first.ipynb"] and len(report.backups) == 1
    backup = report.backups[0]
    assert backup.parent == stu / rel.BACKUP_DIR and backup.name.startswith("01_first.") and backup.suffix == ".ipynb"
    assert backup.read_bytes() == work
    assert (stu / "01_first.ipynb").read_text() == rel.render(sol / "01_first.ipynb")
    # a second forced release on the same second keeps both backups
    edit(stu)
    report = rel.release(sol, stu, force=True)
    assert len(list((stu / rel.BACKUP_DIR).glob("*.ipynb"))) == 2
    assert rel.release(sol, stu, check=True).ok  # backups live in their own folder: not "extra"


def test_backups_are_visible_and_their_path_is_printed(lab):
    """Issue 11 §7: JupyterLab hides notebooks/.backup/, so nobody found the copies."""
    sol, stu = lab
    rel.release(sol, stu)
    edit(stu)
    report = rel.release(sol, stu, force=True)
    backup = report.backups[0]
    assert not any(part.startswith(".") for part in backup.relative_to(stu).parts)
    assert any(str(backup) in line for line in report.lines())


def test_check_gives_the_advice_release_will_follow(lab):
    """Issue 11 §7: for an edited notebook, "run `labkit release`" was wrong: release refuses it."""
    sol, stu = lab
    rel.release(sol, stu)
    edit(stu)
    nbformat.write(solution_notebook("print('v2')\n"), sol / "01_first.ipynb")
    lines = rel.release(sol, stu, check=True).lines()
    line = next(line for line in lines if "01_first.ipynb" in line)
    assert "run `labkit release`)" not in line and "`labkit release --force` replaces it" in line
    assert str(stu / rel.BACKUP_DIR) in line
    assert rel.release(sol, stu).refused == ["01_first.ipynb"]  # as announced
    assert rel.release(sol, stu, force=True).written == ["01_first.ipynb"]


def test_force_never_deletes_a_notebook_that_never_had_a_solution(lab):
    """Issue 11 §7 / issue 12: `--force` deleted a student's own my_notes.ipynb."""
    sol, stu = lab
    rel.release(sol, stu)
    nbformat.write(solution_notebook(), stu / "my_notes.ipynb")
    mine = (stu / "my_notes.ipynb").read_bytes()
    for force in (False, True):
        report = rel.release(sol, stu, force=force)
        assert report.left_alone == ["my_notes.ipynb"] and not report.removed and report.ok
        assert (stu / "my_notes.ipynb").read_bytes() == mine
    assert any("left alone: my_notes.ipynb" in line for line in report.lines())


def test_a_copy_of_a_released_notebook_is_the_students(lab):
    """A duplicate (JupyterLab's "Duplicate": 01_first-Copy1.ipynb) carries release's marker and a valid hash,
    but release did not write that file: it must survive, with or without --force."""
    sol, stu = lab
    rel.release(sol, stu)
    copy = stu / "01_first-Copy1.ipynb"
    copy.write_bytes((stu / "01_first.ipynb").read_bytes())
    for force in (False, True):
        report = rel.release(sol, stu, force=force)
        assert report.left_alone == ["01_first-Copy1.ipynb"] and not report.removed
        assert copy.exists()


def test_a_notebook_release_did_not_write_is_never_replaced(lab):
    sol, stu = lab
    stu.mkdir()
    nbformat.write(solution_notebook(), stu / "01_first.ipynb")  # no release marker: someone's own file
    theirs = (stu / "01_first.ipynb").read_bytes()
    assert rel.edited(stu / "01_first.ipynb")
    for force in (False, True):
        report = rel.release(sol, stu, force=force)
        assert report.not_ours == ["01_first.ipynb"] and report.exit_code == 1 and not report.backups
        assert (stu / "01_first.ipynb").read_bytes() == theirs
    assert report.written == ["02_second.ipynb"] or report.unchanged == ["02_second.ipynb"]
    assert any("not ours: 01_first.ipynb" in line and "move or rename it" in line for line in report.lines())
    check = rel.release(sol, stu, check=True)
    assert check.not_ours == ["01_first.ipynb"] and check.exit_code == 1


def test_orphans_removed_only_when_unedited(lab):
    sol, stu = lab
    rel.release(sol, stu)
    (sol / "02_second.ipynb").unlink()
    (sol / "01_first.ipynb").unlink()
    edit(stu, "01_first.ipynb")  # released, then worked in
    report = rel.release(sol, stu)
    assert report.removed == ["02_second.ipynb"] and report.extra == ["01_first.ipynb"] and report.exit_code == 1
    assert not (stu / "02_second.ipynb").exists() and (stu / "01_first.ipynb").exists()
    report = rel.release(sol, stu, force=True)
    assert report.removed == ["01_first.ipynb"] and len(report.backups) == 1 and report.ok


def test_failed_write_leaves_old_file_and_no_temp(lab, monkeypatch):
    sol, stu = lab
    rel.release(sol, stu)
    nbformat.write(solution_notebook("print('v2')\n"), sol / "01_first.ipynb")
    before = snapshot(stu)

    def crash(fd):
        raise OSError("disk full")

    monkeypatch.setattr(rel.os, "fsync", crash)  # dies after writing the bytes, before the rename
    with pytest.raises(OSError, match="disk full"):
        rel.release(sol, stu)
    assert snapshot(stu) == before  # old content intact, no .tmp left behind


def test_broken_solution_stops_release_before_any_write(lab):
    sol, stu = lab
    bad = solution_notebook()
    bad.cells[1].source = "### BEGIN SOLUTION\nx = 1\n"
    nbformat.write(bad, sol / "02_second.ipynb")
    with pytest.raises(rel.ReleaseError, match=r"02_second.ipynb, cell 1: ### BEGIN SOLUTION is never closed"):
        rel.release(sol, stu)
    assert not stu.exists() or not any(stu.iterdir())  # 01 was fine, yet nothing was written


@pytest.mark.parametrize(
    "source, message",
    [
        ("x = 1\n### END SOLUTION\n", "line 2: ### END SOLUTION without a ### BEGIN SOLUTION"),
        ("### BEGIN SOLUTION\n### BEGIN SOLUTION\n### END SOLUTION\n", "line 2: ### BEGIN SOLUTION inside another"),
    ],
)
def test_bad_markers_are_one_line_errors(source, message):
    nb = solution_notebook()
    nb.cells[1].source = source
    with pytest.raises(rel.ReleaseError, match=message) as err:
        rel.student_notebook(nb, "x.ipynb")
    assert "\n" not in str(err.value)


def test_cli_exit_codes_and_messages(lab, capsys):
    sol, stu = lab
    args = ["--solutions", str(sol), "--notebooks", str(stu)]
    assert rel.main(["--check", *args]) == 1
    assert "missing: 01_first.ipynb" in capsys.readouterr().err
    assert rel.main(["release", *args]) == 0  # the subcommand name is accepted too
    assert rel.main(["--check", *args]) == 0
    assert "up to date: 2" in capsys.readouterr().out
    assert rel.main(["--solutions", str(sol / "nope"), "--notebooks", str(stu)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("labkit release: error: no solutions folder") and err.count("\n") == 1


def test_add_parser_plugs_into_a_subcommand_cli(lab):
    sol, stu = lab
    parser = argparse.ArgumentParser(prog="labkit")
    sub = parser.add_subparsers(dest="command", required=True)
    rel.add_parser(sub)
    args = parser.parse_args(["release", "--check", "--solutions", str(sol), "--notebooks", str(stu)])
    assert args.func is rel.run and args.check and not args.force
    assert args.func(args) == 1
    assert rel.run(parser.parse_args(["release", "--solutions", str(sol), "--notebooks", str(stu)])) == 0


def test_written_files_have_ordinary_permissions(lab):
    sol, stu = lab
    rel.release(sol, stu)
    mode = (stu / "01_first.ipynb").stat().st_mode & 0o777
    umask = os.umask(0)
    os.umask(umask)
    assert mode == 0o666 & ~umask
