"""zoo.search: float and binary FAISS indexes of exported encoders' codes, queries, pictures, refusals."""

import json

import numpy as np
import pytest

from tests.helpers import export_tiny_run, write_idx_dir
from zoo import fileio, search

faiss = pytest.importorskip("faiss")


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    base = tmp_path_factory.mktemp("search")
    return {family: export_tiny_run(base, family) for family in ("ae", "vae")}


@pytest.fixture(scope="module")
def pngs(tmp_path_factory):
    from PIL import Image

    folder = tmp_path_factory.mktemp("pngs")
    rng = np.random.default_rng(0)
    for i in range(12):
        Image.fromarray(rng.integers(0, 256, (28, 28), dtype=np.uint8)).save(folder / "img_{:02d}.png".format(i))
    Image.fromarray(np.zeros((32, 32), np.uint8)).save(folder.parent / "wrong_size.png")
    return folder


@pytest.fixture
def idx_env(tmp_path, monkeypatch):
    folder = write_idx_dir(tmp_path / "idx", n_train=120, n_test=40)
    monkeypatch.setenv("ZOO_DATA_DIR", str(folder))
    monkeypatch.setenv("ZOO_OFFLINE", "1")
    monkeypatch.setenv("TFDS_DATA_DIR", str(tmp_path / "tfds"))
    return folder


def test_index_a_folder_of_pngs_and_query_it(models, pngs, tmp_path, capsys):
    out = tmp_path / "index"
    assert search.main(["index", str(pngs), "--model", str(models["ae"]), "--out", str(out), "--quiet"]) == 0
    assert fileio.marker_kind(out) == search.INDEX_KIND
    meta = json.loads((out / search.META).read_text())
    assert meta["count"] == 12 and meta["kind"] == "flat"
    assert meta["model"]["sha256"] == search.sha256_file(models["ae"] / "export" / "encoder.onnx")
    query_png = str(pngs / "img_03.png")
    assert search.main(["query", str(out), query_png, "5", "--k", "4", "--out", str(tmp_path / "r.png"),
                        "--json"]) == 0
    results = json.loads(capsys.readouterr().out)
    assert [len(r["neighbours"]) for r in results] == [4, 4]
    first = results[0]["neighbours"][0]  # an indexed image finds itself, at distance 0
    assert first["path"].endswith("img_03.png") and first["distance"] == pytest.approx(0, abs=1e-6)
    assert all(n["id"] != 5 for n in results[1]["neighbours"]), "an item query does not return the item itself"
    distances = [n["distance"] for n in results[1]["neighbours"]]
    assert distances == sorted(distances)
    assert (tmp_path / "r.png").stat().st_size > 1000


@pytest.mark.parametrize("kind, bits, binarize", [("hnsw", 32, None), ("binary", 16, None), ("binary", 32, "lsh"),
                                                  ("binary-hnsw", 16, "lsh")])
def test_index_a_dataset_split_with_each_kind(kind, bits, binarize, models, idx_env, tmp_path, capsys):
    out = tmp_path / "index"
    args = ["index", "mnist:train", "--model", str(models["vae"]), "--out", str(out), "--kind", kind,
            "--bits", str(bits), "--quiet"] + (["--binarize", binarize] if binarize else [])
    assert search.main(args) == 0
    index = search.Index(out)
    assert index.meta["count"] == 120 and len(index.items) == 120
    if kind.startswith("binary"):
        assert index.meta["binary"]["bits"] == bits
        assert index.meta["binary"]["method"] == (binarize or "itq")  # itq past the tiny code's 4 units too
    results, _ = index.query(["mnist:test:3", "7"], k=5)
    assert all(len(r["neighbours"]) == 5 for r in results)
    assert results[0]["label"] == 3 and all("label_name" in n for n in results[0]["neighbours"])
    assert search.main(["query", str(out), "0", "--k", "3"]) == 0
    printed = capsys.readouterr().out
    assert printed.count(" id ") == 3 and "mnist:train:" in printed


def test_itq_and_threshold_binarizers():
    rng = np.random.default_rng(0)
    codes = rng.normal(size=(500, 24)).astype(np.float32)
    itq = search.Binarizer.fit(codes, 16)
    assert itq.method == "itq" and itq(codes).shape == (500, 2)
    hashed = 1 / (1 + np.exp(np.clip(-30 * codes, -60, 60)))  # nearly binary, as semantic hashing learns
    threshold = search.Binarizer.fit(hashed, 99, "threshold")
    assert threshold.bits == 24 and np.all(threshold.thresholds == 0.5)
    np.testing.assert_array_equal(np.unpackbits(threshold(hashed), axis=1), (hashed > 0.5).astype(np.uint8))
    sparse = 0.3 / (1 + np.exp(-codes))  # a code in [0, 1] that stays below 0.5: cut at each unit's median
    cut = search.Binarizer.fit(sparse, 99, "threshold")
    np.testing.assert_allclose(cut.thresholds, np.median(sparse, axis=0))
    assert np.unpackbits(cut(sparse), axis=1).mean() == pytest.approx(0.5, abs=0.01)
    with pytest.raises(search.SearchError, match="needs at least 24"):
        search.Binarizer.fit(codes[:10], 16)
    with pytest.raises(search.SearchError, match="multiple of 8"):
        search.Binarizer.fit(codes, 12)
    wide = search.Binarizer.fit(codes, 32)  # more bits than units: random rotation up, then ITQ
    assert wide.method == "itq" and len(wide.transforms) == 2 and wide(codes).shape == (500, 4)
    assert len(np.unique(np.unpackbits(wide(codes), axis=1), axis=0)) > 400  # the bits tell the codes apart


def test_refusals_are_one_line(models, pngs, tmp_path, capsys):
    out = tmp_path / "index"
    assert search.main(["index", str(pngs), "--model", str(models["ae"]), "--out", str(out), "--quiet"]) == 0
    cases = [
        (["query", str(out), str(pngs.parent / "wrong_size.png")], "32x32 pixels"),
        (["query", str(out), str(pngs / "img_00.png"), "--model", str(models["vae"])], "built by another model"),
        (["query", str(out), "99"], "Item 99 is not in"),
        (["query", str(tmp_path), "1"], "is not a search index"),
        (["index", str(pngs), "--model", str(tmp_path / "nope"), "--out", str(tmp_path / "i2")], "No encoder.onnx"),
        (["index", "nowhere", "--model", str(models["ae"]), "--out", str(tmp_path / "i3")], "neither DATASET:SPLIT"),
        (["index", str(pngs), "--model", str(models["ae"]), "--out", str(tmp_path / "i4"), "--kind", "binary",
          "--bits", "16"], "needs at least 16"),
        (["query", str(out), "mnist:validation:3"], "the split must be one of"),
    ]
    for args, message in cases:
        assert search.main(args) == 2, args
        err = capsys.readouterr().err
        assert message in err and "Traceback" not in err and len(err.strip().splitlines()) == 1, err


def test_building_twice_follows_the_overwrite_rules(models, pngs, tmp_path, capsys):
    out = tmp_path / "index"
    for _ in range(2):  # an index folder this command made is replaced
        assert search.main(["index", str(pngs), "--model", str(models["ae"]), "--out", str(out), "--quiet"]) == 0
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("precious")
    assert search.main(["index", str(pngs), "--model", str(models["ae"]), "--out", str(mine), "--quiet"]) == 2
    assert "did not write" in capsys.readouterr().err
    assert (mine / "notes.txt").read_text() == "precious"
