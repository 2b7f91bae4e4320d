"""environment.yml (conda) and pyproject.toml (pip) declare the same dependencies."""

import tomllib
from pathlib import Path

import yaml
from packaging.requirements import Requirement

REPO = Path(__file__).resolve().parent.parent
CONDA_ONLY = {"tensorflow"}  # the course's environment has it; labkit works with or without it


def _pyproject():
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    reqs = project["dependencies"] + [r for extra in project["optional-dependencies"].values() for r in extra]
    return {Requirement(r).name.lower(): Requirement(r).specifier for r in reqs}


def _conda():
    env = yaml.safe_load((REPO / "environment.yml").read_text())
    pip = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict))
    reqs = [r for r in pip if not r.startswith("-e")]
    assert any(r.strip() == "-e ." for r in pip), "environment.yml must install labkit itself (-e .)"
    assert "python=3.11" in env["dependencies"]
    return {Requirement(r).name.lower(): Requirement(r).specifier for r in reqs}


def test_same_packages_and_versions():
    pip, conda = _pyproject(), _conda()
    assert set(conda) - CONDA_ONLY == set(pip), "add or remove the same packages in both files"
    for name, spec in pip.items():
        assert conda[name] == spec, f"{name}: pyproject says {spec}, environment.yml says {conda[name]}"


def test_ci_calls_make_test():
    assert "make test" in (REPO / ".ci" / "run").read_text()
