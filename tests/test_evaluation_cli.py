"""`labkit evaluate`: the accuracy, the table of metrics, and one line for a bad --n."""

import re
import subprocess
import sys

import pytest


def labkit(*args):
    return subprocess.run([sys.executable, "-m", "labkit.cli", *args], capture_output=True, text=True, timeout=600)


@pytest.mark.parametrize("n", ["0", "-3"])
def test_evaluate_refuses_a_non_positive_n_in_one_line(n):
    """It used to print `accuracy: nan` and exit 0."""
    for extra in ([], ["--methods", "all"]):
        r = labkit("evaluate", "minivgg", "--n", n, *extra)
        assert r.returncode == 2, r.stdout
        assert "accuracy" not in r.stdout
        assert r.stderr.strip() == f"labkit evaluate: error: --n must be a positive number of test images, got {n}"


def test_evaluate_methods_prints_the_table_of_methods_and_baselines():
    r = labkit("evaluate", "minivgg", "--methods", "gradcam", "saliency", "--n", "3", "--steps", "4")
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    header = next(l for l in lines if "pointing" in l).split()
    assert header == ["pointing", "deletion", "insertion", "rand_fc1", "rand_conv"]
    rows = {l.split()[0]: l.split()[1:] for l in lines if l.split() and l.split()[0] in
            ("gradcam", "saliency", "random", "centre", "edges")}
    assert set(rows) == {"gradcam", "saliency", "random", "centre", "edges"}
    for name, values in rows.items():
        assert len(values) == 5 and all(re.fullmatch(r"-?\d\.\d{3}", v) for v in values), (name, values)
    # a baseline knows nothing of the model: randomising the model leaves it as it was
    assert rows["edges"][3] == rows["edges"][4] == "1.000"


def test_evaluate_the_spurious_variant_with_and_without_its_tag():
    """minivgg_spurious looks good with the tag as in training; the same images without it tell the truth."""
    r = labkit("evaluate", "minivgg_spurious", "--n", "60")
    assert r.returncode == 0, r.stderr
    accs = dict(re.findall(r"accuracy with the tag (as in training|removed|on every image)\b.*?:\s+(\d\.\d{4})", r.stdout))
    assert set(accs) == {"as in training", "removed", "on every image"}, r.stdout
    assert float(accs["as in training"]) > float(accs["removed"])


def test_evaluate_knows_the_variants_in_data():
    r = labkit("evaluate", "--help")
    assert r.returncode == 0
    for name in ("minivgg_spurious", "minivgg_randlabels"):
        assert name in r.stdout
