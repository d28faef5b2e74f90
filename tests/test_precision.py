"""Precision variants of the exported ONNX files (export.precision): fp16 and int8 files measured against fp32,
kept only within tolerance, recorded in parity.json, and shipped by the release when asked."""

import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from export import exporter, precision, release, runtime
from tests.helpers import write_idx_dir, write_run_dir
from zoo import fileio, schema

LOOSE = {"fp16": {"sq_error_rel": 1.0, "precision_at_10": 1.0}, "int8": {"sq_error_rel": 1.0, "precision_at_10": 1.0}}


pytestmark = pytest.mark.usefixtures("offline")  # tests/conftest.py


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    base = tmp_path_factory.mktemp("precision")
    write_idx_dir(base / "idx", n_train=128, n_test=64)
    return base


@pytest.fixture(scope="module")
def runs(base):
    done = {}

    def get(family):
        if family not in done:
            done[family] = write_run_dir(base / family, family, base / "idx")
        return done[family]

    return get


def _export(run, out, **kwargs):
    return exporter.export_run(run, formats="onnx", out=out, verbose=0, **kwargs)


@pytest.mark.parametrize("family", ["conv_ae", "vae"])
def test_variants_are_written_measured_and_self_describing(family, runs, tmp_path):
    run = runs(family)
    result = _export(run, tmp_path / "x", precisions="fp32,fp16,int8", variant_tolerances=LOOSE)
    out = result.out
    assert sorted(p.name for p in out.iterdir() if p.name != fileio.MARKER) == [
        "autoencoder.onnx", "decoder.fp16.onnx", "decoder.int8.onnx", "decoder.onnx", "encoder.fp16.onnx",
        "encoder.int8.onnx", "encoder.onnx", "parity.json"]
    parity = schema.Parity.load(out)
    assert parity.passed and sorted(parity.variants) == ["fp16", "int8"]
    for name in ("fp16", "int8"):
        report = parity.variants[name]
        assert report["passed"] and report["kept"] and report["failures"] == []
        assert report["files"] == {"encoder": "encoder.{}.onnx".format(name), "decoder": "decoder.{}.onnx".format(name)}
        assert report["tolerance"] == LOOSE[name] and report["method"]
        sq = report["sq_error_per_image"]
        assert sq["fp32"] > 0 and sq["variant"] > 0
        assert sq["relative_change"] == pytest.approx((sq["variant"] - sq["fp32"]) / sq["fp32"])
        p10 = report["precision_at_10"]
        assert 0 <= p10["fp32"] <= 1 and 0 <= p10["variant"] <= 1
        assert p10["change"] == pytest.approx(p10["variant"] - p10["fp32"])
        assert 0 <= report["codes"]["mean_abs_diff"] <= report["codes"]["max_abs_diff"]
        assert 0 <= report["reconstruction"]["mean_abs_diff"] <= report["reconstruction"]["max_abs_diff"]
        evaluation = report["evaluation"]
        assert evaluation["provider"] == "CPUExecutionProvider" and evaluation["k"] == 10
        assert evaluation["test"]["split"] == "test" and evaluation["test"]["num_images"] == 64
        assert evaluation["database"]["split"] == "train" and evaluation["database"]["num_images"] == 128
        for part in ("encoder", "decoder"):
            model = onnx.load(str(out / schema.onnx_file(part, name)))
            onnx.checker.check_model(model, full_check=True)
            meta = runtime.decode_metadata({p.key: p.value for p in model.metadata_props})
            assert meta["precision"] == name and meta["role"] == part and meta["preset"] == family + "_mnist"
            # float32 in and out, whatever the precision inside.
            for value in list(model.graph.input) + list(model.graph.output):
                assert value.type.tensor_type.elem_type == onnx.TensorProto.FLOAT
            ops = {n.op_type for n in model.graph.node}
            assert ("QuantizeLinear" in ops) == (name == "int8")
    calibration = parity.variants["int8"]["calibration"]
    assert calibration["split"] == "train" and calibration["num_images"] == 128
    assert calibration["source"].startswith("idx:")
    assert "calibration" not in parity.variants["fp16"]
    # The runtime picks the variant files by precision, and they reproduce the fp32 codes closely.
    x = np.random.default_rng(0).uniform(0, 1, (6, 28, 28, 1)).astype("float32")
    fp32 = runtime.Runtime(out, providers=["CPUExecutionProvider"]).encode(x)
    for name, atol in (("fp16", 1e-2), ("int8", 0.5)):
        rt = runtime.Runtime(out, precision=name, providers=["CPUExecutionProvider"])
        np.testing.assert_allclose(rt.encode(x), fp32, atol=atol)
        assert rt.decode(fp32).shape == (6, 28, 28, 1)


def test_a_variant_outside_its_tolerance_is_not_kept(runs, tmp_path):
    run = runs("deep_ae")
    strict = {"int8": {"sq_error_rel": 0.0, "precision_at_10": 0.0}}
    result = _export(run, tmp_path / "x", precisions=["int8"], variant_tolerances=strict)
    assert result.parity["passed"]  # the fp32 export stands
    assert sorted(p.name for p in result.out.iterdir() if p.name != fileio.MARKER) == [
        "autoencoder.onnx", "decoder.onnx", "encoder.onnx", "parity.json"]
    report = schema.Parity.load(result.out).variants["int8"]
    assert not report["passed"] and not report["kept"] and report["files"] == {}
    assert any(f.startswith("sq. error per image changed by") for f in report["failures"])
    assert report["sq_error_per_image"]["variant"] > 0 and report["tolerance"] == strict["int8"]


def test_fp32_export_is_unchanged_by_default_and_by_variants(runs, tmp_path):
    run = runs("deep_ae")
    plain = _export(run, tmp_path / "plain")
    assert "variants" not in plain.parity and schema.Parity.load(plain.out).variants == {}
    assert sorted(p.name for p in plain.out.iterdir() if p.name != fileio.MARKER) == [
        "autoencoder.onnx", "decoder.onnx", "encoder.onnx", "parity.json"]
    both = _export(run, tmp_path / "both", precisions="fp32,int8", variant_tolerances=LOOSE)
    for name in ("encoder.onnx", "decoder.onnx", "autoencoder.onnx"):
        # tf2onnx numbers its tensor names per process, so the same graph, not the same bytes.
        assert _graph(plain.out / name) == _graph(both.out / name), name
    assert plain.parity["max_abs_diff"] == both.parity["max_abs_diff"]


def _graph(path):
    from onnx import numpy_helper

    model = onnx.load(str(path))
    values = {t.name: numpy_helper.to_array(t).tobytes() for t in model.graph.initializer}
    return ([(n.op_type, [values.get(i) for i in n.input], str(n.attribute)) for n in model.graph.node],
            {p.key: p.value for p in model.metadata_props})


def test_without_the_dataset_variants_use_the_parity_images(runs, tmp_path):
    run = runs("ae")
    moved = tmp_path / "run"
    moved.mkdir()
    for name in ("model.keras", "metrics.json"):
        (moved / name).write_bytes((run / name).read_bytes())
    config = json.loads((run / "config.json").read_text())
    config["data_dir"] = str(tmp_path / "gone")  # trained elsewhere, no data here
    (moved / "config.json").write_text(json.dumps(config))
    images = np.random.default_rng(1).uniform(0, 1, (20, 28, 28, 1)).astype("float32")
    result = _export(moved, tmp_path / "x", images=images, precisions="int8", variant_tolerances=LOOSE)
    report = result.parity["variants"]["int8"]
    assert report["kept"]
    assert report["calibration"]["split"] is None and "parity images" in report["calibration"]["source"]
    assert "not found" in report["calibration"]["note"]
    assert report["evaluation"]["test"]["num_images"] == 20 and report["evaluation"]["database"] is None
    assert report["precision_at_10"] is None


def test_nchw_variants(runs, tmp_path):
    result = _export(runs("conv_ae"), tmp_path / "x", layout="nchw", precisions="int8", variant_tolerances=LOOSE)
    assert result.parity["variants"]["int8"]["kept"]
    model = onnx.load(str(result.out / "encoder.int8.onnx"))
    assert [d.dim_value or d.dim_param for d in model.graph.input[0].type.tensor_type.shape.dim] == ["batch", 1, 28, 28]
    assert "Conv" in {n.op_type for n in model.graph.node} and _quantized_tensors(model)


def test_int8_runs_transposed_convolutions_as_integer_convs(runs, tmp_path):
    """In the default ("phases") form a transposed convolution is Convs, which the CPU provider runs as
    QLinearConv: their inputs and outputs are 8-bit. The image head stays float: the 1 x 1 taps Conv writes
    float (no rounding of what the sigmoid reads) and the one-hot sum after it is no layer of its own."""
    from export import optimize

    result = _export(runs("conv_ae"), tmp_path / "x", precisions="int8", variant_tolerances=LOOSE)
    assert result.parity["variants"]["int8"]["extent"] == "full" and result.parity["conv_transpose"] == "phases"
    model = onnx.load(str(result.out / "decoder.int8.onnx"))
    producer = {o: n for n in model.graph.node for o in n.output}
    quantized = _quantized_tensors(model)
    assert "ConvTranspose" not in optimize.op_counts(model)
    phases = [n for n in model.graph.node if n.op_type == "Conv" and optimize.PHASE_MARK in n.name]
    assert len(phases) == 8
    for node in phases:
        assert producer[node.input[0]].op_type == "DequantizeLinear"
        assert producer[node.input[1]].op_type == "DequantizeLinear"  # int8 weights, per channel
    head = [n for n in model.graph.node if n.name.endswith(optimize.TAP_SUM_SUFFIX)]
    assert len(head) == 1 and producer[head[0].input[0]].op_type == "Conv"  # the taps, float
    assert not set(producer[head[0].input[0]].output) & quantized and not set(head[0].output) & quantized


def test_int8_leaves_conv_transpose_in_float(runs, tmp_path):
    """The CPU provider has no integer ConvTranspose ("slice" form): it computes in float, from int8-stored
    weights, and its output is not rounded to 8 bits (its input is whatever the layer before wrote)."""
    result = _export(runs("conv_ae"), tmp_path / "x", precisions="int8", variant_tolerances=LOOSE,
                     conv_transpose="slice")
    assert result.parity["variants"]["int8"]["extent"] == "full"
    model = onnx.load(str(result.out / "decoder.int8.onnx"))
    producer = {o: n for n in model.graph.node for o in n.output}
    transposed = [n for n in model.graph.node if n.op_type == "ConvTranspose"]
    assert len(transposed) == 2
    for node in transposed:
        assert not set(node.output) & _quantized_tensors(model)
        assert producer[node.input[1]].op_type == "Mul"  # int8 weights times a per-channel scale
    assert any(n.op_type == "Conv" and producer[n.input[0]].op_type == "DequantizeLinear" for n in model.graph.node)


@pytest.mark.parametrize("argv, message", [
    (["--precision", "fp32,int4"], r"Unknown precision\(s\) int4; choose from fp32, fp16, int8"),
    (["--precision", "int8", "--formats", "savedmodel"], "are ONNX files; add onnx to --formats"),
])
def test_precision_errors_are_one_clear_line(argv, message, runs, capsys):
    import re

    assert exporter.main([str(runs("ae"))] + argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "Traceback" not in err and re.search(message, err), err


def test_parse_precisions_always_makes_fp32_first():
    assert precision.parse_precisions("int8") == ("fp32", "int8")
    assert precision.parse_precisions(" int8, fp32 ,fp16,int8") == ("fp32", "int8", "fp16")
    assert precision.parse_precisions(None) == ("fp32",)


def test_precision_at_k_counts_neighbours_with_the_query_label():
    database = np.array([[0.0], [0.1], [0.2], [10.0], [10.1]], np.float32)
    labels = np.array([0, 0, 1, 1, 1])
    queries = np.array([[0.05], [10.05]], np.float32)
    # Query 0's two nearest: 0.0 and 0.1 (label 0, 0); query 1's: 10.0 and 10.1 (label 1, 1).
    assert precision.precision_at_k(queries, np.array([0, 1]), database, labels, k=2) == 1.0
    assert precision.precision_at_k(queries, np.array([1, 0]), database, labels, k=2) == 0.0
    assert precision.precision_at_k(queries[:1], np.array([0]), database, labels, k=3) == pytest.approx(2 / 3)


def _quantized_tensors(model):
    return {n.input[0] for n in model.graph.node if n.op_type == "QuantizeLinear"}


def _int8_weights(model):
    return [t for t in model.graph.initializer if t.data_type == onnx.TensorProto.INT8 and len(t.dims) == 2]


def test_int8_full_extent_computes_every_layer_in_int8_and_keeps_codes_and_pixels_float(runs, tmp_path):
    """The first extent tried: every dense layer runs as QDQ int8, but the values the outputs are made from (the
    code, the logits) are never rounded to 8 bits, and the layer that writes them writes float32."""
    result = _export(runs("deep_ae"), tmp_path / "x", precisions="int8", variant_tolerances=LOOSE)
    report = result.parity["variants"]["int8"]
    assert report["extent"] == "full" and [a["extent"] for a in report["attempts"]] == ["full"]
    assert "'full'" in report["method"]
    for part in ("encoder", "decoder"):
        model = onnx.load(str(result.out / schema.onnx_file(part, "int8")))
        assert len(_int8_weights(model)) == 3  # the tiny deep_ae's three dense layers, all QDQ
        assert not [n for n in model.graph.node if n.op_type == "Cast"]  # no float-computing layer
        producer = {o: n for n in model.graph.node for o in n.output}
        last = producer["latent" if part == "encoder" else "reconstruction"]
        while last.op_type not in precision.WEIGHT_OPS:  # back through the sigmoid and reshape
            last = producer[last.input[0]]
        assert not set(last.output) & _quantized_tensors(model)  # the code and the logits stay float
        assert all(producer[i].op_type == "DequantizeLinear" for i in last.input[:2])  # its inputs are 8-bit
        if part == "decoder":  # optimize.reshape_last: the sigmoid writes the output; the Reshape reads logits
            assert producer["reconstruction"].op_type == "Sigmoid"
            assert producer[producer["reconstruction"].input[0]].op_type == "Reshape"
        fused = ort.SessionOptions()
        fused.optimized_model_filepath = str(tmp_path / "{}.optimized.onnx".format(part))
        ort.InferenceSession(str(result.out / schema.onnx_file(part, "int8")), fused,
                             providers=["CPUExecutionProvider"])
        ops = [n.op_type for n in onnx.load(fused.optimized_model_filepath).graph.node]
        assert ops.count("QGemm") == 3 and "Gemm" not in ops and "DequantizeLinear" not in ops, ops


def test_int8_keeps_the_vq_nearest_entry_search_float(base, tmp_path):
    """8-bit tokens would pick other codebook entries: the weight layer that feeds TopK stays float, and so do
    the tokens it reads, which are a Reshape of the code when the code holds several tokens (as the presets')."""
    run = write_run_dir(base / "vq_tokens", "vq_vae", base / "idx", latent_dim=8, embedding_dim=4)
    result = _export(run, tmp_path / "x", precisions="int8", variant_tolerances=LOOSE)
    report = result.parity["variants"]["int8"]
    assert report["kept"] and report["extent"] == "full", report.get("attempts")
    model = onnx.load(str(result.out / "encoder.int8.onnx"))
    producer = {o: n for n in model.graph.node for o in n.output}
    search = producer[next(n for n in model.graph.node if n.op_type == "TopK").input[0]]
    while search.op_type not in precision.WEIGHT_OPS:
        search = producer[search.input[0]]
    tokens = producer[search.input[0]]
    assert tokens.op_type == "Reshape", tokens.op_type  # float tokens in, straight from the code layer
    assert producer[tokens.input[0]].op_type in precision.WEIGHT_OPS
    assert not set(search.output) & _quantized_tensors(model)
    assert sum(1 for n in model.graph.node if n.op_type in precision.WEIGHT_OPS
               and n.input[0] in producer and producer[n.input[0]].op_type == "DequantizeLinear") >= 2  # the trunk


def test_int8_falls_back_to_float_boundary_layers_when_full_misses(runs, tmp_path, monkeypatch):
    """When full int8 misses the tolerance, the 'inner' extent is tried: the layers that write or read the code
    and write the reconstruction compute in float32 from int8-stored weights; the others run as QDQ int8."""
    judge, calls = precision.judge, []

    def full_misses(reference, measured, tolerance):
        figures, failures = judge(reference, measured, tolerance)
        calls.append(None)
        return figures, failures + (["made to miss"] if len(calls) == 1 else [])

    monkeypatch.setattr(precision, "judge", full_misses)
    result = _export(runs("deep_ae"), tmp_path / "x", precisions="int8", variant_tolerances=LOOSE)
    report = result.parity["variants"]["int8"]
    assert report["kept"] and report["extent"] == "inner"
    assert [(a["extent"], a["failures"]) for a in report["attempts"]] == [("full", ["made to miss"]), ("inner", [])]
    for part in ("encoder", "decoder"):
        model = onnx.load(str(result.out / schema.onnx_file(part, "int8")))
        initializers = {t.name: t for t in model.graph.initializer}
        floats = [t for t in initializers.values() if t.data_type == onnx.TensorProto.FLOAT and len(t.dims) == 2
                  and min(t.dims) > 1]  # a weight-only layer's per-channel scale is (1, channels)
        assert not floats, [t.name for t in floats]  # every weight matrix is stored in 8 bits
        assert len(_int8_weights(model)) == 3
        weight_only = [n for n in model.graph.node if n.op_type == "Cast"]
        assert len(weight_only) == (1 if part == "encoder" else 2)


def test_int8_that_misses_at_every_extent_records_each_try(runs, tmp_path):
    strict = {"int8": {"sq_error_rel": 0.0, "precision_at_10": 0.0}}
    report = _export(runs("deep_ae"), tmp_path / "x", precisions="int8",
                     variant_tolerances=strict).parity["variants"]["int8"]
    assert not report["kept"] and report["extent"] == "inner"
    assert [a["extent"] for a in report["attempts"]] == list(precision.INT8_EXTENTS)
    assert all(a["failures"] for a in report["attempts"])
    with pytest.raises(precision.PrecisionError, match="Unknown int8 extent 'half'; choose full, inner"):
        precision.int8_model(None, "image", None, extent="half")


# --- the release -------------------------------------------------------------------------------------------


def test_release_ships_the_variants_that_passed(runs, tmp_path):
    run = runs("conv_vae")
    exporter.export_run(run, formats="onnx", precisions="fp32,fp16,int8", verbose=0,
                        variant_tolerances={"int8": LOOSE["int8"], "fp16": {"sq_error_rel": 0.0, "precision_at_10": 0.0}})
    bundle = release.release([run], tmp_path / "dist", precisions="fp32,fp16,int8", verbose=0)["conv_vae_mnist"]
    names = sorted(p.name for p in bundle.iterdir() if p.name not in (fileio.MARKER, "keras_extra.npz"))
    assert names == ["SHA256SUMS", "decoder.int8.onnx", "decoder.onnx", "encoder.int8.onnx", "encoder.onnx",
                     "keras_weights.json", "manifest.json"]  # fp16 missed its (zero) tolerance
    manifest = schema.Manifest.load(bundle)
    variants = {(e["role"], e.get("precision")): e for e in manifest.entries("onnx")}
    assert set(variants) == {("encoder", None), ("decoder", None), ("encoder", "int8"), ("decoder", "int8")}
    assert variants["encoder", "int8"]["file"] == "encoder.int8.onnx"
    assert variants["encoder", "int8"]["outputs"] == ["z_mean", "z_log_var"]
    assert sorted(manifest.parity["variants"]) == ["int8"]
    shipped = manifest.parity["variants"]["int8"]
    assert shipped["passed"] and "sq_error_per_image" in shipped and "precision_at_10" in shipped
    assert "calibration" in shipped and "files" not in shipped
    sums = (bundle / "SHA256SUMS").read_text()
    assert "encoder.int8.onnx" in sums and "decoder.int8.onnx" in sums
    # The Keras weights map into the fp32 files only.
    weights_map = json.loads((bundle / "keras_weights.json").read_text())
    assert {v["file"] for v in weights_map["variables"] if "file" in v} <= {"encoder.onnx", "decoder.onnx"}
    x = np.random.default_rng(0).uniform(0, 1, (3, 28, 28, 1)).astype("float32")
    assert runtime.Runtime(bundle, precision="int8", providers=["CPUExecutionProvider"]).encode(x).shape == (3, 4)
    # By default only fp32 ships, from the same export.
    plain = release.release([run], tmp_path / "plain", verbose=0)["conv_vae_mnist"]
    assert not list(plain.glob("*.int8.onnx")) and "variants" not in schema.Manifest.load(plain).parity


def test_release_exports_again_to_measure_a_precision_asked_for(runs, tmp_path):
    run = runs("ae")
    exporter.export_run(run, formats="onnx", verbose=0)  # fp32 only
    bundle = release.release([run], tmp_path / "dist", precisions="int8", verbose=0)["ae_mnist"]
    report = schema.Parity.load(run / "export").variants["int8"]
    assert report["evaluation"]["test"]["split"] == "test"
    assert (bundle / "encoder.int8.onnx").is_file() == report["kept"]
    assert ("variants" in schema.Manifest.load(bundle).parity) == report["kept"]


def test_release_precision_errors_are_one_clear_line(runs, tmp_path, capsys):
    assert release.main([str(runs("ae")), "--out", str(tmp_path / "dist"), "--precision", "int4", "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: Unknown precision(s) int4") and not (tmp_path / "dist").exists()
