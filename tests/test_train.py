"""The minivgg training script: deterministic for a seed, loud when it stalls, atomic when it saves."""

import json

import numpy as np
import pytest

from labkit import models, train

TINY = dict(n_train=128, n_val=64, epochs=1, batch_size=32, warmup=2, verbose=0)


def test_same_seed_same_weights():
    a, _ = train.train(seed=3, stall_margin=-1, **TINY)
    b, _ = train.train(seed=3, stall_margin=-1, **TINY)
    c, _ = train.train(seed=4, stall_margin=-1, **TINY)
    wa, wb, wc = a.get_weights(), b.get_weights(), c.get_weights()
    assert all(np.array_equal(x, y) for x, y in zip(wa, wb))  # bit-identical
    assert not all(np.array_equal(x, y) for x, y in zip(wa, wc))


def test_a_run_stuck_at_chance_fails_loudly(capsys):
    # With a learning rate of 0 nothing is learnt: every attempt must be detected as stalled.
    with pytest.raises(train.Stalled, match="stalled at chance in all 2 attempts"):
        train.train(seed=0, lr=0.0, attempts=2, **TINY)
    assert capsys.readouterr().out.count("restarting from a fresh initialisation") == 2


def test_save_writes_nothing_below_min_accuracy(tmp_path):
    model, info = train.train(seed=1, stall_margin=-1, **TINY)
    with pytest.raises(RuntimeError, match="nothing written"):
        train.save(model, info, tmp_path, test_n=32, min_accuracy=0.99)
    assert list(tmp_path.iterdir()) == []
    meta = train.save(model, info, tmp_path, test_n=32)
    assert sorted(p.name for p in tmp_path.iterdir()) == [models.MINIVGG_META, models.MINIVGG_WEIGHTS]
    assert json.loads((tmp_path / models.MINIVGG_META).read_text())["sha256"] == meta["sha256"]
    assert meta["sha256"] == models.sha256_of(tmp_path / models.MINIVGG_WEIGHTS)
    # Weights only, no optimiser state: the file holds exactly the model's parameters (float32) plus h5 overhead.
    n_params = models.build_minivgg().count_params()
    assert (tmp_path / models.MINIVGG_WEIGHTS).stat().st_size < 4 * n_params * 1.2


def test_the_auxiliary_cam_head_trains_the_trunk_and_is_not_saved(tmp_path):
    plain, _ = train.train(seed=2, stall_margin=-1, aux_weight=0.0, **TINY)
    aux, info = train.train(seed=2, stall_margin=-1, aux_weight=1.0, **TINY)
    assert info["aux_weight"] == 1.0
    # The returned model is minivgg itself: same layers, no auxiliary output...
    assert [layer.name for layer in aux.layers] == [layer.name for layer in plain.layers]
    assert not set(train.AUX_LAYERS) & {layer.name for layer in aux.layers} and len(aux.outputs) == 1
    # ...whose trunk the auxiliary loss changed (same seed, same data: only the loss differs).
    conv = lambda m: m.get_layer("block5_conv3").get_weights()[0]  # noqa: E731
    assert not np.array_equal(conv(aux), conv(plain))
    train.save(aux, info, tmp_path, test_n=32)
    loaded = models.build_minivgg()
    loaded.load_weights(tmp_path / models.MINIVGG_WEIGHTS)
    assert all(np.array_equal(x, y) for x, y in zip(loaded.get_weights(), aux.get_weights()))


def test_the_training_model_shares_minivgg_layers():
    base = models.build_minivgg()
    both = train.with_cam_aux(base)
    assert [o.shape[-1] for o in both.outputs] == [6, 6]
    assert both.get_layer("block5_conv3") is base.get_layer("block5_conv3")
    assert both.get_layer(train.AUX_LAYERS[1]).kernel.shape == (128, 6)  # GAP of block5_conv3's 128 maps


# ----------------------------------------------------------------------------------------------------
# The variants (stages 08 and 09): the same code with other data, heads and stopping rules

CUE = dict(cue="train", cue_class="circle", p_class=0.95, p_other=0.02)


def test_variant_data_adds_the_tag_or_permutes_the_labels_deterministically():
    x, y = train.make_data(64, 7)
    xc, yc = train.make_data(64, 7, cue=CUE)
    cued = (xc != x).any(axis=(1, 2, 3))
    assert np.array_equal(y, yc) and cued.any() and not cued.all()
    assert cued[y == 0].mean() > 0.5 and cued[y != 0].mean() < 0.2  # circles carry the tag
    xp, yp = train.make_data(64, 7, permute_labels=True)
    assert np.array_equal(xp, x) and not np.array_equal(yp, y)
    assert np.array_equal(np.bincount(yp, minlength=6), np.bincount(y, minlength=6))  # a permutation of the labels
    assert np.array_equal(train.make_data(64, 7, permute_labels=True)[1], yp)


def test_without_augmentation_batches_are_the_images_as_they_are():
    x = np.random.default_rng(0).integers(0, 256, (8, 96, 96, 3)).astype(np.uint8)
    y = np.arange(8)
    plain = train._Augmented(x, y, 8, seed=0, augment=False)
    xb, yb = plain[0]
    assert np.allclose(xb, models._minivgg_preprocess(x[plain.perm].astype(np.float32)))
    assert np.array_equal(yb, y[plain.perm])
    xa, _ = train._Augmented(x, y, 8, seed=0)[0]
    assert not np.allclose(xa, xb)  # with augmentation some image is flipped or turned


def test_random_labels_watch_the_training_accuracy_stop_when_fitted_and_record_it(capsys):
    with pytest.raises(train.Stalled, match="stalled at chance"):
        train.train(seed=0, lr=0.0, attempts=1, permute_labels=True, augment=False, **TINY)
    assert "train accuracy" in capsys.readouterr().out  # not the validation accuracy, at chance by design
    # fit_until=0 stops after the first epoch, whatever the accuracy
    _, info = train.train(seed=0, permute_labels=True, augment=False, fit_until=0.0, stall_margin=-1,
                          **dict(TINY, epochs=5))
    assert info["epochs"] == 1 and info["permute_labels"] and not info["augment"]
    assert 0.0 <= info["train_accuracy"] <= 1.0


def test_save_names_the_files_after_the_variant_and_reports_the_tag(tmp_path):
    model, info = train.train(seed=1, stall_margin=-1, cue=CUE, **TINY)
    meta = train.save(model, info, tmp_path, test_n=24, name="minivgg_spurious")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["minivgg_spurious.json", "minivgg_spurious.weights.h5"]
    assert meta["name"] == "minivgg_spurious" and meta["cue"] == CUE
    assert meta["test_accuracy"] == meta["test_accuracy_cue_train"]
    assert {"test_accuracy_cue_none", "test_accuracy_cue_all"} <= set(meta)
    rand, rinfo = train.train(seed=1, stall_margin=-1, permute_labels=True, augment=False, **TINY)
    with pytest.raises(RuntimeError, match="nothing written"):  # random labels: the threshold is on the fit
        train.save(rand, dict(rinfo, train_accuracy=0.5), tmp_path / "r", test_n=8, min_accuracy=0.95)
    assert not (tmp_path / "r").exists() or list((tmp_path / "r").iterdir()) == []


def test_every_variant_is_a_valid_recipe():
    import inspect

    params = inspect.signature(train.train).parameters
    for name, (kwargs, min_accuracy) in train.VARIANTS.items():
        assert set(kwargs) <= set(params), name
        assert 0 < min_accuracy <= 1
    assert train.VARIANTS["minivgg"] == ({}, 0.97)  # minivgg's own recipe is the defaults
