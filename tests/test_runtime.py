"""export.runtime: ONNX inference with numpy and onnxruntime only, its input checks and its CLI."""

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import onnx
import pytest

from export import runtime
from export.runtime import BundleError, InferenceError, InputError, Runtime
from tests import fake_cuda as fake_cuda_module
from tests.helpers import export_tiny_run

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Exported run dirs of a plain and a variational family (tiny, trained on random images)."""
    base = tmp_path_factory.mktemp("runtime")
    return {family: export_tiny_run(base, family) for family in ("dae", "conv_vae")}


@pytest.fixture(scope="module")
def images():
    return np.random.default_rng(0).uniform(0, 1, (6, 28, 28, 1)).astype(np.float32)


def _runtime(path):
    return Runtime(path, providers=["CPUExecutionProvider"], intra_op_threads=1)


def test_runtime_works_where_tensorflow_cannot_be_imported(runs, images, tmp_path):
    """A subprocess where importing tensorflow, keras, tf2onnx, onnx or zoo raises: the runtime still runs, and
    still serves the decoders' outputs flat (serving_model reads the protobuf itself)."""
    import keras

    expected = {}
    for family, run in runs.items():
        model = keras.models.load_model(run / "model.keras")
        z = model.encode(images)
        expected[family] = {"encode": z, "decode": model.decode(z), "reconstruct": model.reconstruct(images)}
        if family == "conv_vae":
            expected[family]["log_var"] = model.encode_distribution(images)[1]
    np.save(tmp_path / "images.npy", images)
    png_dir = tmp_path / "pngs"
    png_dir.mkdir()
    from PIL import Image

    pixels = np.round(images * 255).astype(np.uint8)
    for i, image in enumerate(pixels):
        Image.fromarray(image[..., 0]).save(png_dir / "{:02d}.png".format(i))

    script = textwrap.dedent("""
        import json, sys
        BLOCKED = ("tensorflow", "keras", "tf2onnx", "onnx", "zoo", "tensorflow_datasets", "tf_keras")
        class Block:
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] in BLOCKED:
                    raise ImportError("blocked in this test: " + name)
        sys.meta_path.insert(0, Block())
        try:
            import tensorflow
        except ImportError:
            pass
        else:
            raise SystemExit("tensorflow should not be importable here")
        import numpy as np
        import export.runtime as rt
        runs, images_path, out = json.loads(sys.argv[1]), sys.argv[2], sys.argv[3]
        images = np.load(images_path)
        for family, run in runs.items():
            model = rt.Runtime(run + "/export", providers=["CPUExecutionProvider"], intra_op_threads=1)
            assert model.describe()["flat_outputs"]["decoder"] == {"reconstruction": [28, 28, 1]}
            z = model.encode(images)
            result = {"encode": z, "decode": model.decode(z), "reconstruct": model.reconstruct(images)}
            if model.variational:
                result["log_var"] = model.encode_distribution(images)[1]
                result["samples"] = model.sample(3, seed=0)
            np.savez(out + "/" + family + ".npz", **result)
            # The CLI, on an .npy and on a folder of PNGs.
            assert rt.main(["encode", run + "/export", images_path, "--out", out + "/" + family + "-cli.npy",
                            "--threads", "1"]) == 0
            assert rt.main(["encode", run + "/export", out + "/pngs", "--out", out + "/" + family + "-png.npy"]) == 0
        loaded = sorted(m for m in sys.modules if m.split(".")[0] in BLOCKED)
        print("RESULT " + json.dumps(loaded))
    """)
    env = dict(os.environ, PYTHONPATH=str(REPO))
    proc = subprocess.run([sys.executable, "-c", script, json.dumps({f: str(r) for f, r in runs.items()}),
                           str(tmp_path / "images.npy"), str(tmp_path)], capture_output=True, text=True, env=env,
                          timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    assert json.loads(proc.stdout.split("RESULT ", 1)[1]) == []
    for family in runs:
        got = np.load(tmp_path / (family + ".npz"))
        for key, want in expected[family].items():
            np.testing.assert_allclose(got[key], want, atol=1e-4, err_msg=family + " " + key)
        np.testing.assert_allclose(np.load(tmp_path / (family + "-cli.npy")), expected[family]["encode"], atol=1e-4)
        # PNGs hold 8-bit pixels, so their codes match the codes of the rounded images.
        from_png = _runtime(runs[family] / "export").encode(pixels.astype(np.float32) / 255)
        np.testing.assert_allclose(np.load(tmp_path / (family + "-png.npy")), from_png, atol=1e-6)
    assert got["samples"].shape == (3, 28, 28, 1)


def test_metadata_gives_shapes_and_normalization(runs):
    rt = _runtime(runs["conv_vae"] / "export")
    assert rt.image_shape == (28, 28, 1) and rt.latent_dim == 4 and rt.variational
    assert rt.preset == "conv_vae_mnist" and rt.family == "conv_vae"
    assert rt.normalization == "float32 in [0, 1], NHWC"
    assert "psnr_db" in rt.metrics["metrics"] and "tf2onnx" in rt.versions["export"]
    assert set(rt.sessions) == {"encoder", "decoder", "autoencoder"}
    info = rt.describe()
    assert info["providers"] == ["CPUExecutionProvider"] and info["input_shape"] == [28, 28, 1]
    assert rt.layout == info["layout"] == "nhwc" and info["device"] == "cpu" and info["precision"] == "fp32"


@pytest.mark.parametrize("bad, message", [
    (lambda x: (x * 255).astype(np.uint8), r"float32 in \[0, 1\].*got dtype uint8.*/ 255"),
    (lambda x: x * 255, r"got values from .* to .*Divide by 255"),
    (lambda x: x - 0.5, r"must be float32 in \[0, 1\], NHWC, shape \(batch, 28, 28, 1\); got values"),
    (lambda x: x[0], r"shape \(batch, 28, 28, 1\); got \(28, 28, 1\)\. For a single image add a batch axis"),
    (lambda x: x[..., 0], r"got \(6, 28, 28\)\. Add the channel axis"),
    (lambda x: x.transpose(0, 3, 1, 2), r"got \(6, 1, 28, 28\)\. These look like NCHW"),
    (lambda x: x.reshape(6, -1), r"got \(6, 784\)\. Reshape them"),
    (lambda x: x[:, :14], r"must have shape \(batch, 28, 28, 1\); got \(6, 14, 28, 1\)\.$"),
    (lambda x: x[:0], r"empty batch"),
    (lambda x: np.where(x > 0.5, np.nan, x), r"NaN"),
    (lambda x: x.astype(str), r"float32 array .* got dtype <U"),
])
def test_bad_images_get_an_error_that_states_what_is_expected(runs, images, bad, message):
    rt = _runtime(runs["dae"] / "export")
    for method in (rt.encode, rt.reconstruct):
        with pytest.raises(InputError, match=message):
            method(bad(images))


def test_other_float_types_are_accepted(runs, images):
    rt = _runtime(runs["dae"] / "export")
    np.testing.assert_allclose(rt.encode(images.astype(np.float64)), rt.encode(images), atol=1e-6)
    np.testing.assert_allclose(rt.encode(images.tolist()), rt.encode(images), atol=1e-6)


def test_bad_latents(runs):
    rt = _runtime(runs["dae"] / "export")
    with pytest.raises(InputError, match=r"latents must have shape \(batch, 4\); got \(4,\)\. For a single code"):
        rt.decode(np.zeros(4, np.float32))
    with pytest.raises(InputError, match=r"latents must have shape \(batch, 4\); got \(2, 5\)"):
        rt.decode(np.zeros((2, 5), np.float32))
    with pytest.raises(InputError, match="dtype int64"):
        rt.decode(np.zeros((2, 4), np.int64))


def test_large_batches_are_chunked(runs):
    rt = _runtime(runs["dae"] / "export")
    x = np.random.default_rng(1).uniform(0, 1, (70, 28, 28, 1)).astype(np.float32)
    np.testing.assert_allclose(rt.reconstruct(x, batch_size=16), rt.reconstruct(x), atol=1e-6)


def test_cpu_pieces_write_straight_into_the_result(runs, monkeypatch):
    """On the CPU every piece is bound to a view of the input and to its rows of one result array: what one
    call per piece gives, with no concatenation."""
    rt = _runtime(runs["conv_vae"] / "export")
    x = np.random.default_rng(2).uniform(0, 1, (11, 28, 28, 1)).astype(np.float32)
    session = rt.sessions["encoder"]
    name = session.get_inputs()[0].name
    want = [np.concatenate(parts) for parts in zip(*(session.run(None, {name: x[i:i + 4]}) for i in range(0, 11, 4)))]
    monkeypatch.setattr(np, "concatenate", None)  # the CPU path must not need it
    got = rt.encode_distribution(x, batch_size=4)
    for g, w in zip(got, want):
        assert g.flags.c_contiguous and g.dtype == np.float32
        np.testing.assert_array_equal(g, w)
    assert rt.decode(got[0], batch_size=3).shape == (11, 28, 28, 1)


def test_a_file_that_names_its_rows_per_call_is_served_in_pieces_of_that_many(runs, tmp_path, monkeypatch):
    """aezoo.rows_per_call (what a VQ-VAE encoder's export names) is the default piece size; batch_size= wins."""
    import shutil

    import onnx

    from export import runtime

    folder = tmp_path / "bundle"
    shutil.copytree(runs["dae"] / "export", folder, ignore=shutil.ignore_patterns("savedmodel"))
    model = onnx.load(str(folder / "encoder.onnx"))
    onnx.helper.set_model_props(model, {**{p.key: p.value for p in model.metadata_props},
                                        runtime.META_PREFIX + "rows_per_call": "2"})
    onnx.save(model, str(folder / "encoder.onnx"))
    rt = _runtime(folder)
    assert runtime.rows_per_call(rt.sessions["encoder"]) == 2
    assert runtime.rows_per_call(rt.sessions["decoder"]) == runtime.DEFAULT_BATCH_SIZE
    assert rt.describe()["rows_per_call"]["encoder"] == 2
    # Read once when the Runtime opens: the metadata map costs about 20 us a read (a batch-1 dense call is 5 us).
    monkeypatch.setattr(runtime, "rows_per_call", None)
    calls, session = [], rt.sessions["encoder"]
    real = session.run_with_iobinding
    session.run_with_iobinding = lambda binding, *args: calls.append(1) or real(binding, *args)
    x = np.random.default_rng(3).uniform(0, 1, (5, 28, 28, 1)).astype(np.float32)
    got = rt.encode(x)
    assert len(calls) == 3
    calls.clear()
    np.testing.assert_array_equal(rt.encode(x, batch_size=5), got)
    assert len(calls) == 1


@pytest.mark.parametrize("bad", [0, -3, 2.5, "64", True])
def test_bad_batch_size_is_one_clear_line(runs, images, bad):
    with pytest.raises(InputError, match=r"batch_size must be a positive integer .*got {}".format(
            "'64'" if bad == "64" else bad)):
        _runtime(runs["dae"] / "export").encode(images, batch_size=bad)


def test_single_onnx_file(runs, images):
    export_dir = runs["dae"] / "export"
    encoder = _runtime(export_dir / "encoder.onnx")
    np.testing.assert_allclose(encoder.encode(images), _runtime(export_dir).encode(images), atol=1e-6)
    with pytest.raises(BundleError, match="has no decoder .decoder.onnx., which decode needs; it has: encoder.onnx"):
        encoder.decode(np.zeros((1, 4), np.float32))
    with pytest.raises(BundleError, match="has no autoencoder"):
        encoder.reconstruct(images)
    with pytest.raises(InferenceError, match="not variational"):
        encoder.sample(2)


def test_encoder_and_decoder_without_autoencoder_still_reconstruct(runs, images, tmp_path):
    export_dir = runs["dae"] / "export"
    for name in ("encoder.onnx", "decoder.onnx"):
        (tmp_path / name).write_bytes((export_dir / name).read_bytes())
    np.testing.assert_allclose(_runtime(tmp_path).reconstruct(images), _runtime(export_dir).reconstruct(images),
                               atol=1e-5)


def test_not_an_aezoo_model(tmp_path):
    node = onnx.helper.make_node("Identity", ["x"], ["y"])
    value = onnx.helper.make_tensor_value_info
    graph = onnx.helper.make_graph([node], "g", [value("x", onnx.TensorProto.FLOAT, [1])],
                                   [value("y", onnx.TensorProto.FLOAT, [1])])
    onnx.save(onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 17)]),
              str(tmp_path / "other.onnx"))
    with pytest.raises(BundleError, match="not an aezoo export.*aezoo.role"):
        _runtime(tmp_path / "other.onnx")
    (tmp_path / "broken.onnx").write_bytes(b"not a model")
    with pytest.raises(BundleError, match="Cannot load .*broken.onnx"):
        _runtime(tmp_path / "broken.onnx")
    (tmp_path / "nothing-here").mkdir()
    with pytest.raises(BundleError, match="holds none of encoder.onnx"):
        _runtime(tmp_path / "nothing-here")
    with pytest.raises(BundleError, match="No such model file or folder"):
        _runtime(tmp_path / "missing")


def test_mixed_bundle_is_refused(runs, tmp_path):
    (tmp_path / "encoder.onnx").write_bytes((runs["dae"] / "export" / "encoder.onnx").read_bytes())
    (tmp_path / "decoder.onnx").write_bytes((runs["conv_vae"] / "export" / "decoder.onnx").read_bytes())
    with pytest.raises(BundleError, match="disagree on preset"):
        _runtime(tmp_path)


def test_cli(runs, images, tmp_path, capsys, monkeypatch):
    export_dir = str(runs["conv_vae"] / "export")
    np.save(tmp_path / "x.npy", images)
    rt = _runtime(export_dir)
    assert runtime.main(["encode", export_dir, str(tmp_path / "x.npy"), "--out", str(tmp_path / "z.npy"),
                         "--log-var-out", str(tmp_path / "lv.npy"), "--providers", "CPUExecutionProvider"]) == 0
    z_mean, log_var = rt.encode_distribution(images)
    np.testing.assert_allclose(np.load(tmp_path / "z.npy"), z_mean, atol=1e-6)
    np.testing.assert_allclose(np.load(tmp_path / "lv.npy"), log_var, atol=1e-6)
    assert runtime.main(["decode", export_dir, str(tmp_path / "z.npy"), "--out", str(tmp_path / "d.npy")]) == 0
    np.testing.assert_allclose(np.load(tmp_path / "d.npy"), rt.decode(z_mean), atol=1e-6)
    assert runtime.main(["reconstruct", export_dir, str(tmp_path / "x.npy"), "--out", str(tmp_path / "r.npy")]) == 0
    np.testing.assert_allclose(np.load(tmp_path / "r.npy"), rt.reconstruct(images), atol=1e-6)
    assert "wrote float32 (6, 28, 28, 1)" in capsys.readouterr().out
    assert runtime.main(["info", export_dir]) == 0
    assert json.loads(capsys.readouterr().out)["latent_dim"] == 4
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d.npy", "lv.npy", "r.npy", "x.npy", "z.npy"]
    # --tune times the plans for this batch first, for the files the command runs; the result is the same.
    tuned = []
    real = Runtime.tune
    monkeypatch.setattr(Runtime, "tune", lambda self, n, roles=None, **kw: tuned.append((n, roles)) or real(
        self, n, roles, seconds=0.001))
    assert runtime.main(["reconstruct", export_dir, str(tmp_path / "x.npy"), "--out", str(tmp_path / "r.npy"),
                         "--tune", "--threads", "2"]) == 0
    np.testing.assert_allclose(np.load(tmp_path / "r.npy"), rt.reconstruct(images), atol=1e-6)
    assert tuned == [(6, ["autoencoder"])]


@pytest.mark.parametrize("make, message", [
    (lambda d: np.save(d / "in.npy", np.zeros((2, 28, 28, 1), np.uint8)), "got dtype uint8"),
    (lambda d: np.save(d / "in.npy", np.zeros((2, 32, 32, 3), np.float32)),
     r"shape \(batch, 28, 28, 1\); got \(2, 32, 32, 3\)"),
    (lambda d: (d / "in.npy").write_text("garbage"), "Cannot read .*in.npy as a numpy array"),
    (lambda d: None, "No such file or folder"),
])
def test_cli_errors(runs, tmp_path, capsys, make, message):
    import re

    make(tmp_path)
    rc = runtime.main(["encode", str(runs["dae"] / "export"), str(tmp_path / "in.npy"), "--out",
                       str(tmp_path / "out.npy")])
    err = capsys.readouterr().err
    assert rc == 2 and err.startswith("error: ") and re.search(message, err), err
    assert not (tmp_path / "out.npy").exists()


def test_cli_png_errors(runs, tmp_path, capsys):
    from PIL import Image

    export_dir = str(runs["dae"] / "export")
    (tmp_path / "empty").mkdir()
    assert runtime.main(["encode", export_dir, str(tmp_path / "empty"), "--out", str(tmp_path / "o.npy")]) == 2
    assert "holds no .png files" in capsys.readouterr().err
    (tmp_path / "big").mkdir()
    Image.fromarray(np.zeros((32, 32), np.uint8)).save(tmp_path / "big" / "a.png")
    assert runtime.main(["encode", export_dir, str(tmp_path / "big"), "--out", str(tmp_path / "o.npy")]) == 2
    assert "is 32x32 pixels (HxW); the model expects 28x28" in capsys.readouterr().err
    # RGB PNGs are converted to the model's one channel.
    (tmp_path / "rgb").mkdir()
    Image.fromarray(np.full((28, 28, 3), 255, np.uint8)).save(tmp_path / "rgb" / "a.png")
    assert runtime.main(["encode", export_dir, str(tmp_path / "rgb"), "--out", str(tmp_path / "o.npy")]) == 0
    assert np.load(tmp_path / "o.npy").shape == (1, 4)
    assert runtime.main(["encode", str(tmp_path / "nowhere"), str(tmp_path / "rgb"), "--out", "x.npy"]) == 2
    assert "No such model file or folder" in capsys.readouterr().err


# --- devices, precisions, IOBinding and CUDA graphs -------------------------------------------------------------


def _bundle_with_int8(runs, tmp_path):
    """A bundle folder with fp32 encoder and decoder and a stand-in int8 encoder (a copy of the fp32 one)."""
    export_dir = runs["dae"] / "export"
    tmp_path.mkdir(parents=True, exist_ok=True)
    for name in ("encoder.onnx", "decoder.onnx"):
        (tmp_path / name).write_bytes((export_dir / name).read_bytes())
    (tmp_path / "encoder.int8.onnx").write_bytes((export_dir / "encoder.onnx").read_bytes())
    return tmp_path


def test_the_one_file_runtime_names_variants_like_the_schema():
    from zoo import schema

    assert runtime.PRECISIONS == schema.PRECISIONS
    for part in schema.ONNX_FILES:
        for precision in schema.PRECISIONS:
            name = schema.onnx_file(part, precision)
            assert runtime.variant_file(part, precision) == name and runtime.file_precision(name) == precision


def test_precision_picks_the_variant_files(runs, images, tmp_path):
    bundle = _bundle_with_int8(runs, tmp_path)
    fp32 = _runtime(bundle)
    int8 = Runtime(bundle, precision="int8", providers=["CPUExecutionProvider"], intra_op_threads=1)
    assert fp32.precision == "fp32" and set(fp32.sessions) == {"encoder", "decoder"}
    assert int8.precision == "int8" and set(int8.sessions) == {"encoder"}
    assert int8.describe()["files"] == {"encoder": "encoder.int8.onnx"}
    np.testing.assert_allclose(int8.encode(images), fp32.encode(images), atol=1e-6)
    with pytest.raises(BundleError, match=r"has no fp16 files \(encoder.fp16.onnx, decoder.fp16.onnx, "
                                          r"autoencoder.fp16.onnx\); it has fp32 \(encoder.onnx, decoder.onnx\), "
                                          r"int8 \(encoder.int8.onnx\): pass precision= one of those\.$"):
        Runtime(bundle, precision="fp16")
    with pytest.raises(BundleError, match=r"has no decoder .decoder.onnx., which decode needs"):
        int8.decode(np.zeros((1, 4), np.float32))
    # A lone file's name says its precision.
    assert Runtime(bundle / "encoder.int8.onnx").precision == "int8"
    with pytest.raises(BundleError, match=r"encoder.int8.onnx is the int8 variant \(by its name\), not fp32"):
        Runtime(bundle / "encoder.int8.onnx", precision="fp32")
    with pytest.raises(BundleError, match=r"Unknown precision 'bf16'; choose one of fp32, fp16, int8"):
        Runtime(bundle, precision="bf16")


def test_cli_precision(runs, images, tmp_path, capsys):
    bundle = _bundle_with_int8(runs, tmp_path / "bundle")
    np.save(tmp_path / "x.npy", images)
    assert runtime.main(["encode", str(bundle), str(tmp_path / "x.npy"), "--out", str(tmp_path / "z.npy"),
                         "--precision", "int8", "--device", "cpu"]) == 0
    np.testing.assert_allclose(np.load(tmp_path / "z.npy"), _runtime(bundle).encode(images), atol=1e-6)
    assert runtime.main(["info", str(bundle), "--precision", "int8"]) == 0
    info = json.loads(capsys.readouterr().out.split("\n", 1)[1])
    assert info["precision"] == "int8" and info["device"] == "cpu" and info["files"] == {"encoder": "encoder.int8.onnx"}
    assert runtime.main(["encode", str(bundle), str(tmp_path / "x.npy"), "--out", str(tmp_path / "y.npy"),
                         "--precision", "fp16"]) == 2
    assert "has no fp16 files" in capsys.readouterr().err


@pytest.mark.skipif("CUDAExecutionProvider" in __import__("onnxruntime").get_available_providers(),
                    reason="this onnxruntime has the CUDA provider")
def test_cuda_without_the_cuda_provider_is_one_clear_line(runs):
    with pytest.raises(runtime.DeviceError) as info:
        Runtime(runs["dae"] / "export", device="cuda")
    message = str(info.value)
    assert "CUDAExecutionProvider" in message and "pip install onnxruntime-gpu" in message and "\n" not in message
    assert runtime.main(["info", str(runs["dae"] / "export")]) == 0  # the CPU is the default


def test_device_and_cuda_graph_arguments_are_checked(runs):
    export_dir = runs["dae"] / "export"
    with pytest.raises(InferenceError, match=r"device must be one of 'cpu', 'cuda'; got 'gpu'"):
        Runtime(export_dir, device="gpu")
    with pytest.raises(InferenceError, match=r"cuda_graph_batch needs device='cuda'.*got device='cpu'"):
        Runtime(export_dir, cuda_graph_batch=8)
    assert runtime.providers_for("cpu") == ["CPUExecutionProvider"]
    assert runtime.providers_for("cuda") == [("CUDAExecutionProvider", {"device_id": "0"}), "CPUExecutionProvider"]
    assert runtime.providers_for("cuda", cuda_graph=True)[0] == (
        "CUDAExecutionProvider", {"device_id": "0", "enable_cuda_graph": "1"})
    given = [("CUDAExecutionProvider", {"device_id": "1"})]
    assert runtime.providers_for("cuda", given, cuda_graph=True) == [
        ("CUDAExecutionProvider", {"device_id": "1", "enable_cuda_graph": "1"})]
    assert given == [("CUDAExecutionProvider", {"device_id": "1"})]  # not changed in place
    with pytest.raises(InferenceError, match="needs the CUDAExecutionProvider among the providers"):
        runtime.providers_for("cuda", ["CPUExecutionProvider"], cuda_graph=True)


def test_iobinding_gives_what_a_plain_run_gives_on_cpu(runs, images):
    for family in runs:
        bound = _runtime(runs[family] / "export")
        plain = Runtime(runs[family] / "export", providers=["CPUExecutionProvider"], intra_op_threads=1,
                        io_binding=False)
        assert bound.io_binding and not plain.io_binding
        z = bound.encode(images, batch_size=4)
        np.testing.assert_array_equal(z, plain.encode(images, batch_size=4))
        np.testing.assert_array_equal(bound.decode(z), plain.decode(z))
        np.testing.assert_array_equal(bound.reconstruct(images), plain.reconstruct(images))
        if bound.variational:
            for got, want in zip(bound.encode_distribution(images), plain.encode_distribution(images)):
                np.testing.assert_array_equal(got, want)


def test_pinned_host_memory_lives_as_long_as_its_views():
    import gc

    host = fake_cuda_module.LibcHost()
    a = host.empty((3, 4))
    assert a.shape == (3, 4) and a.dtype == np.float32 and a.flags.c_contiguous and a.flags.writeable
    a[...] = 1.5
    view = a[1:]
    del a
    gc.collect()
    assert len(host.live) == 1 and float(view.sum()) == 12.0
    del view
    gc.collect()
    assert not host.live


def test_without_a_gpu_pinned_memory_is_not_loaded():
    if "CUDAExecutionProvider" in __import__("onnxruntime").get_available_providers():
        pytest.skip("this onnxruntime has the CUDA provider")
    # No CUDA runtime library, or one (a CUDA toolkit) that finds no GPU to pin memory for.
    assert runtime.PinnedHost.load() is None
    assert "libcudart" in runtime.PinnedHost.load_error


@pytest.fixture
def fake_cuda(monkeypatch):
    return fake_cuda_module.install(monkeypatch)


@pytest.mark.parametrize("pinned", [False, True])
def test_cuda_path_with_faked_providers_gives_the_cpu_results(runs, images, fake_cuda, monkeypatch, pinned):
    host = fake_cuda_module.LibcHost()
    monkeypatch.setattr(runtime.PinnedHost, "load", classmethod(lambda cls: host if pinned else None))
    export_dir = runs["conv_vae"] / "export"
    cpu = Runtime(export_dir, providers=["CPUExecutionProvider"])
    fake_cuda.made = []
    rt = Runtime(export_dir, device="cuda")
    assert rt.device == "cuda" and rt.pinned_memory is pinned and not rt.graphs
    assert fake_cuda.made[0].asked == [("CUDAExecutionProvider", {"device_id": "0"}), "CPUExecutionProvider"]
    assert rt.describe()["host_memory"] == ("page-locked (cudaHostAlloc)" if pinned else
                                            "pageable: no CUDA runtime library (test)")
    np.testing.assert_allclose(rt.encode(images, batch_size=4), cpu.encode(images), atol=1e-6)
    np.testing.assert_allclose(rt.reconstruct(images), cpu.reconstruct(images), atol=1e-6)
    assert bool(host.live) is pinned  # the staging buffers


def test_cuda_graph_mode_binds_once_and_pads_to_the_fixed_batch(runs, fake_cuda):
    rng = np.random.default_rng(3)
    for family in runs:
        export_dir = runs[family] / "export"
        cpu = Runtime(export_dir, providers=["CPUExecutionProvider"])
        fake_cuda.made = []
        rt = Runtime(export_dir, device="cuda", cuda_graph_batch=4)
        assert all(s.asked[0] == ("CUDAExecutionProvider", {"device_id": "0", "enable_cuda_graph": "1"})
                   for s in fake_cuda.made)
        assert set(rt.graphs) == set(rt.sessions) == {"encoder", "decoder", "autoencoder"}
        encoder = rt.graphs["encoder"]
        session = next(s for s in fake_cuda.made if s._session is encoder.session._session)
        input_ptr, output_ptrs = encoder.input.data_ptr(), [o.data_ptr() for o in encoder.outputs]
        warmup = len(session.bound_runs)
        for n in (4, 1, 6, 9):  # the batch, smaller (padded), larger (cut, then padded), several pieces
            x = rng.uniform(0, 1, (n, 28, 28, 1)).astype(np.float32)
            np.testing.assert_allclose(rt.encode(x, batch_size=2), cpu.encode(x), atol=1e-6)
            np.testing.assert_allclose(rt.reconstruct(x), cpu.reconstruct(x), atol=1e-6)
            z = cpu.encode(x)
            np.testing.assert_allclose(rt.decode(z), cpu.decode(z), atol=1e-6)
            if rt.variational:
                for got, want in zip(rt.encode_distribution(x), cpu.encode_distribution(x)):
                    np.testing.assert_allclose(got, want, atol=1e-6)
        # Every run replays the one binding on the same buffers: what a captured CUDA graph needs.
        pieces = sum(-(-n // 4) for n in (4, 1, 6, 9)) * (2 if rt.variational else 1)
        assert len(session.bound_runs) == warmup + pieces
        assert all(b is encoder.binding for b in session.bound_runs)
        assert encoder.input.data_ptr() == input_ptr and [o.data_ptr() for o in encoder.outputs] == output_ptrs
        assert not encoder.staging[1:].any()  # the last piece (9 = 4 + 4 + 1) was padded with zeros
        assert rt.describe()["cuda_graph_batch"] == 4
    with pytest.raises(InferenceError, match="cuda_graph_batch must be a positive integer; got 0"):
        Runtime(runs["dae"] / "export", device="cuda", cuda_graph_batch=0)


def test_vq_vae_indices_from_the_exported_encoder(runs, images, tmp_path):
    import keras

    run = export_tiny_run(tmp_path, "vq_vae")
    rt = _runtime(run / "export")
    model = keras.models.load_model(run / "model.keras")
    latent, indices = model.encode_with_indices(images)
    got = rt.encode_indices(images)
    assert got.dtype == np.int32 and got.shape == indices.shape
    np.testing.assert_array_equal(got, indices)
    np.testing.assert_allclose(rt.encode(images), latent, atol=1e-5)
    np.testing.assert_allclose(rt.decode(rt.encode(images)), model.decode_indices(indices), atol=1e-5)
    with pytest.raises(InferenceError, match="no encoder output .indices.*Only a VQ-VAE has indices"):
        _runtime(runs["dae"] / "export").encode_indices(images)
    # The search scores SEARCH_BLOCK_TOKENS tokens a call, FAISS's query block; the decoder has no search.
    from export import runtime
    from zoo.models import vq_vae

    rows = {role: runtime.rows_per_call(session) for role, session in rt.sessions.items()}
    assert rows == {"encoder": vq_vae.SEARCH_BLOCK_TOKENS // model.tokens, "decoder": runtime.DEFAULT_BATCH_SIZE,
                    "autoencoder": vq_vae.SEARCH_BLOCK_TOKENS // model.tokens}


# --- CPU serving plans (Runtime.tune) -----------------------------------------------------------------------


@pytest.mark.parametrize("batch, rows, threads", [(1, 1024, 2), (8, 1024, 2), (64, 1024, 2), (1024, 1024, 2),
                                                  (4096, 1024, 2), (4096, 64, 4), (300, 1024, 1)])
def test_plan_candidates_start_with_the_untuned_plan_and_fit_the_batch(batch, rows, threads):
    plans = runtime.plan_candidates(batch, rows, threads)
    assert plans[0] == runtime.Plan(min(rows, batch))  # what an untuned Runtime does
    assert len(plans) == len(set(plans))
    for plan in plans:
        assert 1 <= plan.rows <= min(rows, batch) and plan.workers in (1, threads)
        if plan.workers > 1:  # every worker gets rows, in whole pieces of at most plan.rows
            assert batch >= plan.workers and plan.rows <= -(-batch // plan.workers)
    sizes = {p.rows for p in plans if p.workers == 1}
    assert sizes == {min(rows, batch)} | {r for r in runtime.TUNE_ROWS if r < min(rows, batch)}
    assert any(p.workers > 1 for p in plans) == (threads > 1 and batch >= threads)
    if batch == 1:
        assert plans == [runtime.Plan(1)]  # nothing to choose


@pytest.mark.parametrize("n, workers", [(1, 2), (7, 2), (70, 3), (4096, 2)])
def test_slices_cover_every_row_once(n, workers):
    bounds = runtime.slice_bounds(n, workers)
    assert bounds[0][0] == 0 and bounds[-1][1] == n and len(bounds) == min(n, workers)
    assert all(a < b for a, b in bounds) and all(b == c for (_, b), (c, _) in zip(bounds, bounds[1:]))
    assert max(b - a for a, b in bounds) - min(b - a for a, b in bounds) <= 1


def test_tune_chooses_among_the_candidates_and_changes_no_output(runs, images):
    rt = Runtime(runs["conv_vae"] / "export", providers=["CPUExecutionProvider"], intra_op_threads=2)
    x = np.random.default_rng(4).uniform(0, 1, (70, 28, 28, 1)).astype(np.float32)
    z = np.random.default_rng(5).standard_normal((70, rt.latent_dim)).astype(np.float32)
    want = rt.encode_distribution(x), rt.decode(z), rt.reconstruct(x)
    report = rt.tune(64, seconds=0.002)
    names = [str(p) for p in runtime.plan_candidates(64, runtime.DEFAULT_BATCH_SIZE, 2)]
    assert set(report) == set(rt.sessions)
    for role, entry in report.items():
        assert list(entry["candidates"]) == names and all(v > 0 for v in entry["candidates"].values())
        assert entry["batch_size"] == 64 and runtime.Plan(**entry["plan"]) == rt.plans[role]
        assert str(rt.plans[role]) in names
    assert rt.describe()["plans"] == {role: entry["plan"] for role, entry in report.items()}
    got = rt.encode_distribution(x), rt.decode(z), rt.reconstruct(x)
    for g, w in zip(got[0], want[0]):
        np.testing.assert_allclose(g, w, atol=1e-5)
    np.testing.assert_allclose(got[1], want[1], atol=1e-6)
    np.testing.assert_allclose(got[2], want[2], atol=1e-6)
    # A batch_size argument still wins over the plan.
    np.testing.assert_array_equal(rt.decode(z, batch_size=70), rt.decode(z, batch_size=70))


def test_a_plan_with_workers_runs_every_slice_on_its_own_session(runs, monkeypatch):
    """Where tuning picks one-thread workers, each takes its own slice of the rows, in pieces, at the same time,
    and writes straight into its rows of the result: what the single session gives."""
    rt = Runtime(runs["dae"] / "export", providers=["CPUExecutionProvider"], intra_op_threads=2)
    z = np.random.default_rng(6).standard_normal((70, rt.latent_dim)).astype(np.float32)
    want = rt.decode(z)
    chosen = runtime.Plan(8, 2)
    monkeypatch.setattr(runtime, "choose_plan", lambda runs, seconds=0: (chosen, {p: 1.0 for p in runs}))
    assert rt.tune(64, roles=["decoder"])["decoder"]["plan"] == {"rows": 8, "workers": 2}
    workers = rt._workers["decoder"]
    assert len(workers) == 2 and all(w is not rt.sessions["decoder"] for w in workers)
    calls = {id(w): 0 for w in workers}
    for w in workers:
        real = w.run_with_iobinding
        w.run_with_iobinding = lambda binding, *a, _real=real, _id=id(w): calls.__setitem__(
            _id, calls[_id] + 1) or _real(binding, *a)
    monkeypatch.setattr(np, "concatenate", None)  # slices are views of one result, as pieces are
    got = rt.decode(z)
    assert list(calls.values()) == [5, 5]  # 35 rows each, in pieces of 8
    np.testing.assert_allclose(got, want, atol=1e-6)
    rt.decode(z[:5])  # a batch no larger than a piece: one call on the session itself
    assert list(calls.values()) == [5, 5]
    assert "encoder" not in rt.plans  # not tuned: served as before


def test_tune_is_refused_where_it_cannot_apply(runs):
    plain = Runtime(runs["dae"] / "export", providers=["CPUExecutionProvider"], io_binding=False)
    with pytest.raises(InferenceError, match=r"tune\(\) .* needs device='cpu' and io_binding=True .*io_binding=False"):
        plain.tune(64)
    with pytest.raises(InputError, match="batch_size must be a positive integer"):
        _runtime(runs["dae"] / "export").tune(0)
    with pytest.raises(BundleError, match="has no autoencoder"):
        Runtime(runs["dae"] / "export" / "encoder.onnx").tune(8, roles=["autoencoder"])
    # Nothing to choose at batch 1, or on one thread with a batch no larger than the smallest piece.
    rt = _runtime(runs["dae"] / "export")
    assert rt.tune(1, seconds=0.001)["encoder"] == {"plan": None, "batch_size": 1, "candidates": {}}
    assert rt.plans == {}


def _reshape_model(path, shape, out_dims, also=None, infer=True):
    """z (n, 3) -> MatMul -> (n, 16) -> Reshape(shape) -> image out_dims; `also`: "output" makes the MatMul's
    result a second graph output, "reader" gives it a second reader; `infer`: record the shapes of inner
    tensors (value_info), as every aezoo export does."""
    from onnx import TensorProto, helper, numpy_helper

    nodes = [helper.make_node("MatMul", ["z", "w"], ["logits"]), helper.make_node("Reshape", ["logits", "shape"],
                                                                                  ["image"])]
    outputs = [helper.make_tensor_value_info("image", TensorProto.FLOAT, out_dims)]
    if also == "output":
        outputs.append(helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["n", 16]))
    elif also == "reader":
        nodes.append(helper.make_node("ReduceMean", ["logits"], ["mean"], keepdims=0))
        outputs.append(helper.make_tensor_value_info("mean", TensorProto.FLOAT, ["n"]))
    init = [numpy_helper.from_array(np.arange(48, dtype="float32").reshape(3, 16) / 40 - 0.5, "w"),
            numpy_helper.from_array(np.array(shape, dtype="int64"), "shape")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("z", TensorProto.FLOAT, ["n", 3])],
                              outputs, init)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.save(onnx.shape_inference.infer_shapes(model) if infer else model, str(path))
    return path


def test_an_output_made_by_a_trailing_reshape_is_served_flat(tmp_path, monkeypatch):
    """serving_model drops a Reshape that makes a graph output from rows of the same size (onnxruntime would copy
    every value into the output): the output keeps its name and its values, and comes out flat. It edits the
    protobuf itself, so it works where onnx is not installed."""
    import onnxruntime as ort


    z = np.random.default_rng(0).normal(size=(6, 3)).astype("float32")

    def run(source):
        return ort.InferenceSession(source, providers=["CPUExecutionProvider"]).run(None, {"z": z})

    path = _reshape_model(tmp_path / "flat.onnx", [-1, 4, 4, 1], ["n", 4, 4, 1])
    with monkeypatch.context() as blocked:
        blocked.setitem(sys.modules, "onnx", None)  # import onnx raises ImportError
        source, flat = runtime.serving_model(path)
    assert isinstance(source, bytes) and flat == {"image": (4, 4, 1)}
    served = onnx.load_from_string(source)
    onnx.checker.check_model(served)
    assert [n.op_type for n in served.graph.node] == ["MatMul"]
    assert [o.name for o in served.graph.output] == ["image"] and [t.name for t in served.graph.initializer] == ["w"]
    got, want = run(source)[0], run(str(path))[0]
    assert got.shape == (6, 16) and want.shape == (6, 4, 4, 1)
    np.testing.assert_array_equal(got.reshape(want.shape), want)
    # Left as they are: a Reshape that regroups rows, one whose input is also an output or read by another node,
    # one whose input's shape the file does not record; and a file that is not ONNX.
    for name, shape, dims, also, infer in (("rows", [-1, 32], ["m", 32], None, True),
                                           ("output", [-1, 4, 4, 1], ["n", 4, 4, 1], "output", True),
                                           ("reader", [-1, 4, 4, 1], ["n", 4, 4, 1], "reader", True),
                                           ("unrecorded", [-1, 4, 4, 1], ["n", 4, 4, 1], None, False)):
        path = _reshape_model(tmp_path / (name + ".onnx"), shape, dims, also, infer)
        assert runtime.serving_model(path) == (str(path), {}), name
    (tmp_path / "junk.onnx").write_bytes(b"\xff" * 7)
    assert runtime.serving_model(tmp_path / "junk.onnx") == (str(tmp_path / "junk.onnx"), {})
