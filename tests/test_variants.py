"""minivgg's variants (stages 08 and 09): each ships in data/ with its metadata, loads by name, sha256 checked."""

import json
import shutil

import numpy as np
import pytest

from labkit import cli, data, models

SHIPPED = ("minivgg_plain", "minivgg_spurious", "minivgg_randlabels")


def test_the_shipped_variants_are_found():
    assert set(SHIPPED) <= set(models.variants())


@pytest.mark.parametrize("name", sorted(set(SHIPPED) | set(models.variants())))
def test_each_variant_ships_with_its_metadata_and_loads(name):
    meta = json.loads((models.DATA_DIR / f"{name}.json").read_text())
    weights = models.DATA_DIR / f"{name}.weights.h5"
    assert meta["name"] == name and meta["sha256"] == models.sha256_of(weights)
    assert weights.stat().st_size <= 4 * 2**20
    for field in ("seed", "n_train", "epochs", "torch_threads", "train_seconds", "test_accuracy", "test_n", "test_seed"):
        assert field in meta, field
    backbone = models.load(name)
    assert backbone.name == name and backbone.class_names == data.CLASSES
    assert backbone.model.get_layer("block5_conv3").kernel.shape == (3, 3, 128, 128)
    # Each variant is a different network from minivgg.
    base = models.load("minivgg").model.get_layer("fc1").get_weights()[0]
    assert not np.array_equal(backbone.model.get_layer("fc1").get_weights()[0], base)


def test_variant_metadata_says_what_it_was_trained_on():
    spurious = models.minivgg_metadata("minivgg_spurious")
    assert spurious["cue"]["cue_class"] in data.CLASSES and spurious["aux_weight"] == 1.0
    assert spurious["test_accuracy"] == spurious["test_accuracy_cue_train"] > spurious["test_accuracy_cue_none"]
    plain, minivgg = models.minivgg_metadata("minivgg_plain"), models.minivgg_metadata("minivgg")
    assert plain["aux_weight"] == 0.0 and minivgg["aux_weight"] > 0  # the one difference in the recipe
    assert plain["train_seconds"] <= 15 * 60 and plain["test_accuracy"] >= 0.97
    rand = models.minivgg_metadata("minivgg_randlabels")
    assert rand["permute_labels"] and rand["train_accuracy"] >= 0.95 and rand["test_accuracy"] < 0.35


def test_a_corrupt_variant_is_named(tmp_path, monkeypatch):
    for suffix in (".json", ".weights.h5"):
        shutil.copy(models.DATA_DIR / f"minivgg_randlabels{suffix}", tmp_path / f"minivgg_randlabels{suffix}")
    with open(tmp_path / "minivgg_randlabels.weights.h5", "r+b") as f:
        f.seek(-100, 2)
        f.write(b"\0" * 100)
    monkeypatch.setattr(models, "DATA_DIR", tmp_path)
    with pytest.raises(models.WeightsError, match="minivgg_randlabels.weights.h5 does not match the sha256 in minivgg_randlabels.json"):
        models.load("minivgg_randlabels")


def test_a_missing_variant_weights_file_says_how_to_train_it(tmp_path, monkeypatch):
    shutil.copy(models.DATA_DIR / "minivgg_randlabels.json", tmp_path / "minivgg_randlabels.json")
    monkeypatch.setattr(models, "DATA_DIR", tmp_path)
    with pytest.raises(models.WeightsError, match="python -m labkit.train --variant minivgg_randlabels"):
        models.load("minivgg_randlabels")
    assert "missing (run `python -m labkit.train --variant minivgg_randlabels`)" == models.backbone_state("minivgg_randlabels")


def test_unknown_name_lists_the_variants():
    with pytest.raises(ValueError, match="minivgg_spurious"):
        models.load("minivgg_nosuch")


def test_info_lists_the_variants(capsys):
    assert cli.main(["info"]) == 0
    out = capsys.readouterr().out
    for name in models.variants():
        assert f"{name} bundled" in " ".join(out.split())
