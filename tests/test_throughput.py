"""benchmarks.throughput: FLOP counts, IOBinding on CPU, a short end-to-end run with the TF baseline, errors."""

import csv
import json
import subprocess
import sys

import numpy as np
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from benchmarks import throughput
from benchmarks.flops import count_flops
from zoo import schema

HIDDEN = (16, 8)
LATENT = 4
SHAPE = (8, 8, 1)
PIXELS = 64
FAST = ["--batch-sizes", "1,4", "--repeats", "3", "--max-seconds", "0.05", "--warmup-seconds", "0",
        "--peak-sizes", "128", "--quiet"]


def _dense_flops(sizes):
    """2*in*out for each kernel plus out for each bias."""
    return sum(2 * a * b + b for a, b in zip(sizes[:-1], sizes[1:]))


# Encoder 64-16-8-4 (ReLU, linear code); decoder 4-8-16-64 (ReLU, sigmoid pixels).
ENCODER_FLOPS = _dense_flops((PIXELS,) + HIDDEN + (LATENT,)) + sum(HIDDEN)
DECODER_FLOPS = _dense_flops((LATENT,) + HIDDEN[::-1] + (PIXELS,)) + sum(HIDDEN) + PIXELS


@pytest.fixture(scope="module")
def export_dir(tmp_path_factory):
    """A tiny deep_ae exported by `export` (SavedModel + ONNX), with non-zero biases so they stay in the graph."""
    import zoo
    from export.exporter import export_run

    run = tmp_path_factory.mktemp("runs") / "tiny_deep_ae"
    run.mkdir()
    model = zoo.build("deep_ae", input_shape=SHAPE, latent_dim=LATENT, hidden_units=HIDDEN)
    rng = np.random.default_rng(0)
    for layer in model.encoder.layers + model.decoder.layers:
        if getattr(layer, "bias", None) is not None:
            layer.bias.assign(rng.normal(0, 0.1, layer.bias.shape).astype("float32"))
    model.save(run / schema.MODEL)
    schema.RunConfig(preset="tiny_deep_ae", model="deep_ae", dataset="mnist", model_config=model.get_config(),
                     training={}, input_shape=list(model.image_shape), latent_dim=model.latent_dim).save(run)
    export_run(run, images=rng.random((64,) + SHAPE, dtype=np.float32), verbose=0)
    return run / "export"


# --- FLOPs --------------------------------------------------------------------------------------------


def _model(nodes, inputs, outputs, initializers):
    graph = helper.make_graph(nodes, "g", inputs, outputs, [numpy_helper.from_array(v, k) for k, v in
                                                             initializers.items()])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


def _f32(*shape):
    return np.ones(shape, np.float32)


def test_flops_of_known_graphs():
    batch = helper.make_tensor_value_info
    # Gemm with bias, then MatMul + Add + Relu: the two spellings of a Dense layer count the same.
    dense = _model(
        [helper.make_node("Gemm", ["x", "w1", "b1"], ["h"], transB=1),
         helper.make_node("MatMul", ["h", "w2"], ["m"]), helper.make_node("Add", ["m", "b2"], ["a"]),
         helper.make_node("Relu", ["a"], ["y"])],
        [batch("x", TensorProto.FLOAT, ["batch", 10])], [batch("y", TensorProto.FLOAT, ["batch", 3])],
        {"w1": _f32(7, 10), "b1": _f32(7), "w2": _f32(7, 3), "b2": _f32(3)})
    assert count_flops(dense).total == (2 * 10 * 7 + 7) + (2 * 7 * 3 + 3) + 3
    assert count_flops(dense, batch=5).total == 5 * count_flops(dense).total
    # Conv 3x3 stride 2 (1->4 channels, 8x8 -> 4x4) with bias; ConvTranspose 3x3 stride 2 back to 8x8 (4->2).
    conv = _model(
        [helper.make_node("Conv", ["x", "w", "b"], ["c"], strides=[2, 2], pads=[1, 1, 1, 1], kernel_shape=[3, 3]),
         helper.make_node("ConvTranspose", ["c", "wt"], ["y"], strides=[2, 2], pads=[1, 1, 0, 0],
                          output_padding=[0, 0], kernel_shape=[3, 3])],
        [batch("x", TensorProto.FLOAT, ["batch", 1, 8, 8])], [batch("y", TensorProto.FLOAT, ["batch", 2, 8, 8])],
        {"w": _f32(4, 1, 3, 3), "b": _f32(4), "wt": _f32(4, 2, 3, 3)})
    counted = count_flops(conv)
    assert counted.by_op == {"Conv": 2 * 4 * 4 * 4 * 1 * 9 + 4 * 4 * 4, "ConvTranspose": 2 * 4 * 4 * 4 * 2 * 9}
    assert counted.uncounted == {}
    # Grouped conv: each output sums over Cin/groups channels only. Softmax is not counted, and says so.
    grouped = _model(
        [helper.make_node("Conv", ["x", "w"], ["c"], group=2, pads=[1, 1, 1, 1], kernel_shape=[3, 3]),
         helper.make_node("Softmax", ["c"], ["y"])],
        [batch("x", TensorProto.FLOAT, ["batch", 4, 5, 5])], [batch("y", TensorProto.FLOAT, ["batch", 6, 5, 5])],
        {"w": _f32(6, 2, 3, 3)})
    counted = count_flops(grouped)
    assert counted.total == 2 * 6 * 5 * 5 * 2 * 9 and counted.uncounted == {"Softmax": 1}


def test_flops_fall_back_to_onnxruntime_shapes(export_dir, monkeypatch):
    """Where shape inference leaves a tensor unknown, a run of the graph at batch 1 gives its shape."""
    from benchmarks import flops

    def inputs_only(model):
        shapes = {i.name: tuple(d.dim_value for d in i.type.tensor_type.shape.dim) for i in model.graph.input}
        shapes.update({i.name: tuple(i.dims) for i in model.graph.initializer})
        return shapes

    monkeypatch.setattr(flops, "_inferred_shapes", inputs_only)
    assert count_flops(export_dir / "decoder.onnx").total == DECODER_FLOPS


def test_flops_of_exported_dense_model(export_dir):
    assert count_flops(export_dir / "encoder.onnx").total == ENCODER_FLOPS
    assert count_flops(export_dir / "decoder.onnx").total == DECODER_FLOPS
    assert count_flops(export_dir / "autoencoder.onnx").total == ENCODER_FLOPS + DECODER_FLOPS


# --- the end-to-end run ---------------------------------------------------------------------------


def test_benchmark_writes_every_field(export_dir, tmp_path):
    out = tmp_path / "results"
    assert throughput.main([str(export_dir), "--out", str(out), "--threads", "1"] + FAST) == 0
    result = json.loads((out / "throughput.json").read_text())
    assert result["schema"] == throughput.SCHEMA and result["device"] == "cpu"
    machine = result["machine"]
    assert machine["cpu_model"] and machine["usable_cpus"] >= 1
    assert {"python", "numpy", "onnx", "onnxruntime", "tensorflow"} <= set(machine["versions"])
    assert result["peak"]["gflops_per_s"] > 0 and {r["when"] for r in result["peak"]["runs"]} == {"start", "end"}
    assert result["tensorflow"]["intra_op_threads"] == 1
    rows = result["rows"]
    assert {(r["part"], r["batch_size"]) for r in rows} == {
        (p, b) for p in ("encoder", "decoder", "autoencoder") for b in (1, 4)}
    expected_flops = {"encoder": ENCODER_FLOPS, "decoder": DECODER_FLOPS, "autoencoder": ENCODER_FLOPS + DECODER_FLOPS}
    for row in rows:
        assert row["model"] == "tiny_deep_ae" and row["provider"] == "CPUExecutionProvider" and row["threads"] == 1
        assert row["runs"] == 3 and row["tf_runs"] == 3
        assert row["flops_per_image"] == expected_flops[row["part"]]
        for key in throughput.CSV_COLUMNS:
            assert row.get(key) is not None, key
        assert row["latency_us_p50"] <= row["latency_us_p90"] <= row["latency_us_p99"]
        assert row["images_per_s"] == pytest.approx(row["batch_size"] / row["latency_us_p50"] * 1e6)
        assert row["gflops_per_s"] == pytest.approx(row["flops_per_image"] * row["images_per_s"] / 1e9)
        assert row["fraction_of_peak"] == pytest.approx(row["gflops_per_s"] / result["peak"]["gflops_per_s"])
        assert row["ort_tf_ratio"] == pytest.approx(row["images_per_s"] / row["tf_images_per_s"])
    assert set(result["targets"]) == {"ort_at_least_tf_everywhere", "deep_ae_fraction_of_peak",
                                      "dense_batch1_encoder_latency"}
    with open(out / "throughput.csv") as f:
        table = list(csv.DictReader(f))
    assert len(table) == len(rows) and tuple(table[0]) == throughput.CSV_COLUMNS
    assert "| encoder | 4 |" in (out / "throughput.md").read_text()
    assert (out / "throughput_tiny_deep_ae.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not [p for p in out.iterdir() if p.name.startswith(".partial")]


def test_iobinding_matches_a_plain_run_on_cpu(export_dir):
    session = throughput.make_session(export_dir / "encoder.onnx", "cpu", threads=1)
    x = throughput.make_input("image", SHAPE, 3, seed=1)
    bound = throughput.BoundRun(session, {"image": x}, "cpu")
    bound()
    (expected,) = session.run(None, {"image": x})
    (got,) = bound.outputs()
    np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-6)
    assert got.shape == (3, LATENT)


def test_time_calls_keeps_slow_points_short():
    calls = []
    times = throughput.time_calls(lambda: calls.append(1), repeats=1000, max_seconds=0.0, warmup_seconds=0.0)
    assert len(times) == throughput.MIN_RUNS and len(calls) == throughput.MIN_RUNS + throughput.MIN_WARMUP_RUNS
    assert len(throughput.time_calls(lambda: None, repeats=3, max_seconds=10.0, warmup_seconds=0.0)) == 3


def test_presets_and_all_resolve_under_runs_dir(export_dir):
    runs_dir = export_dir.parent.parent
    model = throughput.resolve_model("tiny_deep_ae", runs_dir=runs_dir)
    assert model.dir == export_dir and model.name == "tiny_deep_ae" and model.savedmodel is not None
    assert throughput.resolve_model(export_dir.parent).dir == export_dir
    assert [m.dir for m in throughput.find_all(runs_dir=runs_dir)] == [export_dir]


# --- errors -------------------------------------------------------------------------------------------


def test_missing_model_is_a_clear_error(tmp_path, capsys):
    assert throughput.main([str(tmp_path / "no_such_model"), "--out", str(tmp_path / "out")] + FAST) == 2
    err = capsys.readouterr().err
    assert "No exported model" in err and "python -m export" in err and "Traceback" not in err
    (tmp_path / "half").mkdir()
    (tmp_path / "half" / "encoder.onnx").write_bytes(b"")
    with pytest.raises(throughput.ModelNotFoundError, match="lacks decoder.onnx, autoencoder.onnx"):
        throughput.resolve_model(tmp_path / "half")
    with pytest.raises(throughput.ModelNotFoundError, match="--all found no exported runs"):
        throughput.find_all(runs_dir=tmp_path)
    assert not (tmp_path / "out").exists()


@pytest.mark.skipif("CUDAExecutionProvider" in ort.get_available_providers(), reason="CUDA provider present")
def test_cuda_without_the_cuda_provider_is_a_clear_error(export_dir, tmp_path, capsys):
    assert throughput.main([str(export_dir), "--device", "cuda", "--out", str(tmp_path)] + FAST) == 2
    err = capsys.readouterr().err
    assert "CUDAExecutionProvider" in err and "onnxruntime-gpu" in err
    assert not list(tmp_path.iterdir())


def test_a_cpu_session_that_is_not_what_was_asked_is_refused(monkeypatch):
    # onnxruntime silently falls back to the CPU when CUDA libraries are missing: make_session must notice.
    monkeypatch.setattr(throughput, "providers_for", lambda device: ["CPUExecutionProvider"])
    with pytest.raises(throughput.DeviceUnavailableError, match="did not activate CUDAExecutionProvider"):
        throughput.make_session(throughput.matmul_model(4), "cuda", threads=1)


def test_the_onnxruntime_path_imports_no_tensorflow():
    # The light part of zoo (zoo.schema's file names and atomic writes) is welcome; models and Keras are not.
    code = ("import sys, benchmarks.throughput, benchmarks.flops; "
            "bad = [m for m in ('tensorflow', 'keras', 'zoo.models', 'zoo.registry', 'tf2onnx') if m in sys.modules]; "
            "assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True)
