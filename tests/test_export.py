"""Export of every family to SavedModel and ONNX, with the parity check; the CLI's errors; the release bundle."""

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import onnx
import pytest

import zoo
from zoo import fileio, schema
from zoo.presets import as_now
from export import exporter, release, runtime
from tests.helpers import write_idx_dir, write_run_dir

FAMILIES = zoo.list_models()
REPO = Path(__file__).resolve().parents[1]


pytestmark = pytest.mark.usefixtures("offline")  # tests/conftest.py


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    base = tmp_path_factory.mktemp("export")
    write_idx_dir(base / "idx", n_train=128, n_test=64)
    return base


@pytest.fixture(scope="module")
def exports(base):
    """family -> (run dir, ExportResult), each trained and exported once, on first use."""
    done = {}

    def get(family):
        if family not in done:
            run = write_run_dir(base / family, family, base / "idx")
            done[family] = run, exporter.export_run(run, verbose=0)
        return done[family]

    return get


def _dims(value):
    return [d.dim_param or d.dim_value for d in value.type.tensor_type.shape.dim]


@pytest.mark.parametrize("family", FAMILIES)
def test_export_every_family_to_both_formats_with_parity(family, exports):
    run, result = exports(family)
    out = run / "export"
    assert result.out == out
    assert sorted(p.name for p in out.iterdir()) == [
        fileio.MARKER, "autoencoder.onnx", "decoder.onnx", "encoder.onnx", "parity.json", "savedmodel"]
    assert not [p for p in run.iterdir() if p.name.startswith(".")]  # no temporary folders left

    parity = json.loads((out / "parity.json").read_text())
    assert parity["passed"] and parity["tolerance"] == 1e-4 and parity["batch_sizes"] == [1, 64]
    assert parity["inputs"]["dataset"] == "mnist" and parity["inputs"]["source"].startswith("idx:")
    for name in ("encoder.onnx", "decoder.onnx", "autoencoder.onnx", "savedmodel:encode", "savedmodel:decode",
                 "savedmodel:reconstruct"):
        assert parity["max_abs_diff"][name] <= 1e-4, name
    checked = {(c["file"], c["batch_size"]) for c in parity["checks"] if c["format"] == "onnx"}
    assert checked == {(f, b) for f in ("encoder.onnx", "decoder.onnx", "autoencoder.onnx") for b in (1, 64)}

    variational = family in ("vae", "conv_vae")
    code = list(zoo.registry.get_class(family).encoder_outputs)  # (latent, indices) for a VQ-VAE
    expected = {"encoder": (["image"], code), "decoder": (["latent"], ["reconstruction"]),
                "autoencoder": (["image"], ["reconstruction"])}
    for role, (inputs, outputs) in expected.items():
        model = onnx.load(str(out / (role + ".onnx")))
        onnx.checker.check_model(model, full_check=True)
        assert [i.name for i in model.graph.input] == inputs
        assert [o.name for o in model.graph.output] == outputs
        for value in list(model.graph.input) + list(model.graph.output):
            assert _dims(value)[0] == "batch"
        assert any(o.domain in ("", "ai.onnx") and o.version == 17 for o in model.opset_import)
        meta = runtime.decode_metadata({p.key: p.value for p in model.metadata_props})
        assert meta["role"] == role and meta["family"] == family and meta["preset"] == family + "_mnist"
        assert meta["latent_dim"] == 4 and meta["input_shape"] == [28, 28, 1]
        assert meta["normalization"] == "float32 in [0, 1], NHWC"
        assert meta["variational"] is variational and meta["outputs"] == outputs
        assert "psnr_db" in meta["metrics"]["metrics"]
        assert {"training", "export"} <= set(meta["versions"])
        assert meta["versions"]["export"]["opset"] == 17 and "tf2onnx" in meta["versions"]["export"]
        assert ("sampling" in meta) is variational
        for node in model.graph.node:
            if node.op_type == "ConvTranspose":  # onnxruntime's CUDA provider needs symmetric pads
                pads = next(list(a.ints) for a in node.attribute if a.name == "pads")
                assert pads[:len(pads) // 2] == pads[len(pads) // 2:], node.name
    _runtime_gives_what_the_files_give(out)


def _runtime_gives_what_the_files_give(out):
    """The Runtime (which serves an output made by a trailing Reshape flat) gives each file's own outputs, in the
    shapes the file declares."""
    import onnxruntime as ort

    rt = runtime.Runtime(out, providers=["CPUExecutionProvider"], intra_op_threads=1)
    x = np.random.default_rng(0).uniform(0, 1, (5, 28, 28, 1)).astype("float32")
    z = rt.encode(x)
    for role, given, got in (("encoder", x, rt._run("encoder", "encode", x, None)),
                             ("decoder", z, [rt.decode(z)]), ("autoencoder", x, [rt.reconstruct(x)])):
        session = ort.InferenceSession(str(out / (role + ".onnx")), providers=["CPUExecutionProvider"])
        want = session.run(None, {session.get_inputs()[0].name: given})
        assert len(got) == len(want), role
        for g, w in zip(got, want):
            assert g.shape == w.shape and g.dtype == w.dtype, role
            np.testing.assert_allclose(g, w, atol=1e-6, err_msg=role)
    # Every dense or conv decoder ends in a Reshape to the image shape here; it is served flat.
    assert rt.describe()["flat_outputs"]["decoder"] == {"reconstruction": [28, 28, 1]}


def test_savedmodel_endpoints_load_with_plain_tensorflow(exports, base, tmp_path):
    """tf.saved_model.load in a process where the project's packages cannot be imported."""
    families = ["dae", "conv_vae"]
    runs = {f: exports(f)[0] for f in families}
    images = np.random.default_rng(0).uniform(0, 1, (5, 28, 28, 1)).astype("float32")
    np.save(tmp_path / "images.npy", images)
    script = textwrap.dedent("""
        import json, sys
        class Block:
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] in ("zoo", "export"):
                    raise ImportError("project code is blocked: " + name)
        sys.meta_path.insert(0, Block())
        import numpy as np
        import tensorflow as tf
        runs = json.loads(sys.argv[1])
        images = tf.constant(np.load(sys.argv[2]))
        results = {}
        for family, run in runs.items():
            model = tf.saved_model.load(run + "/export/savedmodel")
            sigs = model.signatures
            results[family + ":signatures"] = sorted(sigs)
            results[family + ":inputs"] = {k: sorted(sigs[k].structured_input_signature[1]) for k in sigs}
            code = sigs["encode"](image=images)
            z = code["z_mean"] if "z_mean" in code else code["latent"]
            out = {"code": z.numpy(), "decoded": sigs["decode"](latent=z)["reconstruction"].numpy(),
                   "reconstructed": sigs["reconstruct"](image=images)["reconstruction"].numpy(),
                   "serving": sigs["serving_default"](image=images[:1])["reconstruction"].numpy()}
            np.savez(sys.argv[3] + "/" + family + ".npz", **out)
            results[family + ":outputs"] = sorted(code)
        print("RESULT " + json.dumps(results))
    """)
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", PYTHONPATH=str(REPO))
    proc = subprocess.run([sys.executable, "-c", script, json.dumps({f: str(r) for f, r in runs.items()}),
                           str(tmp_path / "images.npy"), str(tmp_path)], capture_output=True, text=True, env=env,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads(proc.stdout.split("RESULT ", 1)[1])
    for family in families:
        assert results[family + ":signatures"] == ["decode", "encode", "reconstruct", "serving_default"]
        assert results[family + ":inputs"] == {"decode": ["latent"], "encode": ["image"], "reconstruct": ["image"],
                                               "serving_default": ["image"]}
        model = _load_keras(runs[family])
        got = np.load(tmp_path / (family + ".npz"))
        np.testing.assert_allclose(got["code"], model.encode(images), atol=1e-5)
        np.testing.assert_allclose(got["reconstructed"], model.reconstruct(images), atol=1e-5)
        np.testing.assert_allclose(got["decoded"], got["reconstructed"], atol=1e-5)
        np.testing.assert_allclose(got["serving"], got["reconstructed"][:1], atol=1e-5)
    assert results["conv_vae:outputs"] == ["z_log_var", "z_mean"]


def _load_keras(run):
    import keras

    return keras.models.load_model(run / "model.keras")


def test_onnx_matches_keras_on_any_batch_size(exports):
    run, _ = exports("conv_dae")
    model = _load_keras(run)
    rt = runtime.Runtime(run / "export", providers=["CPUExecutionProvider"], intra_op_threads=1)
    for n in (1, 3, 17):
        x = np.random.default_rng(n).uniform(0, 1, (n, 28, 28, 1)).astype("float32")
        np.testing.assert_allclose(rt.reconstruct(x), model.reconstruct(x), atol=1e-4)
        np.testing.assert_allclose(rt.decode(rt.encode(x)), model.decode(model.encode(x)), atol=1e-4)


def test_failed_parity_fails_the_export_and_writes_nothing(exports, tmp_path):
    run, _ = exports("ae")
    out = tmp_path / "out"
    with pytest.raises(exporter.ParityError, match="(?s)Parity check failed.*encoder.onnx"):
        exporter.export_run(run, out=out, formats="onnx", tolerance=-1.0, verbose=0)
    assert not out.exists() and list(tmp_path.iterdir()) == []


def test_onnx_only_export_with_other_opset_and_out(exports, tmp_path):
    run, _ = exports("linear_ae")
    result = exporter.export_run(run, formats=["onnx"], opset=15, out=tmp_path / "x", verbose=0)
    assert sorted(p.name for p in result.out.iterdir()) == [
        fileio.MARKER, "autoencoder.onnx", "decoder.onnx", "encoder.onnx", "parity.json"]
    model = onnx.load(str(result.out / "encoder.onnx"))
    assert any(o.domain in ("", "ai.onnx") and o.version == 15 for o in model.opset_import)
    assert result.parity["opset"] == 15 and result.parity["formats"] == ["onnx"]


def test_preset_name_resolves_to_runs_dir(exports, tmp_path, monkeypatch):
    run, _ = exports("ae")
    (tmp_path / "runs").mkdir()
    (tmp_path / "runs" / "ae_mnist").symlink_to(run, target_is_directory=True)
    monkeypatch.chdir(tmp_path)
    assert exporter.resolve_run_dir("ae_mnist") == Path("runs/ae_mnist")


@pytest.mark.parametrize("argv, message", [
    (["nowhere_at_all"], "No run dir nowhere_at_all.*python -m zoo.train PRESET --out runs/nowhere_at_all"),
    (["ae_mnist"], "No run dir ae_mnist.*`python -m zoo.train ae_mnist`"),
    (["{run}", "--formats", "onnx,tflite"], "Unknown export format.*tflite.*savedmodel, onnx"),
    (["{run}", "--opset", "99"], "--opset 99 is not supported"),
    (["{empty}"], "not a finished run dir: it lacks model.keras, config.json"),
])
def test_cli_errors_are_one_clear_line(argv, message, exports, tmp_path, capsys):
    import re

    run, _ = exports("ae")
    (tmp_path / "empty").mkdir()
    argv = [a.format(run=run, empty=tmp_path / "empty") for a in argv]
    assert exporter.main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "Traceback" not in err
    assert re.search(message, err, re.S), err


def test_parity_without_test_data_says_how_to_provide_it(exports, tmp_path, capsys):
    run, _ = exports("ae")
    moved = tmp_path / "run"
    moved.mkdir()
    for name in ("model.keras", "metrics.json"):
        (moved / name).write_bytes((run / name).read_bytes())
    config = json.loads((run / "config.json").read_text())
    config["data_dir"] = str(tmp_path / "gone")  # trained on a machine whose data is not here
    (moved / "config.json").write_text(json.dumps(config))
    assert exporter.main([str(moved), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "parity check needs test images of mnist" in err and "--data-dir" in err
    assert not (moved / "export").exists()
    # ...and --data-dir is the way out.
    assert exporter.main([str(moved), "--quiet", "--formats", "onnx", "--data-dir", str(run.parent / "idx")]) == 0
    assert (moved / "export" / "parity.json").is_file()


def test_release_bundle_has_checksummed_files_and_index(exports, tmp_path):
    import hashlib

    runs = [exports("dae")[0], exports("conv_vae")[0]]
    bundles = release.release(runs, tmp_path / "dist", verbose=0)
    assert sorted(bundles) == ["conv_vae_mnist", "dae_mnist"]
    for preset, bundle in bundles.items():
        assert fileio.marker_kind(bundle) == release.BUNDLE_KIND
        names = sorted(p.name for p in bundle.iterdir() if p.name != fileio.MARKER)
        # Each weight once: no autoencoder.onnx, SavedModel or model.keras beside the encoder and decoder.
        assert names[:4] == ["SHA256SUMS", "decoder.onnx", "encoder.onnx", "keras_weights.json"]
        assert names[4:] in (["manifest.json"], ["keras_extra.npz", "manifest.json"])
        manifest = json.loads((bundle / "manifest.json").read_text())
        assert manifest["preset"] == preset and manifest["parity"]["passed"]
        # Described against the preset as it is now (tests/test_overrides.py tests zoo.presets.as_now).
        config = schema.RunConfig.load(runs[0] if preset == "dae_mnist" else runs[1])
        assert (manifest["description"], manifest["overrides"]) == as_now(config)
        assert manifest["format_version"] == schema.FORMAT_VERSION and manifest["release"] == "dist"
        assert {e["format"] for e in manifest["files"]} == {"onnx", "keras"}
        assert "psnr_db" in manifest["metrics"]["metrics"] and "tf2onnx" in manifest["versions"]["export"]
        for entry in manifest["files"]:
            data = (bundle / entry["file"]).read_bytes()
            assert entry["size"] == len(data) and entry["sha256"] == hashlib.sha256(data).hexdigest()
        sums = dict(reversed(line.split("  ")) for line in (bundle / "SHA256SUMS").read_text().splitlines())
        assert set(sums) == set(names) - {"SHA256SUMS"}
        assert sums["manifest.json"] == hashlib.sha256((bundle / "manifest.json").read_bytes()).hexdigest()
    assert json.loads((bundles["conv_vae_mnist"] / "manifest.json").read_text())["variational"] is True
    index = json.loads((tmp_path / "dist" / "index.json").read_text())
    assert sorted(index["presets"]) == ["conv_vae_mnist", "dae_mnist"]
    # Releasing again gives the same files.
    first = (bundles["dae_mnist"] / "SHA256SUMS").read_bytes()
    release.release([runs[0]], tmp_path / "dist", verbose=0)
    assert (bundles["dae_mnist"] / "SHA256SUMS").read_bytes() == first
    assert sorted(json.loads((tmp_path / "dist" / "index.json").read_text())["presets"]) == [
        "conv_vae_mnist", "dae_mnist"]


def test_release_refuses_two_runs_of_one_preset(exports, tmp_path, capsys):
    run, _ = exports("dae")
    assert release.main([str(run), str(run), "--out", str(tmp_path / "dist"), "--quiet"]) == 2
    assert "both preset dae_mnist" in capsys.readouterr().err
    assert not (tmp_path / "dist").exists()


def test_end_to_end_from_zoo_train(base, tmp_path):
    """A run dir written by zoo.train itself (real preset architecture, a few images) exports and releases."""
    train = pytest.importorskip("zoo.train")
    run = train.train("conv_ae_fashion_mnist", out=tmp_path / "run", epochs=1, batch_size=32, limit=64,
                      data_dir=base / "idx", verbose=0)
    result = exporter.export_run(run, verbose=0)
    assert result.parity["passed"] and max(result.parity["max_abs_diff"].values()) <= 1e-4
    bundle = release.release([run], tmp_path / "dist", verbose=0)["conv_ae_fashion_mnist"]
    rt = runtime.Runtime(bundle, providers=["CPUExecutionProvider"], intra_op_threads=1)
    assert rt.preset == "conv_ae_fashion_mnist" and rt.image_shape == (28, 28, 1) and rt.latent_dim == 30
    assert rt.metrics["metrics"]["psnr_db"] == json.loads((run / "metrics.json").read_text())["metrics"]["psnr_db"]


def test_parity_images_that_do_not_fit_the_model(exports, tmp_path):
    run, _ = exports("ae")
    with pytest.raises(exporter.ExportError, match=r"do not fit the model: images must have shape \(batch, 28, 28, "
                                                   r"1\); got \(4, 32, 32, 3\)"):
        exporter.export_run(run, out=tmp_path / "x", images=np.zeros((4, 32, 32, 3), np.float32), verbose=0)
    assert not (tmp_path / "x").exists()


# --- lean graphs (export.optimize) ---------------------------------------------------------------------


def _image_consumers(model):
    return [n.op_type for n in model.graph.node if "image" in n.input]


@pytest.mark.parametrize("family", ["conv_ae", "deep_ae"])
@pytest.mark.parametrize("layout", ["nhwc", "nchw"])
def test_lean_graphs_have_static_shapes_and_few_transposes(family, layout, exports, tmp_path):
    from export import optimize

    run, default = exports(family)
    result = default if layout == "nhwc" else exporter.export_run(run, formats="onnx", layout=layout,
                                                                   out=tmp_path / "x", verbose=0)
    assert result.parity["passed"] and max(result.parity["max_abs_diff"].values()) <= 1e-4
    assert result.parity["inputs"]["layout"] == layout
    for role in ("encoder", "decoder", "autoencoder"):
        model = onnx.load(str(result.out / (role + ".onnx")))
        onnx.checker.check_model(model, full_check=True)
        ops = optimize.op_counts(model)
        assert not {"Shape", "Gather", "Cast"} & set(ops), (role, ops)
        # A Concat computes no shape: it only joins the phases of a transposed convolution (see below).
        assert all("__phase" in n.name for n in model.graph.node if n.op_type == "Concat"), role
        transposes = optimize.layout_transposes(model)
        assert transposes["input"] + transposes["output"] + transposes["inner"] <= 2, (role, transposes)
        # Every tensor's shape is known but for the batch axis (weights moved for a layer have no batch axis).
        inferred = onnx.shape_inference.infer_shapes(model, strict_mode=True).graph
        weights = optimize.weight_values(model.graph)
        for value in [v for v in list(inferred.value_info) + list(inferred.output) if v.name not in weights]:
            dims = _dims(value)
            assert dims[0] == "batch" or isinstance(dims[0], int) and len(dims) == 1, (role, value.name, dims)
            assert all(isinstance(d, int) and d > 0 for d in dims[1:]), (role, value.name, dims)
        meta = runtime.decode_metadata({p.key: p.value for p in model.metadata_props})
        assert meta["layout"] == layout
        images = [v for v in list(model.graph.input) + list(model.graph.output) if len(_dims(v)) == 4]
        for value in images:
            assert _dims(value) == (["batch", 28, 28, 1] if layout == "nhwc" else ["batch", 1, 28, 28])
        if layout == "nchw":
            assert meta["input_shape"] == [1, 28, 28] and meta["normalization"].endswith("NCHW")
            if "image" in [i.name for i in model.graph.input]:
                # Nothing between the caller's NCHW images and the first layer.
                assert _image_consumers(model) == (["Conv"] if family == "conv_ae" else ["Reshape"])
            assert optimize.layout_transposes(model)["output"] == 0
        else:
            assert meta["input_shape"] == [28, 28, 1] and meta["normalization"] == "float32 in [0, 1], NHWC"
            assert transposes["input"] + transposes["output"] + transposes["inner"] <= 2


def test_nchw_export_runs_on_nchw_images(exports, tmp_path):
    import onnxruntime as ort

    run, _ = exports("conv_ae")
    out = exporter.export_run(run, formats="onnx", layout="nchw", out=tmp_path / "x", verbose=0).out
    model = _load_keras(run)
    x = np.random.default_rng(3).uniform(0, 1, (5, 28, 28, 1)).astype("float32")
    session = ort.InferenceSession(str(out / "autoencoder.onnx"), providers=["CPUExecutionProvider"])
    got = session.run(None, {"image": x.transpose(0, 3, 1, 2).copy()})[0]
    assert got.shape == (5, 1, 28, 28)
    np.testing.assert_allclose(got.transpose(0, 2, 3, 1), model.reconstruct(x), atol=1e-4)


def test_unknown_layout_is_one_clear_line(exports, capsys):
    run, _ = exports("ae")
    assert exporter.main([str(run), "--layout", "nwhc"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: Unknown layout 'nwhc'; choose nhwc or nchw") and "Traceback" not in err


def test_conv_transpose_forms_compute_the_same(exports, tmp_path):
    """Both ConvTranspose forms pass the parity gate and agree: "phases" (the default, one Conv per output phase,
    interleaved in NHWC) and "slice" (the ConvTranspose kept, padded symmetrically and cropped)."""
    import onnxruntime as ort

    from export import optimize

    from export import cli

    # The command line keeps its own copy of the layouts (it does not import onnx).
    assert cli.LAYOUTS == optimize.LAYOUTS and cli.CONV_TRANSPOSE_FORMS[0] == optimize.DEFAULT_CONV_TRANSPOSE
    run, result = exports("conv_ae")
    model = onnx.load(str(result.out / "decoder.onnx"))
    ops = optimize.op_counts(model)
    assert "ConvTranspose" not in ops and ops["Concat"] == 2 * 3, ops  # 2 layers: 2 rows and their join each
    head = [n for n in model.graph.node if n.name.endswith(optimize.TAP_SUM_SUFFIX)]
    assert len(head) == 1 and head[0].output[0] in {n.input[0] for n in model.graph.node if n.op_type == "Sigmoid"}
    # The phase Relus are fused by onnxruntime only if they follow the Convs, not the interleave.
    readers = {i: n for n in model.graph.node for i in n.input}
    phases = [n for n in model.graph.node if n.op_type == "Conv" and "__phase" in n.name]
    assert len(phases) == 8 and all(readers[n.output[0]].op_type == "Relu" for n in phases)
    sliced = exporter.export_run(run, formats="onnx", conv_transpose="slice", out=tmp_path / "slice", verbose=0)
    assert sliced.parity["passed"]
    slice_ops = optimize.op_counts(onnx.load(str(sliced.out / "decoder.onnx")))
    assert slice_ops["ConvTranspose"] == 2 and slice_ops["Slice"] == 2 and "Concat" not in slice_ops
    z = np.random.default_rng(0).normal(size=(7, 4)).astype("float32")
    want, got = (ort.InferenceSession(str(path / "decoder.onnx"), providers=["CPUExecutionProvider"]).run(
        None, {"latent": z})[0] for path in (sliced.out, result.out))
    np.testing.assert_allclose(got, want, atol=1e-5)


def test_every_node_runs_on_the_cuda_provider(exports, tmp_path):
    """onnxruntime's profiler records the provider each node ran on: none may fall back to the CPU."""
    import onnxruntime as ort

    if "CUDAExecutionProvider" not in ort.get_available_providers():
        pytest.skip("onnxruntime has no CUDAExecutionProvider here (needs onnxruntime-gpu and a GPU)")
    if hasattr(ort, "preload_dlls"):  # CUDA and cuDNN from pip's nvidia-* packages
        ort.preload_dlls()
    for family in ("conv_ae", "deep_ae"):
        out = exports(family)[1].out
        for role in ("encoder", "decoder", "autoencoder"):
            options = ort.SessionOptions()
            options.enable_profiling = True
            options.profile_file_prefix = str(tmp_path / "{}_{}".format(family, role))
            session = ort.InferenceSession(str(out / (role + ".onnx")), options,
                                           providers=["CUDAExecutionProvider", "CPUExecutionProvider"])
            assert session.get_providers()[0] == "CUDAExecutionProvider", session.get_providers()
            feed = (np.zeros((8, 4), np.float32) if role == "decoder"
                    else np.zeros((8, 28, 28, 1), np.float32))
            session.run(None, {session.get_inputs()[0].name: feed})
            events = json.loads(Path(session.end_profiling()).read_text())
            placed = {e["args"]["op_name"] + " " + e["name"]: e["args"].get("provider")
                      for e in events if e.get("cat") == "Node" and "provider" in e.get("args", {})}
            assert placed, "the profile recorded no nodes"
            elsewhere = {node: provider for node, provider in placed.items() if provider != "CUDAExecutionProvider"}
            assert not elsewhere, (family, role, elsewhere)


@pytest.mark.parametrize("kernel, stride, pads", [(3, 2, [0, 0, 1, 1]), (3, 2, [1, 1, 0, 0]), (4, 2, [1, 1, 1, 1]),
                                                  (2, 2, [0, 0, 0, 0]), (5, 2, [1, 1, 2, 2]), (3, 3, [0, 0, 0, 0])])
def test_phase_form_is_exact_for_any_same_transposed_convolution(kernel, stride, pads):
    """Any ConvTranspose whose output is stride x its input, unnamed nodes included (names come from the
    outputs), with its bias and the Relu that reads it; then the image head split into taps and their sum."""
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    from export import optimize

    rng = np.random.default_rng(kernel * 10 + stride)
    side, out_side = 5, 5 * stride
    init = [numpy_helper.from_array(rng.normal(size=(3, 4, kernel, kernel)).astype("float32"), "w1"),
            numpy_helper.from_array(rng.normal(size=4).astype("float32"), "b1"),
            numpy_helper.from_array(rng.normal(size=(4, 2, kernel, kernel)).astype("float32"), "w2"),
            numpy_helper.from_array(rng.normal(size=(1, 2, 3, 3)).astype("float32"), "w3"),
            numpy_helper.from_array(rng.normal(size=1).astype("float32"), "b3")]
    nodes = [helper.make_node("ConvTranspose", ["x", "w1", "b1"], ["t1"], strides=[stride] * 2, pads=pads),
             helper.make_node("Relu", ["t1"], ["r1"]),
             helper.make_node("ConvTranspose", ["r1", "w2"], ["t2"], strides=[stride] * 2, pads=pads),
             helper.make_node("Conv", ["t2", "w3", "b3"], ["image"], pads=[1, 1, 1, 1])]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 3, side, side])],
                              [helper.make_tensor_value_info("image", TensorProto.FLOAT,
                                                             ["n", 1, out_side * stride, out_side * stride])], init)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    x = rng.normal(size=(2, 3, side, side)).astype("float32")
    want = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    assert optimize.phase_conv_transpose(model) == 2 and optimize.split_head_conv(model.graph) == 1
    assert optimize.split_head_conv(model.graph) == 0  # the tap sum is not split again
    ops = optimize.op_counts(model)
    assert "ConvTranspose" not in ops and "Relu" in ops and ops["Conv"] == 2 * stride ** 2 + 2
    assert {t.name for t in model.graph.initializer} >= {"w1", "w2", "w3"}  # the layers' own kernels, kept
    got = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    np.testing.assert_allclose(got, want, atol=1e-4, rtol=1e-5)


def test_reshape_last_moves_only_a_reshape_of_an_activation_read_by_it_alone():
    """optimize.reshape_last: output = Reshape(Sigmoid(x)) becomes Sigmoid(Reshape(x)), the same values; a
    Sigmoid that something else also reads keeps its place."""
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    from export import optimize

    def model(shared):
        nodes = [helper.make_node("MatMul", ["z", "w"], ["logits"]), helper.make_node("Sigmoid", ["logits"], ["p"]),
                 helper.make_node("Reshape", ["p", "shape"], ["image"])]
        outputs = [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["n", 4, 4, 1])]
        if shared:
            nodes.append(helper.make_node("ReduceMean", ["p"], ["mean"], keepdims=0))
            outputs.append(helper.make_tensor_value_info("mean", TensorProto.FLOAT, ["n"]))
        init = [numpy_helper.from_array(np.arange(48, dtype="float32").reshape(3, 16) / 40 - 0.5, "w"),
                numpy_helper.from_array(np.array([-1, 4, 4, 1], dtype="int64"), "shape")]
        graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("z", TensorProto.FLOAT, ["n", 3])],
                                  outputs, init)
        return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])

    z = np.random.default_rng(0).normal(size=(5, 3)).astype("float32")
    run = lambda m: ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"z": z})
    plain = model(shared=False)
    want = run(plain)
    assert optimize.reshape_last(plain.graph) == 1 and optimize.reshape_last(plain.graph) == 0
    onnx.checker.check_model(plain)
    assert [n.op_type for n in plain.graph.node] == ["MatMul", "Reshape", "Sigmoid"]
    np.testing.assert_array_equal(run(plain)[0], want[0])
    shared = model(shared=True)
    assert optimize.reshape_last(shared.graph) == 0
    assert [n.op_type for n in shared.graph.node][:3] == ["MatMul", "Sigmoid", "Reshape"]


def test_release_exports_again_an_export_of_another_conv_transpose_form(exports, tmp_path):
    """An export in the slice form (or one older than the phases form, which records none) is not what a release
    ships today: export.release makes it again."""
    import shutil

    run, _ = exports("conv_ae")
    copy = tmp_path / "run"
    shutil.copytree(run, copy, ignore=shutil.ignore_patterns("export"))
    exporter.export_run(copy, formats="onnx", conv_transpose="slice", verbose=0)
    assert not release._export_is_current(copy, copy / "export", 17)
    parity = json.loads((copy / "export" / "parity.json").read_text())
    parity.pop("conv_transpose")  # an export made before the field existed held the slice form
    (copy / "export" / "parity.json").write_text(json.dumps(parity))
    assert not release._export_is_current(copy, copy / "export", 17)
    bundle = release.release([copy], tmp_path / "dist", verbose=0)["conv_ae_mnist"]
    assert json.loads((bundle / "manifest.json").read_text())["parity"]["conv_transpose"] == "phases"
    assert release._export_is_current(copy, copy / "export", 17)

