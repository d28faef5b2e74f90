"""zoo.weights against a real HTTP server on 127.0.0.1 serving a release bundle built by export.release."""

import contextlib
import functools
import hashlib
import http.server
import json
import shutil
import threading

import numpy as np
import pytest

from export import release, runtime
from tests.helpers import export_tiny_run
from zoo import weights
from zoo.errors import UnknownNameError

PRESET = "dae_mnist"


@pytest.fixture(scope="module")
def dist(tmp_path_factory):
    """A release folder with one preset, built from a tiny trained and exported run."""
    base = tmp_path_factory.mktemp("weights")
    run = export_tiny_run(base, "dae")
    release.release([run], base / "dist", verbose=0)
    return base / "dist"


@pytest.fixture(autouse=True)
def no_defaults(monkeypatch, tmp_path):
    """Neither the user's cache nor a configured release is touched."""
    monkeypatch.delenv(weights.ENV_SOURCE, raising=False)
    monkeypatch.setenv(weights.ENV_CACHE, str(tmp_path / "default-cache"))
    monkeypatch.setattr(weights, "BUNDLED_RELEASES", tmp_path / "no-bundled-release")


class _Handler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass

    def do_GET(self):
        self.server.requests.append(self.path)
        if self.path in self.server.truncate:
            # Promise the whole file, send half of it, hang up: a dropped connection mid-download.
            data = (self.server.root / self.path.lstrip("/")).read_bytes()
            self.send_response(200)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data[: len(data) // 2])
            self.wfile.flush()
            self.close_connection = True
            return
        super().do_GET()


@contextlib.contextmanager
def serve(root):
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_Handler, directory=str(root)))
    server.root, server.requests, server.truncate = root, [], set()
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield server, "http://127.0.0.1:{}".format(server.server_address[1])
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


@pytest.fixture
def server(dist):
    with serve(dist) as (server, url):
        yield server, url


def _manifest(dist):
    return json.loads((dist / PRESET / "manifest.json").read_text())


def _leftovers(cache):
    return sorted(p.name for p in cache.rglob("*") if p.name.startswith((".incoming", ".partial", ".old")))


def test_fetch_onnx_runs_and_matches_the_manifest(dist, server, tmp_path):
    _, url = server
    cache = tmp_path / "cache"
    paths = weights.fetch(PRESET, source=url, cache_dir=cache, verbose=False)
    # One copy of each weight: no autoencoder.onnx (the runtime chains encoder and decoder).
    assert set(paths) == {"dir", "manifest", "encoder", "decoder"}
    assert paths["dir"] == cache / PRESET
    for entry in _manifest(dist)["files"]:
        if entry["format"] == "onnx":
            assert hashlib.sha256(paths[entry["role"]].read_bytes()).hexdigest() == entry["sha256"]
    rt = runtime.Runtime(paths["dir"], providers=["CPUExecutionProvider"], intra_op_threads=1)
    x = np.random.default_rng(0).uniform(0, 1, (2, 28, 28, 1)).astype(np.float32)
    assert rt.reconstruct(x).shape == x.shape
    assert _leftovers(cache) == []


def test_fetch_keras_and_savedmodel(dist, server, tmp_path):
    import keras
    import tensorflow as tf

    from zoo import pretrained

    _, url = server
    paths = weights.fetch(PRESET, format="keras", source=url, cache_dir=tmp_path, verbose=False)
    assert {"keras_weights", "encoder", "decoder", "keras"} <= set(paths)
    model = keras.models.load_model(paths["keras"])
    trained = keras.models.load_model(dist.parent / "dae" / "model.keras")
    # Rebuilt from the ONNX initializers, bit for bit the trained weights.
    assert pretrained.weights_digest(model.get_weights()) == pretrained.weights_digest(trained.get_weights())
    paths = weights.fetch(PRESET, format="savedmodel", source=url, cache_dir=tmp_path, verbose=False)
    assert "savedmodel_archive" not in paths  # exported here from the Keras weights, not downloaded
    loaded = tf.saved_model.load(str(paths["savedmodel"]))
    x = np.random.default_rng(0).uniform(0, 1, (2, 28, 28, 1)).astype(np.float32)
    np.testing.assert_allclose(loaded.signatures["serving_default"](image=tf.constant(x))["reconstruction"].numpy(),
                               model.reconstruct(x), atol=1e-5)
    assert _leftovers(tmp_path) == []


def test_cached_weights_are_reused_with_the_server_stopped(dist, tmp_path, capsys):
    cache = tmp_path / "cache"
    with serve(dist) as (server, url):
        first = weights.fetch(PRESET, source=url, cache_dir=cache)
        assert "Downloading data from {}/{}/encoder.onnx".format(url, PRESET) in capsys.readouterr().out
        requests = len(server.requests)
        again = weights.fetch(PRESET, source=url, cache_dir=cache)
        assert len(server.requests) == requests  # served from the cache: no request at all
    assert "Using cached" in capsys.readouterr().out
    # The server is gone: the same call, and one naming no source, still succeed offline.
    assert weights.fetch(PRESET, source=url, cache_dir=cache, verbose=False) == first == again
    assert weights.fetch(PRESET, cache_dir=cache, verbose=False) == first
    # ...but what is not cached cannot come from nowhere, and the error says where it tried.
    with pytest.raises(weights.WeightsError, match="Cannot download {}/{}/manifest.json".format(url, PRESET)):
        weights.fetch(PRESET, format="keras", source=url, cache_dir=cache, verbose=False)


def test_locally_damaged_cache_file_is_downloaded_again(server, tmp_path):
    _, url = server
    paths = weights.fetch(PRESET, source=url, cache_dir=tmp_path, verbose=False)
    good = paths["encoder"].read_bytes()
    paths["encoder"].write_bytes(b"\0" + good[1:])
    assert weights.fetch(PRESET, source=url, cache_dir=tmp_path, verbose=False)["encoder"].read_bytes() == good


def test_corrupted_file_is_refused_and_not_kept(dist, tmp_path):
    served = tmp_path / "served"
    shutil.copytree(dist, served)
    encoder = served / PRESET / "encoder.onnx"
    data = bytearray(encoder.read_bytes())
    data[len(data) // 2] ^= 0xFF  # same size, different bytes
    encoder.write_bytes(bytes(data))
    cache = tmp_path / "cache"
    with serve(served) as (_, url):
        with pytest.raises(weights.ChecksumError, match="sha256 of .*encoder.onnx is .* but the manifest says"):
            weights.fetch(PRESET, source=url, cache_dir=cache, verbose=False)
    assert not (cache / PRESET / "encoder.onnx").exists()
    assert not (cache / PRESET / "manifest.json").exists()  # a manifest is cached only with checked files
    assert _leftovers(cache) == []


def test_truncated_download_is_refused_and_not_kept(server, tmp_path):
    srv, url = server
    srv.truncate.add("/{}/decoder.onnx".format(PRESET))
    cache = tmp_path / "cache"
    with pytest.raises(weights.IncompleteDownloadError, match=r"decoder.onnx was cut short .*got only \d+ out of "
                                                              r"\d+ bytes.*Nothing was kept"):
        weights.fetch(PRESET, source=url, cache_dir=cache, verbose=False)
    assert not (cache / PRESET / "decoder.onnx").exists()
    assert _leftovers(cache) == []
    srv.truncate.clear()  # the connection recovers: the next try completes the cache
    assert weights.fetch(PRESET, source=url, cache_dir=cache, verbose=False)["decoder"].is_file()


def test_unknown_preset_is_named_with_the_source_and_what_it_has(server, tmp_path, capsys):
    _, url = server
    with pytest.raises(UnknownNameError) as info:
        weights.fetch("dae_mnits", source=url, cache_dir=tmp_path, verbose=False)
    message = str(info.value)
    assert "Preset 'dae_mnits' is not in the release at {}".format(url) in message
    assert "Did you mean: dae_mnist?" in message and "It has: dae_mnist." in message
    assert weights.main(["fetch", "nope", "--source", url, "--cache-dir", str(tmp_path), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: Preset 'nope' is not in the release") and "Traceback" not in err


def test_cli_fetch_and_list(server, tmp_path, capsys):
    _, url = server
    assert weights.main(["fetch", PRESET, "--source", url, "--cache-dir", str(tmp_path), "--quiet"]) == 0
    lines = dict(line.split(": ", 1) for line in capsys.readouterr().out.splitlines())
    assert lines["encoder"] == str(tmp_path / PRESET / "encoder.onnx")
    assert weights.main(["list", "--source", url]) == 0
    assert capsys.readouterr().out.startswith("dae_mnist  dae on mnist")


def test_local_folder_and_file_url_sources(dist, tmp_path):
    by_dir = weights.fetch(PRESET, source=dist, cache_dir=tmp_path / "a", verbose=False)
    by_url = weights.fetch(PRESET, source=dist.as_uri(), cache_dir=tmp_path / "b", verbose=False)
    assert by_dir["encoder"].read_bytes() == by_url["encoder"].read_bytes() == (dist / PRESET / "encoder.onnx"
                                                                                ).read_bytes()
    with pytest.raises(UnknownNameError, match="not in the release at file://"):
        weights.fetch("other", source=dist, cache_dir=tmp_path / "c", verbose=False)


def test_defaults_come_from_the_environment(dist, tmp_path, monkeypatch):
    monkeypatch.setenv(weights.ENV_SOURCE, str(dist))
    monkeypatch.setenv(weights.ENV_CACHE, str(tmp_path / "env-cache"))
    assert weights.fetch(PRESET, verbose=False)["dir"] == tmp_path / "env-cache" / PRESET


@pytest.mark.parametrize("kwargs, message", [
    (dict(preset=PRESET), "No weights source: this install has no bundled release.*Pass source=.*ZOO_WEIGHTS_URL"),
    (dict(preset=PRESET, source="ftp://example.org/x"), "Unsupported weights source"),
    (dict(preset=PRESET, source="/no/such/folder"), "is not a folder"),
    (dict(preset="../etc", source="."), "is not a preset name"),
    (dict(preset=PRESET, format="tflite", source="."), "Unknown format 'tflite'"),
])
def test_bad_arguments(tmp_path, kwargs, message):
    with pytest.raises(weights.WeightsError, match=message):
        weights.fetch(cache_dir=tmp_path, verbose=False, **kwargs)


def test_cli_without_source_is_a_clear_error(tmp_path, capsys):
    assert weights.main(["fetch", PRESET, "--cache-dir", str(tmp_path)]) == 2
    assert "No weights source" in capsys.readouterr().err
