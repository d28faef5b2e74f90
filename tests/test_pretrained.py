"""The release bundled in the repository, zoo.from_preset and Runtime.from_preset: no network, no setting,
every weight stored once and rebuilt bit for bit."""

import hashlib
import json
import os
import socket

import numpy as np
import pytest

import zoo
from export import runtime
from tests.helpers import tiny_model
from zoo import data, fileio, pretrained, presets, schema, weights
from zoo.errors import ZooError

RELEASE = weights.bundled_release()
BUNDLED = sorted(json.loads((RELEASE / schema.INDEX).read_text())["presets"]) if RELEASE else []
SMALL = "ae_fashion_mnist"  # the smallest bundle, for the tests that only need one


@pytest.fixture(autouse=True)
def fresh_cache(monkeypatch, tmp_path):
    """A fresh cache, no mirror configured, and no network: a connection attempt fails the test."""
    monkeypatch.delenv(weights.ENV_SOURCE, raising=False)
    monkeypatch.setenv(weights.ENV_CACHE, str(tmp_path / "cache"))

    def no_network(*args, **kwargs):
        raise AssertionError("the bundled release must not need the network")

    monkeypatch.setattr(socket.socket, "connect", no_network)


def test_the_bundled_release_is_whole_small_and_stores_each_weight_once():
    assert RELEASE is not None and RELEASE.parent == weights.BUNDLED_RELEASES
    assert SMALL in BUNDLED and "deep_ae_fashion_mnist" in BUNDLED
    total = sum(p.stat().st_size for p in RELEASE.rglob("*") if p.is_file())
    assert total < 60e6, "the bundled release must stay under 60 MB; it is {:.1f} MB".format(total / 1e6)
    for name in BUNDLED:
        assert name in presets.PRESETS and name.endswith("_fashion_mnist")
        bundle = RELEASE / name
        files = {p.name for p in bundle.iterdir()}
        assert {"encoder.onnx", "decoder.onnx", schema.KERAS_WEIGHTS, schema.MANIFEST, schema.SUMS} <= files
        assert not files & {"autoencoder.onnx", schema.SAVEDMODEL_ARCHIVE, schema.MODEL}, "a second copy of weights"
        for line in (bundle / schema.SUMS).read_text().splitlines():  # what `sha256sum -c SHA256SUMS` checks
            digest, file = line.split("  ")
            assert hashlib.sha256((bundle / file).read_bytes()).hexdigest() == digest, (name, file)
        manifest = schema.Manifest.load(bundle)
        assert manifest.preset == name and manifest.parity["passed"] is True
        assert manifest.weights_sha256 and manifest.metrics["metrics"]["sq_error_per_image"] > 0


def test_the_one_file_runtime_keeps_the_schema_names():
    # export/runtime.py is meant to be copied alone to a device, so it keeps its own copy of these names.
    assert runtime.FILES == schema.ONNX_FILES and runtime.NORMALIZATION == schema.NORMALIZATION


def test_fetch_uses_the_bundled_release_with_no_setting_and_no_network(tmp_path):
    paths = weights.fetch(SMALL, verbose=False)
    assert paths["dir"] == tmp_path / "cache" / SMALL
    assert (paths["dir"] / weights.SOURCE_FILE).read_text().strip() == RELEASE.as_uri()
    rt = runtime.Runtime(paths["dir"], providers=["CPUExecutionProvider"])
    x = np.random.default_rng(0).uniform(0, 1, (3, 28, 28, 1)).astype(np.float32)
    assert rt.reconstruct(x).shape == x.shape
    manifest = schema.Manifest.load(RELEASE / SMALL)
    for entry in manifest.files:  # the int8 files that passed their accuracy check come along, under their own keys
        if entry.get("precision", "fp32") != "fp32":
            key = "{}_{}".format(entry["role"], entry["precision"])
            assert paths[key].name == entry["file"] and manifest.parity["variants"][entry["precision"]]["passed"]
            int8 = runtime.Runtime(paths["dir"], precision=entry["precision"])
            assert np.abs(int8.encode(x) - rt.encode(x)).max() < 0.5
    assert set(weights.list_released()) == set(BUNDLED)


def test_runtime_from_preset_encodes_without_tensorflow_objects():
    rt = runtime.Runtime.from_preset(SMALL, providers=["CPUExecutionProvider"])
    codes = rt.encode(np.random.default_rng(1).uniform(0, 1, (4, 28, 28, 1)).astype(np.float32))
    assert codes.shape == (4, rt.latent_dim) and np.isfinite(codes).all()
    with pytest.raises(runtime.BundleError, match="not in the release.*Did you mean: ae_fashion_mnist"):
        runtime.Runtime.from_preset("ae_fashion_mnits")


def test_from_preset_pretrained_matches_the_onnx_files_and_the_trained_weights():
    model = zoo.from_preset(SMALL)
    rt = runtime.Runtime.from_preset(SMALL, providers=["CPUExecutionProvider"])
    x = np.random.default_rng(2).uniform(0, 1, (8, 28, 28, 1)).astype(np.float32)
    np.testing.assert_allclose(np.asarray(model.encode(x)), rt.encode(x), atol=1e-5)
    manifest = schema.Manifest.load(RELEASE / SMALL)
    assert pretrained.weights_digest(model.get_weights()) == manifest.weights_sha256
    # Settings that keep the weights' shapes may change; one that changes them is refused in one line.
    assert zoo.from_preset(SMALL, latent_dim=manifest.latent_dim).latent_dim == manifest.latent_dim
    with pytest.raises(pretrained.PretrainedError, match="changed the architecture.*pretrained=False"):
        zoo.from_preset(SMALL, latent_dim=7)
    with pytest.raises(pretrained.PretrainedError, match="no setting latent_dims.*did you mean latent_dim"):
        zoo.from_preset(SMALL, latent_dims=7)


def test_from_preset_untrained_takes_overrides():
    model = zoo.from_preset("dae_mnist", pretrained=False, latent_dim=7, noise="masking", noise_level=0.5)
    assert (model.latent_dim, model.noise, model.noise_level) == (7, "masking", 0.5)
    with pytest.raises(ZooError, match="latent_dimm.*Did you mean.*latent_dim"):
        zoo.from_preset("dae_mnist", pretrained=False, latent_dimm=7)
    with pytest.raises(ZooError, match="cannot be built with noise=.?foo"):
        zoo.from_preset("dae_mnist", pretrained=False, noise="foo")


def test_a_damaged_weights_map_is_refused(tmp_path):
    paths = weights.fetch(SMALL, format="keras", verbose=False)
    weights_map = json.loads((paths["dir"] / schema.KERAS_WEIGHTS).read_text())
    first, second = weights_map["variables"][:2]
    first["shape"], second["shape"] = second["shape"], first["shape"]
    first["initializer"], second["initializer"] = second["initializer"], first["initializer"]
    (paths["dir"] / schema.KERAS_WEIGHTS).write_text(json.dumps(weights_map))
    model = zoo.from_preset(SMALL, pretrained=False)
    with pytest.raises(pretrained.PretrainedError):
        pretrained.load_into(model, paths["dir"])


@pytest.mark.parametrize("family, extra", [(name, {}) for name in zoo.list_models()] + [
    ("vae", {"kl_warmup_epochs": 3})])  # a scalar variable no ONNX file holds: it goes to keras_extra.npz
def test_every_family_rebuilds_its_keras_weights_from_its_onnx_files(family, extra, tmp_path):
    import onnx

    from export import exporter

    model = tiny_model(family, **extra)
    rng = np.random.default_rng(0)
    model.set_weights([rng.normal(0, 0.1, w.shape).astype(w.dtype) for w in model.get_weights()])
    files = []
    for endpoint, part in (("encode", "encoder"), ("decode", "decoder")):
        meta = {"format_version": 1, "preset": family, "family": family, "role": part, "dataset": "",
                "latent_dim": int(model.latent_dim), "input_shape": list(model.image_shape),
                "normalization": schema.NORMALIZATION, "variational": False, "metrics": {}, "versions": {}}
        onnx.save_model(exporter.to_onnx(model, endpoint, 17, meta), str(tmp_path / schema.ONNX_FILES[part]))
        files.append(tmp_path / schema.ONNX_FILES[part])
    weights_map = pretrained.write_weights(tmp_path, model, files)
    outside = [v["path"] for v in weights_map["variables"] if "extra" in v]
    # Only the model's own variables (a VAE's kl_weight, a stacked_ae's pretrained flag) live outside the ONNX files.
    parts = {id(w) for w in model.encoder.weights + model.decoder.weights}
    own = sorted(w.path.split("/")[-1] for w in model.weights if id(w) not in parts)
    assert own == (["kl_weight"] if extra else ["pretrained"] if family == "stacked_ae" else [])
    assert sorted(p.split("/")[-1] for p in outside) == own, "the rest is in an ONNX file"
    fresh = tiny_model(family, **extra)
    pretrained.load_into(fresh, tmp_path)
    for a, b in zip(fresh.get_weights(), model.get_weights()):
        np.testing.assert_array_equal(a, b)


@pytest.mark.realdata
@pytest.mark.parametrize("name", BUNDLED)
def test_from_preset_reproduces_the_released_test_error(name):
    try:
        test = data.normalize(data.load_arrays("fashion_mnist", "test").images)
    except ZooError as exc:
        pytest.skip("real Fashion-MNIST not installed: {}".format(exc))
    model = zoo.from_preset(name)
    recon = np.concatenate([np.asarray(model.reconstruct(test[i:i + 2000])) for i in range(0, len(test), 2000)])
    error = float(np.mean(np.sum(np.square(test - recon), axis=(1, 2, 3))))
    released = schema.Manifest.load(RELEASE / name).metrics["metrics"]["sq_error_per_image"]
    assert error == pytest.approx(released, rel=0.01)


@pytest.mark.realdata  # the release's parity check reads the real test images
@pytest.mark.skipif(not os.path.isdir(data.DEBIAN_FASHION_MNIST_DIR), reason="apt-get install dataset-fashion-mnist")
def test_released_weights_as_a_run_dir_release_again_unchanged(tmp_path, capsys):
    """`aezoo weights fetch PRESET --run-dir DIR` writes a run dir of the released weights that export.release takes:
    re-released by this aezoo, the bundle holds the same weights, recipe and metrics; a folder the user made is
    never replaced."""
    from export import release

    run = tmp_path / "runs" / SMALL
    assert weights.main(["fetch", SMALL, "--run-dir", str(run), "--quiet"]) == 0
    assert "run_dir: {}".format(run) in capsys.readouterr().out
    config = schema.RunConfig.load(run)
    old = schema.Manifest.load(RELEASE / SMALL)
    assert config.weights_source == {"release": old.release, "bundle": str(tmp_path / "cache" / SMALL),
                                     "weights_sha256": old.weights_sha256}
    assert (config.preset, config.training, config.model_config) == (SMALL, old.training, old.model_config)
    assert schema.RunMetrics.load(run).metrics == old.metrics["metrics"]
    new = schema.Manifest.load(release.release([run], tmp_path / "dist", verbose=0)[SMALL])
    for field in ("weights_sha256", "training", "model_config", "metrics", "description", "overrides"):
        assert getattr(new, field) == getattr(old, field), field
    assert new.versions["training"] == old.versions["training"]
    assert weights.main(["fetch", SMALL, "--run-dir", str(run), "--quiet"]) == 0  # its own run dir: replaced
    # Never replaced: a folder of other files, or a run trained here (the same marker, no weights_source).
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep")
    trained = tmp_path / "trained"
    trained.mkdir()
    fileio.write_marker(trained, "run")
    schema.RunConfig(**dict(config.to_dict(), weights_source=None)).save(trained)
    (trained / "model.keras").write_bytes(b"weights trained here")
    capsys.readouterr()
    for folder in (mine, trained):
        assert weights.main(["fetch", SMALL, "--run-dir", str(folder), "--quiet"]) == 2
        err = capsys.readouterr().err
        assert "left as it is" in err and "Traceback" not in err, err
    assert (mine / "notes.txt").read_text() == "keep"
    assert (trained / "model.keras").read_bytes() == b"weights trained here"
