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
