"""Backbones: minivgg's bundled weights, the Backbone object, and the backend guard."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import labkit
from labkit import data, models

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def minivgg():
    return models.load("minivgg")


def test_bundled_weights_match_metadata():
    meta = json.loads((REPO / "data" / models.MINIVGG_META).read_text())
    assert models.sha256_of(REPO / "data" / models.MINIVGG_WEIGHTS) == meta["sha256"]
    assert meta["classes"] == list(data.CLASSES) and meta["input_size"] == data.IMAGE_SIZE
    assert meta["test_accuracy"] >= 0.97
    assert (REPO / "data" / models.MINIVGG_WEIGHTS).stat().st_size <= 8 * 2**20


def test_minivgg_backbone_fields(minivgg):
    assert minivgg.input_size == (96, 96) and minivgg.class_names == data.CLASSES
    assert minivgg.last_conv_layer == "block5_conv3" and minivgg.grey == 0.0
    names = [l.name for l in minivgg.model.layers]
    for expected in ["block1_conv1", "block1_conv2", "block1_pool", "block3_conv3", "block5_pool", "flatten",
                     "fc1", "fc2", "predictions"]:
        assert expected in names
    assert minivgg.model.get_layer("block1_conv1").activation.__name__ == "relu"  # fused, as in Keras' VGG16
    # Frozen: the weights are torch Parameters that need no gradient, so only the input's gradient is taken.
    assert all(not v.value.requires_grad for v in minivgg.model.weights)


def test_grey_is_zero_after_preprocessing(minivgg):
    grey = np.full((1, 96, 96, 3), 127.5, np.float32)
    assert np.allclose(minivgg.preprocess(grey), minivgg.grey)
    vgg = models.load("vgg16", weights=None)
    mean_rgb = models.CAFFE_MEAN_BGR[::-1].copy()
    assert np.allclose(vgg.preprocess(np.broadcast_to(mean_rgb, (1, 224, 224, 3))), vgg.grey, atol=1e-4)


def test_preprocess_roundtrip_numpy_and_torch(minivgg):
    imgs = data.make_shapes(3, seed=2).images
    x = minivgg.preprocess(imgs)
    assert x.dtype == np.float32 and np.array_equal(minivgg.deprocess(x), imgs)
    t = minivgg.preprocess(torch.from_numpy(imgs))
    assert isinstance(t, torch.Tensor) and np.allclose(t.numpy(), x)
    vgg = models.load("vgg16", weights=None)
    img = data.load_image(data.sample_image("chelsea"), 224)
    xv = vgg.preprocess(img)
    assert np.allclose(xv[0, 0, 0], img[0, 0, ::-1] - models.CAFFE_MEAN_BGR)  # BGR, mean subtracted, no scaling
    assert np.array_equal(vgg.deprocess(xv)[0], img)


def test_minivgg_accuracy_on_fresh_images(minivgg):
    acc = models.evaluate(minivgg, n=400, seed=5, progress=False)
    assert acc >= 0.95


def test_wrong_image_shape_is_one_line(minivgg):
    with pytest.raises(ValueError, match=r"takes RGB images of shape \(N, 96, 96, 3\).*load_image"):
        minivgg.predict(np.zeros((2, 64, 64, 3), np.uint8))


def test_unknown_backbone_and_layer(minivgg):
    with pytest.raises(ValueError, match="choose one of minivgg, vgg16"):
        models.load("resnet")
    with pytest.raises(ValueError, match="has no layer 'conv9'.*block1_conv1"):
        minivgg.layer("conv9")


def test_top_k(minivgg):
    s = data.make_shapes(1, seed=11)
    top = minivgg.top_k(s.images[0], k=3)
    assert len(top) == 3 and top[0][1] in data.CLASSES and top[0][2] >= top[1][2] >= top[2][2]


def test_corrupt_bundled_weights_named(tmp_path, monkeypatch):
    meta = json.loads((REPO / "data" / models.MINIVGG_META).read_text())
    (tmp_path / models.MINIVGG_META).write_text(json.dumps(meta))
    (tmp_path / models.MINIVGG_WEIGHTS).write_bytes(b"version https://git-lfs.github.com/spec/v1\n")
    monkeypatch.setattr(models, "DATA_DIR", tmp_path)
    with pytest.raises(models.WeightsError, match="does not match the sha256"):
        models.load("minivgg")


def test_device_follows_torch():
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert models.device().type == expected


def _run(code, **env):
    full_env = {k: v for k, v in os.environ.items() if k != "KERAS_BACKEND"}
    full_env.update(env)
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=full_env, timeout=120)


def test_backend_is_pinned_to_torch_even_if_env_says_otherwise():
    r = _run("import labkit, keras; print(keras.backend.backend())", KERAS_BACKEND="tensorflow")
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip().splitlines()[-1] == "torch"


def test_backend_guard_when_keras_came_first():
    # Keras already imported on TensorFlow (as in the course's conda environment). Neither tensorflow nor jax
    # is installed here, so a stand-in keras module reports that backend; the guard only asks keras for it.
    fake = ("import sys, types\n"
            "sys.modules['keras'] = types.SimpleNamespace(backend=types.SimpleNamespace(backend=lambda: 'tensorflow'))\n"
            "import labkit")
    r = _run(fake)
    assert r.returncode != 0
    last = r.stderr.strip().splitlines()[-1]
    assert "BackendError" in last and "'tensorflow' backend" in last and "restart the kernel" in last


def test_already_torch_is_fine():
    r = _run("import keras\nimport labkit\nprint('ok')", KERAS_BACKEND="torch")
    assert r.returncode == 0 and r.stdout.strip().endswith("ok"), r.stderr
