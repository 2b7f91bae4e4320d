"""The real VGG16 path: downloading, verifying and caching weights, tested against a server on 127.0.0.1."""

import hashlib
import http.server
import threading
import time
from functools import partial

import h5py
import numpy as np
import pytest

from labkit import models


@pytest.fixture(scope="module")
def weights_file(tmp_path_factory):
    """A VGG16(weights=None) saved in the legacy .h5 layout Keras publishes ImageNet weights in."""
    import keras
    from keras.src.legacy.saving import legacy_h5_format

    model = keras.applications.VGG16(weights=None)
    path = tmp_path_factory.mktemp("served") / models.VGG16_FILE
    with h5py.File(path, "w") as f:
        legacy_h5_format.save_weights_to_hdf5_group(f, model)
    return path, model.get_layer("fc1").get_weights()[0][:3, :3].copy()


class _Handler(http.server.SimpleHTTPRequestHandler):
    truncate = False

    def log_message(self, *args):
        pass

    def do_GET(self):
        if self.path.startswith("/cut/"):
            # Announce the whole file, send half of it, hang up: a transfer cut short.
            path = self.translate_path(self.path[len("/cut") :])
            body = open(path, "rb").read()
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body[: len(body) // 2])
            self.wfile.flush()
            self.connection.close()
            return
        super().do_GET()


@pytest.fixture(scope="module")
def server(weights_file):
    handler = partial(_Handler, directory=str(weights_file[0].parent))
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()


@pytest.fixture()
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras"))
    monkeypatch.delenv("LABKIT_VGG16_WEIGHTS", raising=False)
    monkeypatch.delenv("LABKIT_VGG16_SHA256", raising=False)
    return tmp_path / "keras" / "models"


def _sha(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_download_verifies_and_caches(weights_file, server, cache):
    path, fc1_corner = weights_file
    out = models.fetch_vgg16(f"{server}/{models.VGG16_FILE}", sha256=_sha(path), progress=False)
    assert out == cache / models.VGG16_FILE and _sha(out) == _sha(path)
    assert list(cache.iterdir()) == [out]  # nothing else left behind
    bb = models.load("vgg16")  # found in the cache, no network needed
    assert np.array_equal(bb.model.get_layer("fc1").get_weights()[0][:3, :3], fc1_corner)
    assert len(bb.class_names) == 1000 and bb.class_names[281] == "tabby"


def test_wrong_checksum_leaves_nothing(weights_file, server, cache):
    with pytest.raises(models.WeightsError, match="checksum mismatch"):
        models.fetch_vgg16(f"{server}/{models.VGG16_FILE}", sha256="0" * 64, progress=False)
    assert not cache.exists() or list(cache.iterdir()) == []


def test_keras_md5_checked_when_no_sha_pinned(weights_file, server, cache):
    # Our served file is not the real ImageNet file, so Keras' published md5 must reject it.
    with pytest.raises(models.WeightsError, match="md5"):
        models.fetch_vgg16(f"{server}/{models.VGG16_FILE}", progress=False)
    assert list(cache.iterdir()) == []


def test_truncated_transfer_leaves_nothing(weights_file, server, cache):
    with pytest.raises(models.WeightsError, match="cut short|could not download"):
        models.fetch_vgg16(f"{server}/cut/{models.VGG16_FILE}", sha256=_sha(weights_file[0]), progress=False)
    assert list(cache.iterdir()) == []


def test_local_file_source_and_env(weights_file, cache, monkeypatch):
    path, fc1_corner = weights_file
    assert models.fetch_vgg16(str(path), sha256=_sha(path), progress=False).is_file()
    monkeypatch.setenv("LABKIT_VGG16_WEIGHTS", str(path))
    assert "local file" in models.backbone_state("vgg16")
    bb = models.load("vgg16")
    assert np.array_equal(bb.model.get_layer("fc1").get_weights()[0][:3, :3], fc1_corner)
    assert np.array_equal(models.load("vgg16", weights=str(path)).model.get_layer("fc1").get_weights()[0][:3, :3],
                          fc1_corner)


def test_offline_error_is_fast_and_names_both_remedies(cache, monkeypatch):
    # A closed port on 127.0.0.1 behaves like a machine without internet: refused at once.
    monkeypatch.setenv("LABKIT_VGG16_URL", "http://127.0.0.1:9/vgg16.h5")
    start = time.time()
    with pytest.raises(models.WeightsError) as info:
        models.load("vgg16")
    assert time.time() - start < 10
    msg = str(info.value)
    assert "labkit fetch vgg16" in msg and "LABKIT_VGG16_WEIGHTS" in msg and "\n" not in msg
    assert not cache.exists() or list(cache.iterdir()) == []


def test_missing_local_paths(cache, tmp_path, monkeypatch):
    with pytest.raises(models.WeightsError, match="no VGG16 weights file at"):
        models.load("vgg16", weights=str(tmp_path / "none.h5"))
    monkeypatch.setenv("LABKIT_VGG16_WEIGHTS", str(tmp_path / "none.h5"))
    with pytest.raises(models.WeightsError, match="is not a file"):
        models.load("vgg16")


def test_untrained_architecture_needs_no_download(cache):
    bb = models.load("vgg16", weights=None)
    assert bb.input_size == (224, 224) and bb.model.output_shape == (None, 1000)
    assert not cache.exists()
