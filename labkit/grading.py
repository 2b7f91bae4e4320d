"""Grading the lab with nbgrader, from the same ``solutions/``: ``labkit grading stamp`` and ``labkit grading init``.

nbgrader reads what each cell is from the cell's ``metadata.nbgrader``. ``stamp`` writes that metadata,
deterministically and idempotently, from what the notebook already says (nothing else in the file changes):

* a code cell with a ``### BEGIN SOLUTION`` region is an **exercise**: an nbgrader solution cell
  (``grade_id`` ``exercise-<cell id>``);
* a code cell that calls a check (``checks.<name>(...)``, where ``<name>`` is a function of ``labkit/checks``
  that calls ``report(...)``) is an autograded **test cell** worth ``POINTS["check"]`` points
  (``check-<name>-<cell id>``), locked: nbgrader restores its source before autograding;
* a markdown cell with a solution region is a **written answer**: a manually graded answer cell worth
  ``POINTS["answer"]`` points (``answer-<cell id>``);
* every other code or markdown cell is **read-only** (``locked-<cell id>``): the story, the data the checks are
  given, the figures. nbgrader restores them too, so a student cannot change what a check runs on.

Points an instructor changed in a cell's metadata are kept; everything else is derived again. Grade ids come
from the cells' ids, which Jupyter keeps stable across edits.

``init COURSE_DIR`` writes an nbgrader course directory: ``nbgrader_config.py`` and
``source/<assignment>/`` (the stamped solutions). Both commands are also ``python -m labkit.grading ...``.

This module imports neither torch nor keras: it only reads and writes notebooks.
"""

from __future__ import annotations

import argparse
import ast
import copy
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path

from labkit import lazy_import
from labkit import release as rel

nbformat = lazy_import("nbformat")  # loaded when first used: `labkit grading --help` stays instant (labkit/cli.py)

ROOT = rel.ROOT
CHECKS_DIR = ROOT / "labkit" / "checks"
SCHEMA_VERSION = 3  # nbgrader 0.9's cell metadata schema
POINTS = {"check": 1, "answer": 1}  # default points of an autograded check and of a written answer
ASSIGNMENT = "labkit"  # the lab is one nbgrader assignment holding every stage
AUTOGRADE_ENV = "LABKIT_AUTOGRADE"  # labkit.checks.base reads it: failed checks raise AssertionError
CELL_TIMEOUT_S = 300  # nbgrader's per-cell limit; see config_text
NBGRADER_REQUIREMENT = "nbgrader==0.9.6"

_CHECK_CALL = re.compile(r"\bchecks\.([A-Za-z_]\w*)\s*\(")


class GradingError(ValueError):
    """A notebook cannot be stamped, or a course directory cannot be written; the message is one line."""


# ----------------------------------------------------------------------------------------------------
# What each cell is


def check_names(checks_dir: Path = CHECKS_DIR) -> frozenset:
    """The public functions of ``labkit/checks/*.py`` that call ``report(...)`` (base.report): the checks.

    Read from the source (no import), so helpers such as ``checks.copy_weights`` are not mistaken for checks.
    """
    names = set()
    for path in sorted(Path(checks_dir).glob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
        aliases = {"report"} | {a.asname for node in tree.body if isinstance(node, ast.ImportFrom)
                                for a in node.names if a.name == "report" and a.asname}
        for node in tree.body:
            if not isinstance(node, ast.FunctionDef) or node.name.startswith("_"):
                continue
            for sub in ast.walk(node):
                func = sub.func if isinstance(sub, ast.Call) else None
                if (isinstance(func, ast.Name) and func.id in aliases) or (isinstance(func, ast.Attribute) and func.attr == "report"):
                    names.add(node.name)
                    break
    return frozenset(names)


def _has_region(source: str, where: str) -> bool:
    """True when the cell holds a solution region; refuse a marker that nbgrader and release would read differently.

    nbgrader treats any line *containing* ``BEGIN SOLUTION`` as a marker, release only a line that is the marker
    (after indentation). A marker that shares its line with other text would make the two disagree.
    """
    found = False
    for lineno, line in enumerate(source.splitlines(), start=1):
        if "BEGIN SOLUTION" in line or "END SOLUTION" in line:
            if not (rel._BEGIN_RE.match(line) or rel._END_RE.match(line)):
                raise GradingError(f"{where}, line {lineno}: put {rel.BEGIN} / {rel.END} alone on its line "
                                   "(nbgrader reads any line containing it as a marker)")
            found = found or bool(rel._BEGIN_RE.match(line))
    return found


def classify(cell, checks: frozenset, where: str = "cell") -> tuple[str, str]:
    """``(kind, grade_id)`` of one cell; kind is exercise, check, answer, locked or "" (left unstamped)."""
    if cell.cell_type not in ("code", "markdown"):
        return "", ""
    cell_id = cell.get("id")
    if not cell_id:
        raise GradingError(f"{where} has no id: save the notebook with Jupyter >= 3 (nbformat 4.5), which gives every cell one")
    region = _has_region(cell.source, where)
    if cell.cell_type == "markdown":
        return ("answer", f"answer-{cell_id}") if region else ("locked", f"locked-{cell_id}")
    called = [name for name in _CHECK_CALL.findall(cell.source) if name in checks]
    if region and called:
        raise GradingError(f"{where} holds both an exercise and checks.{called[0]}(...): move the check into the next cell")
    if region:
        return "exercise", f"exercise-{cell_id}"
    if called:
        return "check", f"check-{called[0]}-{cell_id}"
    return "locked", f"locked-{cell_id}"


def cell_metadata(kind: str, grade_id: str, old: dict | None = None) -> dict:
    """nbgrader's metadata for a cell of this kind; ``points`` kept from ``old`` when the kind is graded."""
    meta = {
        "grade": kind in ("check", "answer"),
        "grade_id": grade_id,
        "locked": kind in ("check", "locked"),
        "schema_version": SCHEMA_VERSION,
        "solution": kind in ("exercise", "answer"),
        "task": False,
    }
    if meta["grade"]:
        points = (old or {}).get("points")
        kept = isinstance(points, (int, float)) and not isinstance(points, bool) and points > 0
        kept = kept and (old or {}).get("grade") and (old or {}).get("solution") == meta["solution"]
        meta["points"] = points if kept else POINTS[kind]
    return meta


def stamp_notebook(nb, name: str = "notebook", checks: frozenset | None = None):
    """A copy of ``nb`` with every cell's ``metadata.nbgrader`` derived from its source; the input is not modified."""
    checks = check_names() if checks is None else checks
    nb = copy.deepcopy(nb)
    for index, cell in enumerate(nb.cells):
        kind, grade_id = classify(cell, checks, f"{name}, cell {index}")
        if not kind:
            cell.metadata.pop("nbgrader", None)
            continue
        cell.metadata["nbgrader"] = cell_metadata(kind, grade_id, cell.metadata.get("nbgrader"))
    return nb


def kinds(nb) -> list[str]:
    """The kind stamped on each cell ("" for an unstamped one), read from the metadata."""
    out = []
    for cell in nb.cells:
        meta = cell.metadata.get("nbgrader") or {}
        out.append(meta.get("grade_id", "").split("-")[0] if meta else "")
    return out


def points(nb) -> dict:
    """``{"check": autograded points, "answer": manually graded points}`` of a stamped notebook."""
    total = {"check": 0, "answer": 0}
    for cell in nb.cells:
        meta = cell.metadata.get("nbgrader") or {}
        if meta.get("grade"):
            total["answer" if meta.get("solution") else "check"] += meta.get("points", 0)
    return total


def problems(nb, name: str = "notebook", checks: frozenset | None = None) -> list[str]:
    """Why ``nb`` is not ready for nbgrader: cells whose metadata ``stamp`` would change, exercises with no check."""
    out = []
    stamped = stamp_notebook(nb, name, checks)
    for index, (old, new) in enumerate(zip(nb.cells, stamped.cells)):
        if old.metadata.get("nbgrader") != new.metadata.get("nbgrader"):
            out.append(f"{name}, cell {index}: nbgrader metadata is not what `labkit grading stamp` writes "
                       f"({new.metadata.get('nbgrader', {}).get('grade_id', 'none')}): run it")
    pending = None
    for index, kind in enumerate(kinds(stamped)):
        if kind == "exercise" and pending is None:
            pending = index
        elif kind == "check":
            pending = None
    if pending is not None:
        out.append(f"{name}, cell {pending}: an exercise with no check cell (checks.<stage>(...)) after it: nbgrader could not grade it")
    return out


def _read(path: Path):
    try:
        return nbformat.read(str(path), as_version=4)
    except Exception as exc:  # nbformat raises several kinds for unreadable JSON
        raise GradingError(f"cannot read {path} as a notebook ({type(exc).__name__}): fix or remove it") from None


def _text(nb, like: bytes | None = None) -> str:
    """The notebook as nbformat writes it; with a final newline when the file it replaces had one."""
    text = nbformat.writes(nb, version=4)
    return text + "\n" if like is None or like.endswith(b"\n") else text


def stamp(solutions_dir=None, check: bool = False) -> list[str]:
    """Stamp every ``*.ipynb`` in ``solutions_dir`` in place; the names that changed (with check: would change).

    Every notebook is stamped in memory before any file is written, so a bad one leaves all files as they were.
    """
    solutions_dir = Path(solutions_dir) if solutions_dir is not None else ROOT / "solutions"
    if not solutions_dir.is_dir():
        raise GradingError(f"no solutions folder at {solutions_dir}: pass the folder")
    checks = check_names()
    todo = {}
    for path in sorted(solutions_dir.glob("*.ipynb")):
        nb = _read(path)
        stamped = stamp_notebook(nb, path.name, checks)
        if stamped != nb:
            todo[path] = _text(stamped, path.read_bytes())
    if not check:
        for path, text in todo.items():
            rel.write_atomic(path, text.encode("utf-8"))
    return [p.name for p in todo]


# ----------------------------------------------------------------------------------------------------
# The course directory


def config_text(course_id: str, assignment: str, backbone: str, timeout: int) -> str:
    """The ``nbgrader_config.py`` of a labkit course."""
    stub = "\n".join(rel._code_stub(""))  # release's stub, line for line
    return f'''"""nbgrader configuration of the labkit lab, written by `labkit grading init` (edit freely).

The lab is one assignment, {assignment!r}: source/{assignment}/ holds every stage's notebook, stamped by
`labkit grading stamp` (solution, test, answer and read-only cells). Commands: see labkit's README,
"Grading a class with nbgrader".
"""

import os

# The environment of the notebooks' kernels (they inherit nbgrader's). Under autograding a failed check
# raises AssertionError carrying its hint, so the test cell fails and the feedback shows the hint.
os.environ["{AUTOGRADE_ENV}"] = "1"
os.environ["KERAS_BACKEND"] = "torch"
os.environ["LABKIT_BACKBONE"] = {backbone!r}  # grade with the backbone the class used

c = get_config()  # noqa: F821 - nbgrader provides it

c.CourseDirectory.course_id = {course_id!r}

# Student notebooks identical to what `labkit release` writes (same stubs).
c.ClearSolutions.code_stub = {{"python": {stub!r}}}
c.ClearSolutions.text_stub = {rel.ANSWER_STUB!r}

# nbgrader's limit is per cell. Every notebook runs in at most 60 s on a 2-core machine; {timeout} s per cell
# leaves room for a loaded grading machine and stops a student's endless loop.
c.Execute.timeout = {timeout}

# A test cell the student deleted comes back (nbgrader restores edited ones in any case).
c.OverwriteCells.add_missing_cells = True
'''


@dataclass
class InitReport:
    course_dir: Path
    written: list = field(default_factory=list)  # paths relative to course_dir
    unchanged: list = field(default_factory=list)
    points: dict = field(default_factory=dict)  # notebook name -> {"check": n, "answer": n}

    def lines(self) -> list[str]:
        out = [f"wrote: {self.course_dir / p}" for p in self.written]
        for name, pts in self.points.items():
            out.append(f"  {name}: {pts['check']} autograded point(s), {pts['answer']} for written answers")
        out.append(f"{len(self.written)} written, {len(self.unchanged)} unchanged in {self.course_dir}")
        return out


def init(course_dir, solutions_dir=None, force: bool = False, course_id: str = "labkit",
         assignment: str = ASSIGNMENT, backbone: str = "minivgg", timeout: int = CELL_TIMEOUT_S) -> InitReport:
    """Write ``course_dir/nbgrader_config.py`` and ``course_dir/source/<assignment>/*.ipynb`` (stamped solutions).

    Refuses (GradingError, nothing written) when a file it would write exists with other content, unless ``force``.
    """
    course_dir = Path(course_dir)
    solutions_dir = Path(solutions_dir) if solutions_dir is not None else ROOT / "solutions"
    if not solutions_dir.is_dir():
        raise GradingError(f"no solutions folder at {solutions_dir}: pass --solutions DIR")
    if course_dir.exists() and not course_dir.is_dir():
        raise GradingError(f"{course_dir} is not a folder: pass a course directory")
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", assignment):
        raise GradingError(f"assignment name {assignment!r}: use letters, digits, '_', '-', '.'")
    checks = check_names()
    files = {}
    report = InitReport(course_dir)
    for path in sorted(solutions_dir.glob("*.ipynb")):
        nb = stamp_notebook(_read(path), path.name, checks)
        files[Path("source") / assignment / path.name] = _text(nb).encode("utf-8")
        report.points[path.name] = points(nb)
    if not report.points:
        raise GradingError(f"no notebooks in {solutions_dir}: pass --solutions DIR")
    files[Path("nbgrader_config.py")] = config_text(course_id, assignment, backbone, timeout).encode("utf-8")

    clash = [p for p, data in files.items() if (course_dir / p).exists() and (course_dir / p).read_bytes() != data]
    if clash and not force:
        names = ", ".join(str(p) for p in clash[:3]) + (f" and {len(clash) - 3} more" if len(clash) > 3 else "")
        raise GradingError(f"{course_dir} already has {names} with other content: pass --force to overwrite")
    for p, data in files.items():
        target = course_dir / p
        if target.exists() and target.read_bytes() == data:
            report.unchanged.append(p)
            continue
        rel.write_atomic(target, data)
        report.written.append(p)
    return report


# ----------------------------------------------------------------------------------------------------
# Command line


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Add ``grading`` (with ``stamp`` and ``init``) to the ``labkit`` command's subparsers."""
    p = subparsers.add_parser("grading", help="grade the lab with nbgrader: stamp the solutions, write a course directory",
                              description="Grade the lab with nbgrader (pip install 'labkit[grading]').")
    _add_subcommands(p)
    return p


def _add_subcommands(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="grading_command", required=True)
    s = sub.add_parser("stamp", help="write nbgrader's cell metadata into solutions/ (idempotent)")
    s.add_argument("solutions", nargs="?", type=Path, default=None, help=f"solutions folder (default {ROOT / 'solutions'})")
    s.add_argument("--check", action="store_true", help="write nothing; exit 1 if a notebook is not stamped or has an ungraded exercise")
    s.set_defaults(func=_run_stamp)
    s = sub.add_parser("init", help="write an nbgrader course directory: nbgrader_config.py and source/<assignment>/")
    s.add_argument("course_dir", type=Path, help="the course directory (created if missing)")
    s.add_argument("--force", action="store_true", help="overwrite files of an existing course directory")
    s.add_argument("--course-id", default="labkit", help="nbgrader's course id (default labkit)")
    s.add_argument("--assignment", default=ASSIGNMENT, help=f"the assignment's name (default {ASSIGNMENT})")
    s.add_argument("--backbone", choices=["minivgg", "vgg16"], default="minivgg", help="the backbone the class uses")
    s.add_argument("--solutions", type=Path, default=None, help=f"solutions folder (default {ROOT / 'solutions'})")
    s.set_defaults(func=_run_init)


def _one_line(exc: BaseException) -> str:
    return " ".join((str(exc) or type(exc).__name__).split())


def _run_stamp(args) -> int:
    try:
        changed = stamp(args.solutions, check=args.check)
        folder = Path(args.solutions) if args.solutions is not None else ROOT / "solutions"
        issues = [] if not args.check else [
            line for path in sorted(folder.glob("*.ipynb")) if path.name not in changed
            for line in problems(_read(path), path.name)
        ]
    except (GradingError, rel.ReleaseError, OSError) as exc:
        print(f"labkit grading stamp: error: {_one_line(exc)}", file=sys.stderr)
        return 2
    if args.check:
        for name in changed:
            print(f"not stamped: {name} (run `labkit grading stamp`)", file=sys.stderr)
        for line in issues:
            print(line, file=sys.stderr)
        if not (changed or issues):
            print("every solutions notebook is stamped for nbgrader")
        return 1 if changed or issues else 0
    for name in changed:
        print(f"stamped: {name}")
    print(f"{len(changed)} notebook(s) stamped")
    return 0


def _run_init(args) -> int:
    try:
        report = init(args.course_dir, args.solutions, force=args.force, course_id=args.course_id,
                      assignment=args.assignment, backbone=args.backbone)
    except (GradingError, rel.ReleaseError, OSError) as exc:
        print(f"labkit grading init: error: {_one_line(exc)}", file=sys.stderr)
        return 2
    for line in report.lines():
        print(line)
    print(f"next: cd {args.course_dir} && nbgrader generate_assignment {args.assignment}")
    return 0


def main(argv=None) -> int:
    """``python -m labkit.grading stamp|init ...``."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["grading"]:
        argv = argv[1:]
    p = argparse.ArgumentParser(prog="labkit grading", description="Grade the lab with nbgrader.")
    _add_subcommands(p)
    args = p.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
