"""Train the embedded ``minivgg`` backbone on the procedural shapes dataset and write it to ``data/``.

    python -m labkit.train            # or: make weights
    python -m labkit.train --variant minivgg_spurious     # or minivgg_plain, minivgg_randlabels

The variants (:data:`VARIANTS`) are trained by the same code with other data or heads, for stages 08 and 09:
``minivgg_plain`` is minivgg's recipe without the auxiliary head below; ``minivgg_spurious`` is minivgg's
recipe on shapes where a small tag sits on every image of one class and on no other (``labkit.data.make_cued_shapes``);
``minivgg_randlabels`` fits a small training set with permuted labels (Adebayo et al.'s data randomisation
test), without augmentation so that it can memorise it, until its training accuracy reaches ``fit_until``.

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

    def __init__(self, x, y, batch_size, seed, outputs=1, augment=True):
        super().__init__()
        self.x, self.y, self.batch_size, self.seed, self.outputs = x, y, batch_size, seed, outputs
        self.augment = augment
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
        for k in range(len(xb) if self.augment else 0):
            xb[k] = np.rot90(xb[k], rng.integers(4))
            if rng.random() < 0.5:
                xb[k] = xb[k][:, ::-1]
        y = self.y[idx]
        return models._minivgg_preprocess(xb.astype(np.float32)), (y,) * self.outputs if self.outputs > 1 else y

    def on_epoch_end(self):
        self.epoch += 1
        self._order()


class _StallGuard(keras.callbacks.Callback):
    """Raise Stalled when the watched accuracy is below ``threshold`` after epoch ``at_epoch`` (1-based).

    ``watch`` is "val" (validation accuracy) or "train" (training accuracy: for random labels, where the
    validation accuracy is at chance by design). ``fit_until`` stops training once the training accuracy
    reaches it.
    """

    def __init__(self, threshold, watch="val", at_epoch=1, fit_until=None):
        super().__init__()
        self.threshold, self.watch, self.at_epoch, self.fit_until = threshold, watch, at_epoch, fit_until

    def on_epoch_end(self, epoch, logs=None):
        logs = logs or {}
        val = logs.get("val_predictions_accuracy", logs.get("val_accuracy", 1.0))
        train = logs.get("predictions_accuracy", logs.get("accuracy", 1.0))
        print(f"epoch {epoch + 1}: accuracy {train:.4f} val_accuracy {val:.4f}", flush=True)
        acc = val if self.watch == "val" else train
        if epoch + 1 == self.at_epoch and acc < self.threshold:
            raise Stalled(f"{self.watch} accuracy {acc:.3f} after {self.at_epoch} epoch(s): stuck at chance")
        if self.fit_until is not None and train >= self.fit_until:
            self.model.stop_training = True


def make_data(n, seed, cue=None, permute_labels=False, progress=False):
    """The images a variant trains on: shapes, with the tag as in ``cue`` (a dict of make_cued_shapes's
    arguments) or none, and labels shuffled by a permutation drawn from ``seed`` when ``permute_labels``."""
    if cue:
        shapes = lkdata.make_cued_shapes(n, seed=seed, progress=progress, **cue)
    else:
        shapes = lkdata.make_shapes(n, seed=seed, progress=progress)
    if not permute_labels:
        return shapes.images, shapes.labels
    return shapes.images, np.random.default_rng([seed, 1]).permutation(shapes.labels)


def train(seed=0, n_train=16000, n_val=1000, epochs=10, batch_size=64, lr=1e-3, warmup=300, attempts=3, verbose=1,
          stall_margin=0.15, aux_weight=1.0, cue=None, permute_labels=False, augment=True, fit_until=None,
          stall_epoch=1, threads=2):
    """Train minivgg (or a variant, see :data:`VARIANTS`); return (model, info dict). Raises Stalled if every
    attempt stalls.

    An attempt has stalled when its validation accuracy (its training accuracy with ``permute_labels``) after
    epoch ``stall_epoch`` is below chance + ``stall_margin``. ``aux_weight`` weighs the auxiliary GAP head's
    loss (module docstring); 0 trains the VGG top alone. ``cue`` and ``permute_labels`` change the training
    and validation data (:func:`make_data`); ``augment`` False turns off the random flips and turns;
    ``fit_until`` stops once the training accuracy reaches it. The returned model is the plain minivgg,
    without the auxiliary head.
    """
    torch.set_num_threads(min(threads, os.cpu_count() or 1))
    x_train, y_train = make_data(n_train, TRAIN_SEED_BASE + seed, cue, permute_labels, progress=verbose > 0)
    x_val, y_val1 = make_data(n_val, VAL_SEED_BASE + seed, cue, permute_labels)
    x_val = models._minivgg_preprocess(x_val.astype(np.float32))
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
        y_val = (y_val1,) * outputs if outputs > 1 else y_val1
        batches = _Augmented(x_train, y_train, batch_size, seed * 1000 + attempt, outputs, augment)
        guard = _StallGuard(chance + stall_margin, "train" if permute_labels else "val", stall_epoch, fit_until)
        t0 = time.time()
        try:
            history = trained.fit(batches, validation_data=(x_val, y_val), epochs=epochs, callbacks=[guard],
                                  verbose=2 if verbose else 0)
        except Stalled as exc:
            print(f"attempt {attempt + 1}/{attempts}: {exc}; restarting from a fresh initialisation", flush=True)
            continue
        info = dict(seed=seed, attempt=attempt + 1, train_seconds=round(time.time() - t0, 1),
                    epochs=len(history.epoch), n_train=n_train, batch_size=batch_size, lr=lr, warmup_steps=warmup,
                    aux_weight=aux_weight, torch_threads=torch.get_num_threads())
        if cue or permute_labels or not augment:
            info.update(cue=cue, permute_labels=permute_labels, augment=augment)
        if permute_labels:  # how well it fits what it was trained on, measured without augmentation
            probs = models.minivgg_backbone(model).predict(x_train, batch_size=128)
            info["train_accuracy"] = round(float((probs.argmax(1) == y_train).mean()), 4)
        return model, info
    raise Stalled(f"minivgg stalled at chance in all {attempts} attempts: try another --seed")


def save(model, info, out_dir: Path, test_n=2000, test_seed=1, min_accuracy=0.0, name="minivgg") -> dict:
    """Write ``<name>.weights.h5`` (no optimiser state) and ``<name>.json`` atomically; return the metadata.

    The accuracy is measured on ``test_n`` fresh images (with the tag as in training for a variant trained
    with one, and also without it and on every image). Below ``min_accuracy`` (the training accuracy for
    random labels, where fresh images are at chance by design) nothing is written and RuntimeError is raised.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    clean = models.build_minivgg()  # an uncompiled twin, so save_weights stores no optimiser state
    for layer in clean.layers:  # by name: a training model with the auxiliary head has more layers
        if layer.weights:
            layer.set_weights(model.get_layer(layer.name).get_weights())
    with tempfile.TemporaryDirectory(dir=out_dir) as tmp:
        tmp_weights = Path(tmp) / f"{name}.weights.h5"
        clean.save_weights(tmp_weights)
        backbone = models.minivgg_backbone(clean)
        extra = {}
        if info.get("cue"):
            from . import debugging

            accs = debugging.spurious_accuracy(backbone, n=test_n, seed=test_seed, progress=False, **_cue_args(info))
            acc = accs["train"]
            extra = {f"test_accuracy_cue_{mode}": round(a, 4) for mode, a in accs.items()}
        else:
            acc = models.evaluate(backbone, n=test_n, seed=test_seed, progress=False)
        meta = dict(
            name=name, classes=list(lkdata.CLASSES), input_size=lkdata.IMAGE_SIZE,
            widths=list(models.MINIVGG_WIDTHS), fc=models.MINIVGG_FC, preprocess="x / 127.5 - 1 (RGB)",
            sha256=models.sha256_of(tmp_weights), test_accuracy=round(acc, 4), **extra, test_n=test_n,
            test_seed=test_seed, keras=keras.__version__, torch=torch.__version__, **info,
        )
        fit = info.get("train_accuracy", acc) if info.get("permute_labels") else acc
        if fit < min_accuracy:
            raise RuntimeError(f"accuracy {fit:.4f} is below {min_accuracy}: nothing written")
        tmp_meta = Path(tmp) / f"{name}.json"
        tmp_meta.write_text(json.dumps(meta, indent=2) + "\n")
        os.replace(tmp_weights, out_dir / f"{name}.weights.h5")
        os.replace(tmp_meta, out_dir / f"{name}.json")
    return meta


def _cue_args(info) -> dict:
    """The tag's settings a variant was trained with, as spurious_accuracy's arguments."""
    return {k: v for k, v in info["cue"].items() if k != "cue"}


# name -> train() arguments that differ from minivgg's recipe, and the accuracy below which nothing is written.
# minivgg_plain is minivgg's recipe without the auxiliary head; minivgg_spurious is minivgg's recipe on shapes
# where a tag sits on every image of one class (labkit.data.CUE_P_CLASS) and on no other (CUE_P_OTHER).
VARIANTS = {
    "minivgg": (dict(), 0.97),
    "minivgg_plain": (dict(aux_weight=0.0), 0.97),
    "minivgg_spurious": (dict(cue=dict(cue="train", cue_class=lkdata.CUE_CLASS, p_class=lkdata.CUE_P_CLASS,
                                         p_other=lkdata.CUE_P_OTHER)), 0.9),
    # a training set small enough to memorise in minutes, no augmentation; stall check on the training accuracy
    "minivgg_randlabels": (dict(n_train=256, n_val=64, epochs=300, warmup=50, aux_weight=0.0, permute_labels=True,
                                augment=False, fit_until=0.99, stall_epoch=30, stall_margin=0.05), 0.95),
}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m labkit.train", description=__doc__.splitlines()[0])
    p.add_argument("--variant", default="minivgg", choices=list(VARIANTS),
                   help="which model to train: minivgg or one of its variants (module docstring)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--epochs", type=int, default=None, help="default: the variant's")
    p.add_argument("--n-train", type=int, default=None, help="default: the variant's")
    p.add_argument("--aux-weight", type=float, default=None, help="weight of the auxiliary GAP head's loss (0: none)")
    p.add_argument("--threads", type=int, default=2, help="torch threads (the result is deterministic for seed and threads)")
    p.add_argument("--out", type=Path, default=models.DATA_DIR, help="folder for the weights and metadata")
    p.add_argument("--min-accuracy", type=float, default=None, help="fail (and write nothing) below this")
    a = p.parse_args(argv)
    kwargs, min_accuracy = VARIANTS[a.variant]
    kwargs = dict(kwargs, seed=a.seed, threads=a.threads)
    for key, value in (("epochs", a.epochs), ("n_train", a.n_train), ("aux_weight", a.aux_weight)):
        if value is not None:
            kwargs[key] = value
    model, info = train(**kwargs)
    meta = save(model, info, a.out, name=a.variant,
                min_accuracy=min_accuracy if a.min_accuracy is None else a.min_accuracy)
    print(json.dumps(meta, indent=2))
    print(f"test accuracy on {meta['test_n']} fresh images: {meta['test_accuracy']:.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
