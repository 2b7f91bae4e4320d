"""Train the embedded ``minivgg`` backbone on the procedural shapes dataset and write it to ``data/``.

    python -m labkit.train            # or: make weights

Deterministic for a seed and a thread count (the metadata records both). A VGG-shaped net without batch
norm can stall at chance with dead ReLUs; learning-rate warm-up makes that rare, and the run checks the
validation accuracy after the first epoch and restarts from a fresh initialisation if it is still at chance
(at most ``--attempts`` times, then it fails loudly).

Deep supervision for the maps: during training a second, auxiliary output — global average pooling of
``block5_conv3`` and a Dense softmax (the CAM architecture) — is trained with the VGG top, and dropped
when the weights are saved. Its loss makes every position of the last conv maps carry class evidence
where the object is; without it the VGG top (which flattens, so it sees positions) let the maps peak at
object edges and corners, and Grad-CAM's and CAM's maxima fell on the object for 0.44 of the test
images, against 0.84 and 0.88 with it, and 0.94 for both once the ring's hole was narrowed too
(``labkit.data.RING_HOLE``; bench/pointing.py, 3 px tolerance), at about the same accuracy.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

from . import data as lkdata
from . import models

import keras  # noqa: E402  (labkit pins the backend first)
import numpy as np  # noqa: E402
import torch  # noqa: E402

TRAIN_SEED_BASE = 10_000  # training images use dataset seed TRAIN_SEED_BASE + seed
VAL_SEED_BASE = 20_000  # validation images use VAL_SEED_BASE + seed; evaluation uses seed 1


class Stalled(RuntimeError):
    pass


AUX_LAYERS = ("cam_gap", "cam_aux")  # the auxiliary head's layers: training only, never saved


def with_cam_aux(model: keras.Model) -> keras.Model:
    """The training model: ``model``'s output plus GAP(block5_conv3) -> Dense softmax, sharing every layer."""
    from keras import layers

    maps = model.get_layer("block5_conv3").output
    pooled = layers.GlobalAveragePooling2D(name=AUX_LAYERS[0])(maps)
    aux = layers.Dense(model.outputs[0].shape[-1], activation="softmax", name=AUX_LAYERS[1])(pooled)
    return keras.Model(model.inputs, [model.outputs[0], aux], name=f"{model.name}_with_cam_aux")


class _Augmented(keras.utils.PyDataset):
    """Batches of a fixed training pool, each image under a random flip / quarter turn (labels are invariant).

    ``outputs`` > 1 repeats the labels once per model output.
    """

    def __init__(self, x, y, batch_size, seed, outputs=1):
        super().__init__()
        self.x, self.y, self.batch_size, self.seed, self.outputs = x, y, batch_size, seed, outputs
        self.epoch = 0
        self._order()

    def _order(self):
        self.perm = np.random.default_rng([self.seed, self.epoch]).permutation(len(self.x))

    def __len__(self):
        return len(self.x) // self.batch_size

    def __getitem__(self, i):
        idx = self.perm[i * self.batch_size : (i + 1) * self.batch_size]
        rng = np.random.default_rng([self.seed, self.epoch, i])
        xb = self.x[idx].copy()
        for k in range(len(xb)):
            xb[k] = np.rot90(xb[k], rng.integers(4))
            if rng.random() < 0.5:
                xb[k] = xb[k][:, ::-1]
        y = self.y[idx]
        return models._minivgg_preprocess(xb.astype(np.float32)), (y,) * self.outputs if self.outputs > 1 else y

    def on_epoch_end(self):
        self.epoch += 1
        self._order()


class _StallGuard(keras.callbacks.Callback):
    def __init__(self, threshold):
        super().__init__()
        self.threshold = threshold

    def on_epoch_end(self, epoch, logs=None):
        logs = logs or {}
        acc = logs.get("val_predictions_accuracy", logs.get("val_accuracy", 1.0))
        print(f"epoch {epoch + 1}: val_accuracy {acc:.4f}", flush=True)
        if epoch == 0 and acc < self.threshold:
            raise Stalled(f"validation accuracy {acc:.3f} after one epoch: stuck at chance")


def train(seed=0, n_train=16000, n_val=1000, epochs=10, batch_size=64, lr=1e-3, warmup=300, attempts=3, verbose=1,
          stall_margin=0.15, aux_weight=1.0):
    """Train minivgg; return (model, info dict). Raises Stalled if every attempt stalls.

    An attempt has stalled when its validation accuracy after the first epoch is below chance + ``stall_margin``.
    ``aux_weight`` weighs the auxiliary GAP head's loss (module docstring); 0 trains the VGG top alone.
    The returned model is the plain minivgg, without the auxiliary head.
    """
    torch.set_num_threads(min(2, os.cpu_count() or 1))
    train_set = lkdata.make_shapes(n_train, seed=TRAIN_SEED_BASE + seed, progress=verbose > 0)
    val_set = lkdata.make_shapes(n_val, seed=VAL_SEED_BASE + seed)
    x_val = models._minivgg_preprocess(val_set.images.astype(np.float32))
    chance = 1.0 / len(lkdata.CLASSES)
    for attempt in range(attempts):
        keras.utils.set_random_seed(seed * 1000 + attempt)
        model = models.build_minivgg()
        trained = with_cam_aux(model) if aux_weight > 0 else model
        outputs = len(trained.outputs)
        steps = epochs * (n_train // batch_size)
        schedule = keras.optimizers.schedules.CosineDecay(
            0.0, decay_steps=max(steps - warmup, 1), warmup_target=lr, warmup_steps=warmup
        )
        losses = ["sparse_categorical_crossentropy"] * outputs
        trained.compile(keras.optimizers.Adam(schedule), losses, loss_weights=[1.0, aux_weight][:outputs],
                        metrics=[["accuracy"]] * outputs)
        y_val = (val_set.labels,) * outputs if outputs > 1 else val_set.labels
        t0 = time.time()
        try:
            trained.fit(
                _Augmented(train_set.images, train_set.labels, batch_size, seed * 1000 + attempt, outputs),
                validation_data=(x_val, y_val),
                epochs=epochs,
                callbacks=[_StallGuard(chance + stall_margin)],
                verbose=2 if verbose else 0,
            )
        except Stalled as exc:
            print(f"attempt {attempt + 1}/{attempts}: {exc}; restarting from a fresh initialisation", flush=True)
            continue
        info = dict(seed=seed, attempt=attempt + 1, train_seconds=round(time.time() - t0, 1), epochs=epochs,
                    n_train=n_train, batch_size=batch_size, lr=lr, warmup_steps=warmup,
                    aux_weight=aux_weight, torch_threads=torch.get_num_threads())
        return model, info
    raise Stalled(f"minivgg stalled at chance in all {attempts} attempts: try another --seed")


def save(model, info, out_dir: Path, test_n=2000, test_seed=1, min_accuracy=0.0) -> dict:
    """Write weights (no optimiser state) and metadata atomically; return the metadata.

    Below ``min_accuracy`` on fresh test images nothing is written and RuntimeError is raised.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    clean = models.build_minivgg()  # an uncompiled twin, so save_weights stores no optimiser state
    for layer in clean.layers:  # by name: a training model with the auxiliary head has more layers
        if layer.weights:
            layer.set_weights(model.get_layer(layer.name).get_weights())
    with tempfile.TemporaryDirectory(dir=out_dir) as tmp:
        tmp_weights = Path(tmp) / models.MINIVGG_WEIGHTS
        clean.save_weights(tmp_weights)
        acc = models.evaluate(models.minivgg_backbone(clean), n=test_n, seed=test_seed, progress=False)
        meta = dict(
            name="minivgg", classes=list(lkdata.CLASSES), input_size=lkdata.IMAGE_SIZE,
            widths=list(models.MINIVGG_WIDTHS), fc=models.MINIVGG_FC, preprocess="x / 127.5 - 1 (RGB)",
            sha256=models.sha256_of(tmp_weights), test_accuracy=round(acc, 4), test_n=test_n, test_seed=test_seed,
            keras=keras.__version__, torch=torch.__version__, **info,
        )
        if acc < min_accuracy:
            raise RuntimeError(f"test accuracy {acc:.4f} is below {min_accuracy}: nothing written")
        tmp_meta = Path(tmp) / models.MINIVGG_META
        tmp_meta.write_text(json.dumps(meta, indent=2) + "\n")
        os.replace(tmp_weights, out_dir / models.MINIVGG_WEIGHTS)
        os.replace(tmp_meta, out_dir / models.MINIVGG_META)
    return meta


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m labkit.train", description=__doc__.splitlines()[0])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--n-train", type=int, default=16000)
    p.add_argument("--aux-weight", type=float, default=1.0, help="weight of the auxiliary GAP head's loss (0: none)")
    p.add_argument("--out", type=Path, default=models.DATA_DIR, help="folder for the weights and metadata")
    p.add_argument("--min-accuracy", type=float, default=0.97, help="fail (and write nothing) below this")
    a = p.parse_args(argv)
    model, info = train(seed=a.seed, n_train=a.n_train, epochs=a.epochs, aux_weight=a.aux_weight)
    meta = save(model, info, a.out, min_accuracy=a.min_accuracy)
    print(json.dumps(meta, indent=2))
    print(f"test accuracy on {meta['test_n']} fresh images: {meta['test_accuracy']:.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
