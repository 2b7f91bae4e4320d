"""Make the students' notebooks from the instructors' ones: ``labkit release``.

``solutions/NN_name.ipynb`` is the single source (instructors run it; nbval validates it).
``notebooks/NN_name.ipynb`` is what students fill in, generated from it:

* in code cells, the lines from ``### BEGIN SOLUTION`` to ``### END SOLUTION`` become a stub at the
  marker's indentation::

      # YOUR CODE HERE
      raise NotImplementedError("...")

* in markdown cells, the same region becomes ``YOUR ANSWER HERE``;
* outputs and execution counts are cleared; cell metadata (nbval's tags among it) is kept, except the
  volatile timing records Jupyter adds and nbgrader's grading metadata.

The output is deterministic (same bytes every run). Each generated notebook records, in
``metadata.labkit.release_sha256``, the sha256 of its own canonical content without that field; a student
notebook whose content no longer matches it has been edited, and release will not overwrite it (or delete
it, when its solution is gone) unless ``force=True``, which first copies it to
``notebooks/backups/<name>.<timestamp>.ipynb`` and prints that path. Release replaces or removes only the
notebooks it wrote itself, known by ``metadata.labkit.generated_from`` naming a solution of the same file name;
anything else in ``notebooks/`` (a student's ``my_notes.ipynb``, a copy of a released notebook) is never
touched, even with ``force``, and is listed. Every file is written to a temporary file and moved into
place with ``os.replace``, so none is ever half-written; all notebooks are transformed before any is
written, so a bad marker in one leaves every file as it was.

    labkit release [--check] [--force] [--solutions DIR] [--notebooks DIR]
"""

from __future__ import annotations

import argparse
import copy
import hashlib
import os
import re
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from . import lazy_import

nbformat = lazy_import("nbformat")  # loaded when first used: `labkit release --help` stays instant (labkit/cli.py)

ROOT = Path(__file__).resolve().parent.parent
BEGIN = "### BEGIN SOLUTION"
END = "### END SOLUTION"
CODE_STUB = "# YOUR CODE HERE"
STUB_MESSAGE = "replace this line with your solution"
ANSWER_STUB = "YOUR ANSWER HERE"
BACKUP_DIR = "backups"  # a visible folder in notebooks/: JupyterLab hides dot folders
META_KEY = "labkit"
HASH_KEY = "release_sha256"
# Cell metadata that records when and how long a cell ran: noise in a fresh student notebook.
VOLATILE_CELL_METADATA = ("execution", "ExecuteTime", "collapsed", "scrolled")
# nbgrader's cell metadata (see labkit/grading.py): for the instructor's grading, not for students.
GRADING_CELL_METADATA = ("nbgrader",)

_BEGIN_RE = re.compile(r"^([ \t]*)" + re.escape(BEGIN) + r"[ \t]*$")
_END_RE = re.compile(r"^[ \t]*" + re.escape(END) + r"[ \t]*$")


class ReleaseError(ValueError):
    """A solutions notebook cannot be released, or a directory is missing; the message is one line."""


# ----------------------------------------------------------------------------------------------------
# Transforming one notebook


def _replace_regions(source: str, stub, where: str) -> tuple[str, int]:
    """``source`` with each solution region replaced by ``stub(indent)``; and how many regions there were."""
    out, inside, n = [], False, 0
    lines = source.splitlines()
    for lineno, line in enumerate(lines, start=1):
        begin, end = _BEGIN_RE.match(line), _END_RE.match(line)
        if begin:
            if inside:
                raise ReleaseError(f"{where}, line {lineno}: {BEGIN} inside another solution region: close the first with {END}")
            inside, n = True, n + 1
            out.extend(stub(begin.group(1)))
        elif end:
            if not inside:
                raise ReleaseError(f"{where}, line {lineno}: {END} without a {BEGIN} before it")
            inside = False
        elif not inside:
            out.append(line)
    if inside:
        raise ReleaseError(f"{where}: {BEGIN} is never closed: add a {END} line")
    text = "\n".join(out)
    if source.endswith("\n") and out:
        text += "\n"
    return text, n


def _code_stub(indent: str) -> list[str]:
    return [f"{indent}{CODE_STUB}", f'{indent}raise NotImplementedError("{STUB_MESSAGE}")']


def _answer_stub(indent: str) -> list[str]:
    return [f"{indent}{ANSWER_STUB}"]


def _canonical(nb) -> str:
    """The notebook as nbformat writes it, plus a final newline (as Jupyter saves it)."""
    return nbformat.writes(nb, version=4) + "\n"


def content_sha256(nb) -> str:
    """sha256 of the notebook's canonical content without the release hash itself."""
    nb = copy.deepcopy(nb)
    meta = nb.metadata.get(META_KEY)
    if isinstance(meta, dict):
        meta.pop(HASH_KEY, None)
    return hashlib.sha256(_canonical(nb).encode("utf-8")).hexdigest()


def student_notebook(solution, name: str):
    """The student version of a solutions notebook (an nbformat node; the input is not modified).

    ``name`` is the notebook's file name, recorded in the metadata and used in error messages.
    """
    nb = copy.deepcopy(solution)
    regions = 0
    for index, cell in enumerate(nb.cells):
        where = f"solutions/{name}, cell {index}"
        if cell.cell_type == "code":
            cell.source, n = _replace_regions(cell.source, _code_stub, where)
            cell.outputs = []
            cell.execution_count = None
        elif cell.cell_type == "markdown":
            cell.source, n = _replace_regions(cell.source, _answer_stub, where)
        else:
            n = 0
        regions += n
        for key in VOLATILE_CELL_METADATA + GRADING_CELL_METADATA:
            cell.metadata.pop(key, None)
        if nb.nbformat_minor >= 5 and not cell.get("id"):
            # nbformat would invent a random id on write; derive one so the output stays deterministic.
            cell["id"] = hashlib.sha256(f"{name}:{index}".encode()).hexdigest()[:8]
    nb.metadata.pop("widgets", None)  # widget state from the instructors' run
    nb.metadata[META_KEY] = {"generated_from": f"solutions/{name}", "solution_regions": regions}
    nb.metadata[META_KEY][HASH_KEY] = content_sha256(nb)
    try:
        nbformat.validate(nb)
    except nbformat.ValidationError as exc:
        raise ReleaseError(f"solutions/{name}: the student notebook would not be valid ({exc.message})") from None
    return nb


def render(solution_path: Path) -> str:
    """The exact text release writes for one solutions notebook."""
    try:
        solution = nbformat.read(str(solution_path), as_version=4)
    except Exception as exc:  # nbformat raises several kinds for unreadable JSON
        raise ReleaseError(f"cannot read {solution_path} as a notebook ({type(exc).__name__}): fix or remove it") from None
    return _canonical(student_notebook(solution, solution_path.name))


# ----------------------------------------------------------------------------------------------------
# Files


def provenance(path: Path) -> tuple[bool, bool]:
    """``(ours, edited)`` for a file in the notebooks folder.

    ``ours``: release wrote it, under this very name (``metadata.labkit.generated_from`` names a solutions
    notebook of the same file name, and the release hash is there). A copy a student made of a released
    notebook (``02_occlusion-Copy1.ipynb``), their own notebook, or a file that cannot be read is not ours.
    ``edited``: its content no longer matches the hash release stored (always True for a file not ours).
    """
    try:
        nb = nbformat.read(str(path), as_version=4)
    except Exception:
        return False, True
    meta = nb.metadata.get(META_KEY)
    if not isinstance(meta, dict) or not isinstance(meta.get("generated_from"), str) or HASH_KEY not in meta:
        return False, True
    if Path(meta["generated_from"]).name != path.name:
        return False, True
    return True, meta[HASH_KEY] != content_sha256(nb)


def edited(path: Path) -> bool:
    """True when a student notebook's content no longer matches the hash release stored in it.

    A notebook release did not write (no hash), or one that cannot be read, counts as edited: it may be work.
    """
    return provenance(path)[1]


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_atomic(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so that ``path`` holds either its old content or all of the new, never part."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; give the file the usual permissions
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def backup(path: Path) -> Path:
    """Copy a student notebook to ``<its folder>/backups/<name>.<UTC timestamp>.ipynb`` (never overwriting one).

    ``backups/`` is an ordinary folder, visible in JupyterLab's file browser next to the notebooks.
    """
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    folder = path.parent / BACKUP_DIR
    dest = folder / f"{path.stem}.{stamp}{path.suffix}"
    n = 1
    while dest.exists():
        dest = folder / f"{path.stem}.{stamp}-{n}{path.suffix}"
        n += 1
    write_atomic(dest, path.read_bytes())
    return dest


# ----------------------------------------------------------------------------------------------------
# Release


@dataclass
class Report:
    """What release did (or, with check, what it would do). Names are file names within the notebooks folder."""

    check: bool
    notebooks_dir: Path = Path("notebooks")
    written: list = field(default_factory=list)  # created or updated
    unchanged: list = field(default_factory=list)
    removed: list = field(default_factory=list)  # written by release, solution gone, not edited (or --force)
    backups: list = field(default_factory=list)  # Paths of the copies kept before replacing or removing
    missing: list = field(default_factory=list)  # check: not generated yet
    stale: list = field(default_factory=list)  # check: differ from what release would write
    refused: list = field(default_factory=list)  # written by release, edited since: needs --force
    extra: list = field(default_factory=list)  # written by release, its solution gone (release: edited, kept)
    not_ours: list = field(default_factory=list)  # a solution's name, but release did not write the file: never touched
    left_alone: list = field(default_factory=list)  # no solution of that name, not written by release: never touched

    @property
    def ok(self) -> bool:
        if self.check:
            return not (self.missing or self.stale or self.extra or self.not_ours)
        return not (self.refused or self.extra or self.not_ours)

    @property
    def exit_code(self) -> int:
        return 0 if self.ok else 1

    def lines(self) -> list[str]:
        backups = self.notebooks_dir / BACKUP_DIR
        force = f"`labkit release --force` {{}} it after a backup to {backups}/"
        not_ours = [f"not ours: {n} was not written by labkit release, so release leaves it alone: move or rename it, "
                    "then run `labkit release` to get the new version" for n in self.not_ours]
        left = [f"left alone: {n} (not written by labkit release)" for n in self.left_alone]
        out = []
        if self.check:
            out += [f"missing: {n} (run `labkit release`)" for n in self.missing]
            for n in self.stale:
                if n in self.refused:
                    out.append(f"stale: {n} was edited since release wrote it; `labkit release` will refuse it; " + force.format("replaces"))
                else:
                    out.append(f"stale: {n} (run `labkit release`)")
            for n in self.extra:
                if n in self.refused:
                    out.append(f"extra: {n} has no solutions notebook and was edited since release wrote it; " + force.format("removes"))
                else:
                    out.append(f"extra: {n} has no solutions notebook (run `labkit release`: it removes it)")
            out += not_ours + left
            if self.ok:
                out.append(f"up to date: {len(self.unchanged)} student notebook(s)")
            return out
        out += [f"wrote: {n}" for n in self.written]
        out += [f"removed: {n} (its solutions notebook is gone)" for n in self.removed]
        out += [f"backup: {p} (the edited version, kept before release replaced or removed it)" for p in self.backups]
        out += [f"refused: {n} was edited since it was generated; " + force.format("replaces") for n in self.refused]
        out += [f"extra: {n} has no solutions notebook and was edited since release wrote it; left alone ("
                + force.format("removes") + ")" for n in self.extra]
        out += not_ours + left
        out.append(f"{len(self.written)} written, {len(self.unchanged)} unchanged, {len(self.removed)} removed")
        return out


def release(solutions_dir=None, notebooks_dir=None, force: bool = False, check: bool = False) -> Report:
    """Write ``notebooks/<name>`` for every ``solutions/*.ipynb``; with ``check``, write nothing and report.

    Release replaces or removes only notebooks it wrote itself (see ``provenance``): an edited one only with
    ``force``, after a backup to ``notebooks/backups/``; a notebook it did not write is never touched, even
    with ``force``, and is listed. Notebooks it wrote whose solution is gone are removed.
    """
    solutions_dir = Path(solutions_dir) if solutions_dir is not None else ROOT / "solutions"
    notebooks_dir = Path(notebooks_dir) if notebooks_dir is not None else ROOT / "notebooks"
    if not solutions_dir.is_dir():
        raise ReleaseError(f"no solutions folder at {solutions_dir}: pass --solutions DIR")
    if notebooks_dir.exists() and not notebooks_dir.is_dir():
        raise ReleaseError(f"{notebooks_dir} is not a folder: pass --notebooks DIR")

    # Transform everything first: a broken solutions notebook stops the release before any file changes.
    wanted = {p.name: render(p).encode("utf-8") for p in sorted(solutions_dir.glob("*.ipynb"))}
    present = sorted(p.name for p in notebooks_dir.glob("*.ipynb")) if notebooks_dir.is_dir() else []
    report = Report(check=check, notebooks_dir=notebooks_dir)

    for name, data in wanted.items():
        target = notebooks_dir / name
        if not target.exists():
            if check:
                report.missing.append(name)
            else:
                write_atomic(target, data)
                report.written.append(name)
            continue
        if target.read_bytes() == data:
            report.unchanged.append(name)
            continue
        ours, hand_edited = provenance(target)
        if not ours:
            report.not_ours.append(name)
            continue
        if check:
            report.stale.append(name)
            if hand_edited:
                report.refused.append(name)
            continue
        if hand_edited:
            if not force:
                report.refused.append(name)
                continue
            report.backups.append(backup(target))
        write_atomic(target, data)
        report.written.append(name)

    for name in present:
        if name in wanted:
            continue
        target = notebooks_dir / name
        ours, hand_edited = provenance(target)
        if not ours:
            report.left_alone.append(name)
        elif check:
            report.extra.append(name)
            if hand_edited:
                report.refused.append(name)
        elif not hand_edited or force:
            if hand_edited:
                report.backups.append(backup(target))
            target.unlink()
            report.removed.append(name)
        else:
            report.extra.append(name)
    return report


# ----------------------------------------------------------------------------------------------------
# Command line


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Add ``release`` to the ``labkit`` command's subparsers (it dispatches to ``args.func``)."""
    p = subparsers.add_parser(
        "release",
        help="write the student notebooks (notebooks/) from the instructors' ones (solutions/)",
        description="Write notebooks/<name>.ipynb from each solutions/<name>.ipynb: solution regions stubbed, "
        "outputs cleared. Student notebooks edited since they were generated are left alone unless --force.",
    )
    _add_arguments(p)
    p.set_defaults(func=run)
    return p


def _add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--check", action="store_true", help="write nothing; exit 1 if any student notebook is missing, stale or extra")
    p.add_argument("--force", action="store_true", help="also replace (or remove) notebooks release wrote that were edited since; a backup goes to notebooks/backups/ first. Files release did not write are never touched")
    p.add_argument("--solutions", type=Path, default=None, help=f"solutions folder (default {ROOT / 'solutions'})")
    p.add_argument("--notebooks", type=Path, default=None, help=f"student notebooks folder (default {ROOT / 'notebooks'})")


def run(args) -> int:
    """Run ``labkit release`` from parsed arguments; the exit code (0 ok, 1 something to do, 2 error)."""
    try:
        report = release(args.solutions, args.notebooks, force=args.force, check=args.check)
    except (ReleaseError, OSError) as exc:
        print(f"labkit release: error: {_one_line(exc)}", file=sys.stderr)
        return 2
    stream = sys.stdout if report.ok else sys.stderr
    for line in report.lines():
        print(line, file=stream)
    return report.exit_code


def _one_line(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    return " ".join(text.split())


def main(argv=None) -> int:
    """``labkit release`` on its own: ``python -m labkit.release [--check] [--force] ...``."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["release"]:
        argv = argv[1:]
    p = argparse.ArgumentParser(prog="labkit release", description="Write the student notebooks from the solutions notebooks.")
    _add_arguments(p)
    return run(p.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
