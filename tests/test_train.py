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
