"""benchmarks.throughput: FLOP counts, IOBinding on CPU, a short end-to-end run with the TF baseline, errors."""

import csv
import json
import subprocess
import sys

import numpy as np
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from benchmarks import measure, throughput
from benchmarks.flops import count_flops
from benchmarks.sessions import PiecesRun
from export import runtime
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


CPU_ONLY = ("pinned_", "graph_", "jax_", "ort_jax", "ort_graph_jax")  # columns a CPU run leaves empty
PIECES_ONLY = ("chunk_rows", "single_")  # columns of a CPU point above runtime.DEFAULT_BATCH_SIZE
TUNED_ONLY = ("plan_", "default_")  # columns of a --tune run


def _with_int8_encoder(export_dir, tmp_path):
    """A copy of the run holding the export, with a stand-in int8 encoder (a copy of encoder.onnx) and no int8
    decoder: int8 rows must appear for the encoder only."""
    import shutil

    run = tmp_path / "runs" / "tiny_deep_ae"
    shutil.copytree(export_dir.parent, run)
    shutil.copy(run / "export" / "encoder.onnx", run / "export" / schema.onnx_file("encoder", "int8"))
    return run / "export"


def test_benchmark_writes_every_field(export_dir, tmp_path, monkeypatch):
    # Batches above the Runtime's piece size are timed as the Runtime serves them: batch 4 here, in pieces of 2.
    monkeypatch.setattr(runtime, "DEFAULT_BATCH_SIZE", 2)
    export = _with_int8_encoder(export_dir, tmp_path)
    out = tmp_path / "results"
    assert throughput.main([str(export), "--out", str(out), "--threads", "1", "--precision", "fp32,int8",
                            "--tf-bf16", "--rounds", "2"] + FAST) == 0
    result = json.loads((out / "throughput.json").read_text())
    assert result["schema"] == throughput.SCHEMA and result["device"] == "cpu"
    machine = result["machine"]
    assert machine["cpu_model"] and machine["usable_cpus"] >= 1
    assert {"python", "numpy", "onnx", "onnxruntime", "tensorflow", "jax"} <= set(machine["versions"])
    assert result["peak"]["gflops_per_s"] > 0 and {r["when"] for r in result["peak"]["runs"]} == {"start", "end"}
    assert result["tensorflow"]["intra_op_threads"] == 1 and result["jax"] is None
    assert result["settings"]["precisions"] == ["fp32", "int8"] and result["settings"]["tf_bf16_baseline"]
    rows = result["rows"]
    assert [(r["part"], r["batch_size"], r["precision"]) for r in rows] == [
        (p, b, q) for p in ("encoder", "decoder", "autoencoder") for b in (1, 4)
        for q in (("fp32", "int8") if p == "encoder" else ("fp32",))]  # fp32 first: cards read a point's first row
    assert [(s["part"], s["precision"]) for s in result["skipped"]] == [("decoder", "int8"), ("autoencoder", "int8")]
    assert "decoder.int8.onnx" in result["skipped"][0]["reason"]
    expected_flops = {"encoder": ENCODER_FLOPS, "decoder": DECODER_FLOPS, "autoencoder": ENCODER_FLOPS + DECODER_FLOPS}
    for row in rows:
        assert row["model"] == "tiny_deep_ae" and row["provider"] == "CPUExecutionProvider" and row["threads"] == 1
        assert row["runs"] == 3 and row["tf_runs"] == 3 and row["tf_source"] == "savedmodel"
        assert row["flops_per_image"] == expected_flops[row["part"]]
        pieces = row["batch_size"] > 2
        for key in throughput.CSV_COLUMNS:
            if not key.startswith(CPU_ONLY + TUNED_ONLY) and (pieces or not key.startswith(PIECES_ONLY)):
                assert row.get(key) is not None, key
        assert not [k for k in row if k.startswith(CPU_ONLY + TUNED_ONLY)
                    or (not pieces and k.startswith(PIECES_ONLY))]
        if pieces:
            assert row["chunk_rows"] == 2 and row["single_images_per_s"] > 0
        assert row["latency_us_p50"] <= row["latency_us_p90"] <= row["latency_us_p99"]
        assert row["images_per_s"] == pytest.approx(row["batch_size"] / row["latency_us_p50"] * 1e6)
        assert row["gflops_per_s"] == pytest.approx(row["flops_per_image"] * row["images_per_s"] / 1e9)
        assert row["fraction_of_peak"] == pytest.approx(row["gflops_per_s"] / result["peak"]["gflops_per_s"])
        assert row["ort_tf_ratio"] == pytest.approx(row["images_per_s"] / row["tf_images_per_s"])
        assert row["ort_tf_bf16_ratio"] == pytest.approx(row["images_per_s"] / row["tf_bf16_images_per_s"])
    # An int8 row is compared with the TensorFlow fp32 figure of its own point.
    int8 = [r for r in rows if r["precision"] == "int8"]
    for row in int8:
        fp32 = next(r for r in rows if r["precision"] == "fp32" and r["part"] == row["part"]
                    and r["batch_size"] == row["batch_size"])
        assert row["tf_images_per_s"] == fp32["tf_images_per_s"]
    assert set(result["targets"]) == {"ort_at_least_tf_everywhere", "deep_ae_fraction_of_peak",
                                      "dense_batch1_encoder_latency", "int8_over_tf_fp32",
                                      "fp32_at_least_tf_at_most_points"}
    assert result["targets"]["int8_over_tf_fp32"]["met"] is None  # no int8 point at batch >= 64 here
    with open(out / "throughput.csv") as f:
        table = list(csv.DictReader(f))
    assert len(table) == len(rows) and tuple(table[0]) == throughput.CSV_COLUMNS
    markdown = (out / "throughput.md").read_text()
    assert "| encoder | int8 | 4 |" in markdown and "TF bf16 images/s" in markdown and "mixed_bfloat16" in markdown
    assert "Not measured: tiny_deep_ae decoder int8 (no decoder.int8.onnx" in markdown
    assert "## Targets" in markdown and "[not measured] int8 onnxruntime >= 2x TensorFlow fp32" in markdown
    assert (out / "throughput_tiny_deep_ae.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not [p for p in out.iterdir() if p.name.startswith(".partial")]
    # Every point of the largest batch (no 256, 1024 or 64 here) was timed again after the model, with its baseline.
    again = result["repeat"]
    assert again["batch_size"] == 4 and again["tolerance"] == 0.15
    assert [(p["part"], p["precision"]) for p in again["points"]] == [
        (r["part"], r["precision"]) for r in rows if r["batch_size"] == 4]
    for point in again["points"]:
        row = next(r for r in rows if (r["part"], r["precision"], r["batch_size"]) == (
            point["part"], point["precision"], 4))
        assert point["images_per_s"] == row["images_per_s"] and point["ratio"] == row["ort_tf_ratio"]
        assert point["baseline"] == "tf" and point["baseline_images_per_s"] == row["tf_images_per_s"]
        assert point["change"] == pytest.approx(point["again_images_per_s"] / row["images_per_s"] - 1)
        assert point["again_ratio"] == pytest.approx(point["again_images_per_s"] / point["again_baseline_images_per_s"])
    assert "## Timed again at the end of the run" in markdown and "4 points at batch 4 were timed again" in markdown
    # Two passes over the model: each figure is its framework's slower pass (the lower median of two), its
    # latencies from that pass; the first pass alone has copies, bf16 and one-call figures.
    assert result["settings"]["rounds"] == 2 and result["rounds"]["rounds"] == 2
    assert result["rounds"]["points"] == len(rows)
    for row in rows:
        assert len(row["rounds_images_per_s"]) == 2 and len(row["rounds_tf_images_per_s"]) == 2
        assert row["images_per_s"] == min(row["rounds_images_per_s"])
        assert row["tf_images_per_s"] == min(row["rounds_tf_images_per_s"])
        assert row["tf_latency_us_p50"] == pytest.approx(row["batch_size"] / row["tf_images_per_s"] * 1e6)
        assert row["rounds_ort_tf_ratio"] == pytest.approx(
            [a / b for a, b in zip(row["rounds_images_per_s"], row["rounds_tf_images_per_s"])])
    assert "## Rounds" in markdown and "timed in 2 passes" in markdown


def test_points_timed_again_report_what_moved():
    from benchmarks import repeat

    def row(model, part, images, tf=None):
        r = {"model": model, "part": part, "precision": "int8", "batch_size": 256, "images_per_s": images}
        return dict(r, tf_images_per_s=tf, ort_tf_ratio=images / tf) if tf else r

    first = [row("vq", "encoder", 168_000.0, 71_000.0), row("vq", "decoder", 500_000.0, 200_000.0),
             row("ae", "decoder", 3e6)]
    again = [row("vq", "encoder", 67_000.0, 70_000.0), row("vq", "decoder", 520_000.0, 150_000.0),
             row("ae", "decoder", 3.1e6), row("gone", "decoder", 1.0)]  # no first timing: not a point
    points = repeat.compare(first, again)
    assert [p["model"] for p in points] == ["vq", "vq", "ae"] and "baseline" not in points[2]
    assert points[0]["change"] == pytest.approx(67 / 168 - 1) and points[0]["again_ratio"] == pytest.approx(67 / 70)
    assert [repeat.moved(p) for p in points] == [True, True, False]  # the decoder's baseline moved by -25%
    section = repeat.summary(points, 256)
    assert section["unsteady"] == 2 and section["largest_change"] == pytest.approx(1 - 67 / 168)
    text = "\n".join(repeat.report_lines(section))
    assert "3 points at batch 256 were timed again" in text and "2 moved by more than 15%" in text
    assert "| vq | encoder | int8 | 168,000 | 67,000 | -60% | 71,000 | 70,000 | -1% | 2.37 | 0.96 |" in text
    assert "| ae |" not in text
    # --merge keeps the points of the models not measured again.
    merged = repeat.merge(section, repeat.summary(repeat.compare(first[2:], [row("ae", "decoder", 1e6)]), 256),
                          ["ae"])
    assert [(p["model"], p["part"]) for p in merged["points"]] == [
        ("vq", "encoder"), ("vq", "decoder"), ("ae", "decoder")]
    assert merged["unsteady"] == 3
    other_batch = repeat.merge(section, repeat.summary([dict(points[2], batch_size=1024)], 1024), ["ae"])
    assert "3 points at batch 256 and 1024 were timed again" in "\n".join(repeat.report_lines(other_batch))
    assert repeat.merge(None, None, []) is None and repeat.report_lines(None) == []
    with pytest.raises(ValueError, match="not one of the run's"):
        repeat.batch_to_repeat([1, 64], 256)
    assert repeat.batch_to_repeat([1, 64, 4096]) == 64 and repeat.batch_to_repeat([1, 8]) == 8



def test_rounds_take_each_figure_from_its_median_pass():
    from benchmarks import rounds

    def row(model, precision, batch, images, tf, **extra):
        return dict({"model": model, "part": "decoder", "precision": precision, "batch_size": batch,
                     "images_per_s": images, "latency_us_p50": batch / images * 1e6, "runs": 5,
                     "tf_images_per_s": tf, "tf_latency_us_p50": batch / tf * 1e6, "tf_runs": 5,
                     "ort_tf_ratio": images / tf}, **extra)

    first = [row("ae", "int8", 256, 300.0, 100.0, copy_images_per_s=150.0, ort_tf_ratio_copy=1.5),
             row("ae", "fp32", 256, 90.0, 100.0), row("vq", "fp32", 1, 10.0, 1.0)]
    second = [row("ae", "int8", 256, 150.0, 100.0), row("ae", "fp32", 256, 110.0, 95.0)]  # vq not timed again
    third = [row("ae", "int8", 256, 210.0, 120.0), row("ae", "fp32", 256, 100.0, 90.0)]
    combined = rounds.combine([first, second, third])
    int8, fp32, vq = combined
    assert int8["images_per_s"] == 210.0 and int8["tf_images_per_s"] == 100.0  # medians of 300/150/210, 100/100/120
    assert int8["latency_us_p50"] == pytest.approx(256 / 210.0 * 1e6)  # that pass's latencies
    assert int8["ort_tf_ratio"] == pytest.approx(2.1) and int8["ort_tf_ratio_copy"] == pytest.approx(1.5)
    assert int8["rounds_ort_tf_ratio"] == pytest.approx([3.0, 1.5, 1.75])
    assert fp32["images_per_s"] == 100.0 and fp32["tf_images_per_s"] == 95.0
    assert vq == first[2] and "rounds_images_per_s" not in vq  # one pass: as it was
    assert first[0]["images_per_s"] == 300.0  # the passes are not changed
    assert rounds.combine([first[:2], second]).__getitem__(0)["images_per_s"] == 150.0  # two: the slower
    # int8 at batch >= 64 is judged at 2x TensorFlow: its passes (3.0, 1.5, 1.75) fall on both sides of it;
    # fp32's (0.9, 1.16, 1.11) on both sides of 1x.
    assert rounds.target_line(int8, "cpu") == ("ort_tf_ratio", 2.0) and rounds.undecided(int8, "cpu")
    assert rounds.undecided(fp32, "cpu") and not rounds.undecided(vq, "cpu")
    assert rounds.target_line(dict(int8, batch_size=8), "cpu") is None
    section = rounds.summary(combined, 3, "cpu")
    assert section["points"] == 2 and section["unsteady"] == 2 and section["largest_spread"] == pytest.approx(1.0)
    assert [(p["precision"], p["line"]) for p in section["undecided"]] == [("int8", 2.0), ("fp32", 1.0)]
    text = "\n".join(rounds.report_lines(section))
    assert "timed in 3 passes" in text and "2 points' passes fall on both sides" in text
    assert "| ae | decoder | int8 | 256 | 2x | 2.10 | 3.00, 1.50, 1.75 |" in text
    steady = rounds.summary(rounds.combine([first[1:2], [row("ae", "fp32", 256, 91.0, 99.0)]]), 2, "cpu")
    assert steady["undecided"] == [] and "No point's passes fall on both sides" in "\n".join(
        rounds.report_lines(steady))
    assert rounds.report_lines(None) == [] and rounds.merge(None, None, [], "cpu") is None


def test_merge_replaces_only_the_models_measured_again(export_dir, tmp_path, capsys, monkeypatch):
    """--merge: a retrained model is measured again and spliced into the committed result of the same machine."""
    from benchmarks import machine

    # A 128x128 MatMul's speed is noise on a busy machine; merge compares the two runs' peaks (PEAK_TOLERANCE).
    monkeypatch.setattr(machine, "measure_peak", lambda device, threads, sizes, when="start", spin=True: [
        {"n": 128, "when": when, "runs": 5, "latency_us_p50": 42.0, "gflops_per_s": 100.0}])
    out = tmp_path / "results"
    args = [str(export_dir), "--out", str(out), "--threads", "1", "--no-tf", "--no-plot", "--quiet"] + FAST
    assert throughput.main(args + ["--merge"]) == 2  # nothing to merge into yet: one line, nothing written
    assert "there is no" in capsys.readouterr().err and not out.exists()
    assert throughput.main(args) == 0
    first = json.loads((out / "throughput.json").read_text())
    # Make the committed result hold two models: the one measured now and another, measured earlier.
    other = [dict(r, model="other_ae", images_per_s=123.0) for r in first["rows"]]
    first["models"].append(dict(first["models"][0], name="other_ae"))
    first["rows"] += other
    first["skipped"] += [{"model": m, "part": "decoder", "precision": "int8", "reason": "none"}
                         for m in ("other_ae", "tiny_deep_ae")]  # the second is of the earlier measurement
    first["created"] = "2026-01-01T00:00:00+00:00"
    first["repeat"]["points"] += [dict(p, model="other_ae") for p in first["repeat"]["points"]]
    (out / "throughput.json").write_text(json.dumps(first))
    assert throughput.main(args + ["--merge"]) == 0
    merged = json.loads((out / "throughput.json").read_text())
    assert [m["name"] for m in merged["models"]] == ["tiny_deep_ae", "other_ae"]
    assert [r for r in merged["rows"] if r["model"] == "other_ae"] == other  # kept as they were
    mine = [r for r in merged["rows"] if r["model"] == "tiny_deep_ae"]
    assert len(mine) == len(other) and mine != [r for r in first["rows"] if r["model"] == "tiny_deep_ae"]
    assert [(r["models"], r["created"]) for r in merged["runs"]] == [
        (["other_ae"], "2026-01-01T00:00:00+00:00"), (["tiny_deep_ae"], merged["created"])]
    assert [s["model"] for s in merged["skipped"]] == ["other_ae"]
    points = merged["repeat"]["points"]
    assert [p["model"] for p in points] == ["other_ae"] * 3 + ["tiny_deep_ae"] * 3
    assert points[3:] != first["repeat"]["points"][:3]  # timed again in the new run
    assert merged["targets"]["fp32_at_least_tf_at_most_points"]["met"] is None  # no TensorFlow figure in either
    markdown = (out / "throughput.md").read_text()
    assert "merged from 2 runs on this machine" in markdown and "other_ae on 2026-01-01" in markdown
    assert "## other_ae" in markdown
    # A result of other settings (threads) or software is refused in one line and left as it is.
    before = (out / "throughput.json").read_bytes()
    assert throughput.main(args[:4] + ["2"] + args[5:] + ["--merge"]) == 2
    err = capsys.readouterr().err
    assert "Cannot merge into" in err and "settings.threads: 1 then 2" in err and "Traceback" not in err
    assert (out / "throughput.json").read_bytes() == before


def test_merge_refuses_other_software():
    from benchmarks import merge

    old = {"schema": "s", "device": "cpu", "machine": {"cpu_model": "X", "versions": {"onnxruntime": "1.31.0"}},
           "settings": {"threads": 2}, "models": [], "rows": []}
    new = dict(old, machine={"cpu_model": "X", "versions": {"onnxruntime": "1.32.0"}})
    with pytest.raises(throughput.BenchmarkError, match="versions.onnxruntime: 1.31.0 then 1.32.0"):
        merge.merge(old, new)
    assert merge.differences(old, dict(old)) == []
    # One CPU name, two hosts: the MatMul peak tells them apart; a run's own spread does not.
    assert merge.differences(dict(old, peak={"gflops_per_s": 430.5}), dict(old, peak={"gflops_per_s": 402.0})) == []
    with pytest.raises(throughput.BenchmarkError, match="peak.gflops_per_s: 430.5 then 181.6, more than 15% apart"):
        merge.merge(dict(old, peak={"gflops_per_s": 430.5}), dict(old, peak={"gflops_per_s": 181.6}))
    # 15% of the earlier peak, either way, and of every run whose rows the earlier result keeps: no drift.
    assert merge.differences(dict(old, peak={"gflops_per_s": 100.0}), dict(old, peak={"gflops_per_s": 116.0}))
    runs = [{"peak_gflops_per_s": 430.0}, {"peak_gflops_per_s": 380.0}]
    assert merge.differences(dict(old, runs=runs), dict(old, peak={"gflops_per_s": 400.0})) == []
    assert merge.differences(dict(old, runs=runs), dict(old, peak={"gflops_per_s": 360.0}))
    # Tuned figures (--tune) and untuned ones are not one table; a result from before --tune was untuned.
    with pytest.raises(throughput.BenchmarkError, match="settings.tune: False then True"):
        merge.merge(old, dict(old, settings={"threads": 2, "tune": True}))
    assert merge.differences(old, dict(old, settings={"threads": 2, "tune": False})) == []

def test_precision_option_is_checked(export_dir, tmp_path, capsys):
    assert throughput.main([str(export_dir), "--out", str(tmp_path), "--precision", "fp32,bf16", "--no-tf"]
                           + FAST) == 2
    assert "Unknown precision(s) bf16; choose from fp32, fp16, int8" in capsys.readouterr().err
    assert not list(tmp_path.iterdir())
    assert throughput.main([str(export_dir), "--out", str(tmp_path), "--repeat-batch", "256", "--no-tf"] + FAST) == 2
    assert "--repeat-batch: the batch size to time again (256) is not one of the run's (1, 4)" in (
        capsys.readouterr().err)
    assert not list(tmp_path.iterdir())
    assert throughput.main([str(export_dir), "--out", str(tmp_path), "--rounds", "0", "--no-tf"] + FAST) == 2
    assert "--rounds must be a positive integer (1 = one pass); got 0" in capsys.readouterr().err
    assert not list(tmp_path.iterdir())


def test_tuned_points_are_served_with_the_runtime_plan_and_keep_the_untuned_figure(export_dir, tmp_path,
                                                                                    monkeypatch):
    """--tune: each point's figure is the plan export.runtime's tuning chooses there (candidates timed, chosen,
    the batch timed again with it), in every pass of --rounds; the untuned Runtime's figure stays (default_*)."""
    monkeypatch.setattr(runtime, "TUNE_SECONDS", 0.001)
    chosen = []

    def choose(runs, seconds=0):  # the last candidate: one-thread workers where there are some
        plan = list(runs)[-1]
        chosen.append(plan)
        return plan, {p: float(i + 1) for i, p in enumerate(runs)}

    monkeypatch.setattr(runtime, "choose_plan", choose)
    out = tmp_path / "results"
    assert throughput.main([str(export_dir), "--out", str(out), "--threads", "2", "--no-tf", "--no-plot",
                            "--tune", "--rounds", "2", "--parts", "decoder", "--batch-sizes", "1,6", "--repeats", "3",
                            "--max-seconds", "0.02", "--warmup-seconds", "0", "--no-repeat", "--peak-sizes", "128",
                            "--quiet"]) == 0
    result = json.loads((out / "throughput.json").read_text())
    assert result["settings"]["tune"] is True and "Runtime.tune" in result["settings"]["tuned"]
    one, six = result["rows"]
    assert "plan_rows" not in one and "default_images_per_s" not in one  # batch 1: nothing to choose
    names = [str(p) for p in runtime.plan_candidates(6, runtime.DEFAULT_BATCH_SIZE, 2)]
    assert names == ["6 rows a call", "3 rows a call, 2 one-thread workers"]
    assert list(six["plan_candidates"]) == names and six["plan_candidates"][names[1]] == 2 * 6
    assert (six["plan_rows"], six["plan_workers"]) == (3, 2)
    assert chosen == [runtime.Plan(3, 2)] * 2  # chosen again in the second pass
    assert len(six["rounds_images_per_s"]) == 2 and len(six["rounds_default_images_per_s"]) == 2
    assert six["default_images_per_s"] > 0 and six["images_per_s"] in six["rounds_images_per_s"]
    markdown = (out / "throughput.md").read_text()
    assert "| tuned: rows a call | workers | untuned images/s |" in markdown and "- tuned: --tune (CPU)" in markdown
    # The plan serves what one call gives.
    session = throughput.make_session(export_dir / "decoder.onnx", "cpu", threads=2)
    z = throughput.make_input("latent", (LATENT,), 7, seed=2)
    tuner = measure._Tuner("cpu", 2, True)
    plan, speeds, serve = tuner.run(session, export_dir / "decoder.onnx", z, runtime.DEFAULT_BATCH_SIZE)
    serve()
    assert plan == runtime.Plan(4, 2) and isinstance(serve, runtime.SlicedRun) and len(speeds) == 2  # 7 rows
    np.testing.assert_allclose(serve.outputs()[0], session.run(None, {session.get_inputs()[0].name: z})[0],
                               atol=1e-6)
    # Where the untuned plan wins, the point's own timing stands: nothing more to time.
    monkeypatch.setattr(runtime, "choose_plan", lambda runs, seconds=0: (list(runs)[0], {p: 1.0 for p in runs}))
    assert tuner.run(session, export_dir / "decoder.onnx", z, runtime.DEFAULT_BATCH_SIZE)[::2] == (
        runtime.Plan(7), None)
    tuner.close()
    # Only the CPU has plans to choose.
    assert throughput.main([str(export_dir), "--out", str(tmp_path / "cuda"), "--device", "cuda", "--tune"]) == 2


def test_iobinding_matches_a_plain_run_on_cpu(export_dir):
    session = throughput.make_session(export_dir / "encoder.onnx", "cpu", threads=1)
    x = throughput.make_input("image", SHAPE, 3, seed=1)
    bound = throughput.BoundRun(session, {"image": x}, "cpu")
    bound()
    (expected,) = session.run(None, {"image": x})
    (got,) = bound.outputs()
    np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-6)
    assert got.shape == (3, LATENT)


def test_a_large_batch_in_pieces_gives_what_one_call_gives(export_dir):
    session = throughput.make_session(export_dir / "decoder.onnx", "cpu", threads=1)
    z = throughput.make_input("latent", (LATENT,), 7, seed=2)
    pieces = PiecesRun(session, z, 3)  # 3 + 3 + 1 rows
    pieces()
    (expected,) = session.run(None, {session.get_inputs()[0].name: z})
    (got,) = pieces.outputs()
    assert len(pieces._bindings) == 3 and got.shape == expected.shape
    np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-6)


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
    from benchmarks import sessions

    monkeypatch.setattr(sessions, "providers_for", lambda device, cuda_graph=False: ["CPUExecutionProvider"])
    with pytest.raises(throughput.DeviceUnavailableError, match="did not activate CUDAExecutionProvider"):
        throughput.make_session(throughput.matmul_model(4), "cuda", threads=1)


def test_the_onnxruntime_path_imports_no_tensorflow():
    # The light part of zoo (zoo.schema's file names and atomic writes) is welcome; models and Keras are not.
    code = ("import sys, benchmarks.throughput, benchmarks.flops, benchmarks.measure, benchmarks.report, "
            "benchmarks.targets, benchmarks.jax_baseline, benchmarks.tf_baseline, benchmarks.keras_parts; "
            "bad = [m for m in ('tensorflow', 'keras', 'zoo.models', 'zoo.registry', 'tf2onnx') if m in sys.modules]; "
            "assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True)


# --- the Keras-on-JAX baseline and the GPU table, on the CPU ---------------------------------------------------


@pytest.fixture(scope="module")
def conv_vae_export(tmp_path_factory):
    """A tiny trained and exported conv_vae run: convolutions and a two-output encoder."""
    from tests.helpers import export_tiny_run

    return export_tiny_run(tmp_path_factory.mktemp("jax"), "conv_vae") / "export"


def test_jax_baseline_worker_matches_onnxruntime_on_cpu(conv_vae_export, tmp_path):
    """On a folder laid out as gpu_benchmark.sh --prepare lays it: ONNX files, config.json, model.weights.h5."""
    import shutil

    from benchmarks import discovery, keras_parts, measure

    assert discovery.resolve_model(conv_vae_export).keras_source == {
        "kind": "run", "path": str(conv_vae_export.parent.resolve())}
    prepared = tmp_path / "conv_vae_mnist"
    prepared.mkdir()
    for name in ("encoder.onnx", "decoder.onnx"):
        shutil.copy(conv_vae_export / name, prepared / name)
    shutil.copy(conv_vae_export.parent / schema.CONFIG, prepared / schema.CONFIG)
    assert keras_parts.main(["weights", str(conv_vae_export.parent), str(prepared)]) == 0
    model = discovery.resolve_model(prepared, parts=("encoder", "decoder"))
    assert model.keras_source == {"kind": "run", "path": str(prepared.resolve())}
    result = throughput.run_benchmark([model], parts=("encoder", "decoder"), batch_sizes=(1, 5), threads=1,
                                      repeats=3, max_seconds=0.05, warmup_seconds=0, peak_sizes=(64,), quiet=True,
                                      tf_baseline=False, jax_baseline=True)
    assert result["jax"]["backend"] == "cpu" and result["jax"]["keras_backend"] == "jax"
    assert not result["jax"]["tensorflow_imported"]
    for part in ("encoder", "decoder"):
        parity = result["models"][0]["parts_info"][part]["fp32"]["jax_parity"]
        assert parity["batch_size"] == 1 and parity["max_abs_diff"] < 1e-4, (part, parity)
    for row in result["rows"]:
        assert row["jax_runs"] == 3 and row["jax_images_per_s"] > 0 and row["jax_copy_images_per_s"] > 0
        assert row["ort_jax_ratio"] == pytest.approx(row["images_per_s"] / row["jax_images_per_s"])
    # Both outputs of the VAE encoder, at a batch that is not the parity check's, straight from the worker.
    jax = measure.JAXBaseline("cpu", quiet=True)
    try:
        got = jax.outputs(model, "encoder", 7, seed=3)
    finally:
        jax.close()
    session = ort.InferenceSession(str(model.parts["encoder"]), providers=["CPUExecutionProvider"])
    want = session.run(None, {"image": throughput.make_input("image", (28, 28, 1), 7, seed=3)})
    assert len(got) == len(want) == 2
    for g, w in zip(got, want):
        np.testing.assert_allclose(g, w, atol=1e-4)


def test_the_whole_gpu_table_with_faked_cuda(export_dir, tmp_path, monkeypatch):
    """--device cuda end to end, with CPU sessions that report the CUDA provider and Keras on JAX on the CPU: every
    column of the GPU table is filled, and the GPU targets are evaluated."""
    import shutil

    from benchmarks import measure
    from tests import fake_cuda

    run = tmp_path / "tiny_deep_ae"
    shutil.copytree(export_dir.parent, run)
    for part in ("encoder", "decoder"):
        shutil.copy(run / "export" / schema.onnx_file(part), run / "export" / schema.onnx_file(part, "fp16"))
    host = fake_cuda.LibcHost()
    fake_cuda.install(monkeypatch, host)
    monkeypatch.setitem(measure.JAX_BACKENDS, "cuda", ("cpu",))
    monkeypatch.delitem(sys.modules, "tensorflow", raising=False)  # the fixture's export loaded it in this process
    out = tmp_path / "results"
    assert throughput.main([str(run / "export"), "--device", "cuda", "--parts", "encoder,decoder",
                            "--precision", "fp32,fp16", "--batch-sizes", "1,64", "--out", str(out), "--threads", "1",
                            "--repeats", "3", "--max-seconds", "0.02", "--warmup-seconds", "0", "--peak-sizes", "64",
                            "--quiet"]) == 0
    result = json.loads((out / "throughput_cuda.json").read_text())
    assert result["device"] == "cuda" and result["tensorflow"] is None and result["jax"]["backend"] == "cpu"
    settings = result["settings"]
    assert settings["cuda_graphs"] and settings["jax_baseline"] and not settings["tf_baseline"]
    assert settings["host_memory"] == "page-locked (cudaHostAlloc)"
    assert [(r["part"], r["batch_size"], r["precision"]) for r in result["rows"]] == [
        (p, b, q) for p in ("encoder", "decoder") for b in (1, 64) for q in ("fp32", "fp16")]
    for row in result["rows"]:
        assert row["provider"] == "CUDAExecutionProvider" and "graph_error" not in row
        for key in ("images_per_s", "copy_images_per_s", "pinned_images_per_s", "graph_images_per_s",
                    "graph_copy_images_per_s", "graph_fraction_of_peak", "jax_images_per_s",
                    "jax_copy_images_per_s", "ort_jax_ratio", "ort_graph_jax_ratio", "ort_jax_ratio_copy"):
            assert row.get(key), key
        assert not [k for k in row if k.startswith("tf_")]
    # Sessions with CUDA graphs asked for them; the others did not.
    asked = [s.asked[0] for s in fake_cuda.FakeCudaSession.made if not isinstance(s.asked[0], str)]
    assert {"enable_cuda_graph": "1", "device_id": "0"} in [o for _, o in asked]
    assert {"device_id": "0"} in [o for _, o in asked]
    assert set(result["targets"]) == {"ort_at_least_jax", "conv_decoder_fraction_of_peak",
                                      "batch1_encoder_latency_cuda_graphs", "copy_inclusive_batch4096"}
    assert result["targets"]["ort_at_least_jax"]["met"] in (True, False)
    assert len(result["targets"]["ort_at_least_jax"]["points"]) == 2  # encoder, decoder at batch 64 (fp32)
    assert result["targets"]["copy_inclusive_batch4096"]["met"] is None  # no batch 4096 here
    markdown = (out / "throughput_cuda.md").read_text()
    for heading in ("graph p50 us", "pinned images/s", "graph+copy images/s", "JAX images/s", "ORT/JAX"):
        assert heading in markdown
    assert "Keras on JAX vs onnxruntime fp32, max abs difference: encoder" in markdown
    assert "host memory for the copies: page-locked" in markdown
    assert (out / "throughput_cuda_tiny_deep_ae.png").is_file()


# --- the targets -------------------------------------------------------------------------------------------------


def _row(model, part, batch, precision="fp32", **values):
    row = {"model": model, "family": model, "part": part, "batch_size": batch, "precision": precision,
           "images_per_s": 1.0, "latency_us_p50": 10.0, "flops_per_image": 1e6, "peak_gflops_per_s": 100.0,
           "fraction_of_peak": 0.5}
    row.update(values)
    return row


def _models(conv=("conv_ae",), dense=("deep_ae",)):
    by_op = {m: {"Conv": 1, "ConvTranspose": 1} for m in conv}
    by_op.update({m: {"MatMul": 1} for m in dense})
    return [{"name": m, "flops": {p: {"flops": 1, "by_op": ops} for p in ("encoder", "decoder")}}
            for m, ops in by_op.items()]


def test_cpu_targets_on_synthetic_results():
    from benchmarks import targets

    rows = []
    for i in range(180):  # 9 of 180 fp32 points slower than TensorFlow: 171 >= 170
        rows.append(_row("deep_ae", "encoder", i, ort_tf_ratio=0.9 if i < 9 else 1.5))
    rows += [_row("deep_ae", "encoder", 64, "int8", ort_tf_ratio=2.5), _row("deep_ae", "decoder", 64, "int8",
                                                                              ort_tf_ratio=1.8),
             _row("deep_ae", "decoder", 8, "int8", ort_tf_ratio=1.1)]  # below batch 64: not a target point
    checked = targets.evaluate({"device": "cpu", "rows": rows, "models": _models()})
    assert checked["fp32_at_least_tf_at_most_points"]["met"] is True
    assert checked["fp32_at_least_tf_at_most_points"]["at_least_tf"] == 171
    assert checked["ort_at_least_tf_everywhere"]["met"] is False
    int8 = checked["int8_over_tf_fp32"]
    assert int8["met"] is False and [p["value"] for p in int8["points"]] == [2.5, 1.8]
    lines = targets.report_lines(checked)
    assert any(line.startswith("- [MISSED] int8 onnxruntime >= 2x TensorFlow fp32 at batch >= 64") and
               "worst 1.80x (deep_ae decoder int8 b64)" in line for line in lines)
    assert any("[met] fp32 onnxruntime >= TensorFlow at >= 170 of 180 points" in line and
               "171 of 180 points, 170 needed" in line for line in lines)
    # 11 slower points of 180 miss it; with fewer points the need scales down.
    rows = [_row("deep_ae", "encoder", i, ort_tf_ratio=0.9 if i < 11 else 1.5) for i in range(180)]
    assert targets.evaluate({"device": "cpu", "rows": rows})["fp32_at_least_tf_at_most_points"]["met"] is False
    rows = [_row("deep_ae", "encoder", i, ort_tf_ratio=0.9 if i < 1 else 1.5) for i in range(18)]
    assert targets.evaluate({"device": "cpu", "rows": rows})["fp32_at_least_tf_at_most_points"]["needed"] == 17
    empty = targets.evaluate({"device": "cpu", "rows": []})
    assert all(t["met"] is None for t in empty.values())
    assert all("[not measured]" in line for line in targets.report_lines(empty))


def test_gpu_targets_on_synthetic_results(tmp_path, capsys):
    from benchmarks import targets

    rows = [
        # onnxruntime >= JAX: the encoder by its CUDA graph, the decoder not at all; batch 8 is not a target point.
        _row("deep_ae", "encoder", 64, images_per_s=90.0, graph_images_per_s=120.0, jax_images_per_s=100.0),
        _row("deep_ae", "decoder", 64, images_per_s=90.0, jax_images_per_s=100.0),
        _row("deep_ae", "decoder", 8, images_per_s=1.0, jax_images_per_s=100.0),
        _row("conv_ae", "encoder", 1024, images_per_s=5.0),  # no JAX figure: not measured
        # Conv decoder at batch 1024: 30% in fp32, 40% with fp16 (best precision counts).
        _row("conv_ae", "decoder", 1024, images_per_s=30e3, flops_per_image=1e6, peak_gflops_per_s=100.0),
        _row("conv_ae", "decoder", 1024, "fp16", images_per_s=40e3, flops_per_image=1e6, peak_gflops_per_s=100.0),
        # Batch-1 encoder latency with graphs: the best precision of each model.
        _row("deep_ae", "encoder", 1, graph_latency_us_p50=35.0),
        _row("deep_ae", "encoder", 1, "fp16", graph_latency_us_p50=38.0),
        _row("conv_ae", "encoder", 1, graph_latency_us_p50=55.0),
        # Copy-inclusive at 4096, dense models only: the best way counts.
        _row("deep_ae", "encoder", 4096, copy_images_per_s=3e6, pinned_images_per_s=7e6),
        _row("deep_ae", "decoder", 4096, copy_images_per_s=3e6, graph_copy_images_per_s=6.5e6),
        _row("conv_ae", "decoder", 4096, copy_images_per_s=1e6),
    ]
    result = {"device": "cuda", "rows": rows, "models": _models(), "machine": {"gpus": [{"name": "H200"}]}}
    checked = targets.evaluate(result)
    jax = checked["ort_at_least_jax"]
    assert jax["met"] is False
    assert [(p["model"], p["part"], p["value"], p["onnxruntime"]) for p in jax["points"]][:3] == [
        ("deep_ae", "encoder", 1.2, "cuda graph"), ("deep_ae", "decoder", 0.9, "iobinding"),
        ("conv_ae", "encoder", None, "iobinding")]
    assert len(jax["points"]) == 7 and len(jax["not_measured"]) == 5  # every fp32 point at batch >= 64
    conv = checked["conv_decoder_fraction_of_peak"]
    assert conv["met"] is True and [(p["precision"], p["value"]) for p in conv["points"]] == [("fp16", 0.4)]
    graph = checked["batch1_encoder_latency_cuda_graphs"]
    assert graph["met"] is False and sorted((p["model"], p["value"]) for p in graph["points"]) == [
        ("conv_ae", 55.0), ("deep_ae", 35.0)]
    copy = checked["copy_inclusive_batch4096"]
    assert copy["met"] is True and copy["target_images_per_s"] == 6e6
    assert sorted((p["part"], p["way"], p["value"]) for p in copy["points"]) == [
        ("decoder", "graph_copy", 6.5e6), ("encoder", "pinned", 7e6)]
    lines = targets.report_lines(checked)
    assert any("[MISSED] fp32 onnxruntime (IOBinding or CUDA graph, the faster) >= Keras on JAX" in line
               and "worst 0.90x (deep_ae decoder fp32 b64); 5 points not measured" in line for line in lines)
    assert any("[MISSED] batch-1 encoder p50 latency <= 40 us" in line and "worst 55.0 us" in line for line in lines)
    assert any("[met] copy-inclusive throughput" in line and "worst 6,500,000 images/s" in line for line in lines)
    # The command line reads result files.
    path = tmp_path / "throughput_cuda.json"
    path.write_text(json.dumps(result))
    from benchmarks import targets as module

    assert module.main([str(path)]) == 0
    out = capsys.readouterr().out
    assert out.startswith("{} (cuda, H200):".format(path)) and "[met] conv decoders >= 35%" in out
    assert module.main([str(tmp_path / "missing.json")]) == 2
