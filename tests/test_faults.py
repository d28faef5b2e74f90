"""Fault injection: kills inside a checkpoint write and after the last epoch, full disks, two writers,
hostile output folders and bad arguments. Each case checks the exit code, a one-line message without a
traceback, that no finished epoch is lost and that no corrupt file stands under a final name."""

import contextlib
import csv
import functools
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import keras
import numpy as np
import pytest

from export import exporter, release, runtime
from tests.helpers import export_tiny_run, write_idx_dir
from zoo import checkpoint, fileio, train, weights

pytestmark = [pytest.mark.faults, pytest.mark.usefixtures("offline")]  # offline: tests/conftest.py
ROOT = Path(__file__).resolve().parents[1]
PRESET = "ae_mnist"
TF_STARTUP = re.compile(r"[IWE]\d{4} [\d:.]+ +\d+ \S+\.cc:\d+\]|WARNING: All log messages before absl")


@pytest.fixture(scope="module")
def idx_dir(tmp_path_factory):
    return write_idx_dir(tmp_path_factory.mktemp("faults") / "idx", n_train=200, n_test=32)


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """A finished, exported tiny run (for export, release and runtime cases)."""
    return export_tiny_run(tmp_path_factory.mktemp("exported"), "ae")


def argv(idx_dir, out, *extra, epochs=3):
    return [PRESET, "--epochs", str(epochs), "--limit", "128", "--data-dir", str(idx_dir), "--out", str(out),
            "--quiet", *extra]


def one_line_error(err):
    """The stderr of a refused command: exactly one line starting with 'error: ', no traceback."""
    lines = [line for line in err.strip().splitlines() if line.strip()]
    lines = [line for line in lines if not TF_STARTUP.match(line)]  # a child's TensorFlow import (issue 19)
    assert "Traceback" not in err, err
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    return lines[0]


def history_epochs(run):
    with open(run / "history.csv") as f:
        return [int(row["epoch"]) for row in csv.DictReader(f)]


def final_names_are_whole(folder):
    """No temporary file left, and every .keras / .h5 / .json under a final name is readable."""
    for path in Path(folder).rglob("*"):
        assert not path.name.startswith(fileio.PARTIAL), path
        if path.suffix == ".json":
            json.loads(path.read_text())
        elif path.name.endswith((".keras", ".h5")):
            assert path.stat().st_size > 0
            if path.suffix == ".keras":
                keras.models.load_model(path)


class Spy(keras.callbacks.Callback):
    def __init__(self):
        super().__init__()
        self.started = []

    def on_epoch_begin(self, epoch, logs=None):
        self.started.append(epoch)


class Raise(keras.callbacks.Callback):
    def __init__(self, at_epoch, exc=KeyboardInterrupt):
        super().__init__()
        self.at_epoch, self.exc = at_epoch, exc

    def on_epoch_end(self, epoch, logs=None):
        if epoch == self.at_epoch:
            raise self.exc


def with_callbacks(monkeypatch, *callbacks):
    """Make train.main run its training with extra callbacks."""
    monkeypatch.setattr(train, "train", functools.partial(train.train, callbacks=list(callbacks)))


# --- kills (SIGKILL in a child process) -----------------------------------------------------------------------

KILL_SCRIPT = textwrap.dedent("""
    import os, signal, sys
    import keras
    from zoo import train, training
    where, args = sys.argv[1], sys.argv[2:]
    if where == "checkpoint":  # the second checkpoint: half written, then the process dies
        save, calls = keras.Model.save_weights, []
        def dying_save(self, path, *a, **k):
            calls.append(path)
            save(self, path, *a, **k)
            if len(calls) == 2:
                size = os.path.getsize(path)
                with open(path, "r+b") as f:
                    f.truncate(size // 2)
                os.kill(os.getpid(), signal.SIGKILL)
        keras.Model.save_weights = dying_save
    else:  # after the last epoch, while the test set is evaluated
        def dying_evaluate(*a, **k):
            os.kill(os.getpid(), signal.SIGKILL)
        training.evaluate = dying_evaluate
    sys.exit(train.main(args))
""")


def run_killed(where, args, tmp_path):
    env = dict(os.environ, PYTHONPATH=str(ROOT), TF_CPP_MIN_LOG_LEVEL="3")
    proc = subprocess.run([sys.executable, "-c", KILL_SCRIPT, where, *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-3000:]


def test_kill_inside_a_checkpoint_write_keeps_the_last_good_epoch(idx_dir, tmp_path, capsys):
    out = tmp_path / "run"
    run_killed("checkpoint", argv(idx_dir, out), tmp_path)
    state = checkpoint.read_state(out / train.BACKUP_DIR)
    assert state["epoch"] == 1, "the first epoch's checkpoint is still the current one"
    assert not (out / "metrics.json").exists()
    spy = Spy()
    with pytest.MonkeyPatch.context() as mp:
        with_callbacks(mp, spy)
        assert train.main(argv(idx_dir, out)) == 0
    assert spy.started == [1, 2], "resumed after the one finished epoch"
    assert history_epochs(out) == [0, 1, 2]
    assert not (out / train.BACKUP_DIR).exists()
    final_names_are_whole(out)


def test_kill_after_the_last_epoch_keeps_the_training(idx_dir, tmp_path):
    out = tmp_path / "run"
    run_killed("after-last-epoch", argv(idx_dir, out), tmp_path)
    assert checkpoint.read_state(out / train.BACKUP_DIR)["epoch"] == 3
    assert not (out / "metrics.json").exists()
    spy = Spy()
    with pytest.MonkeyPatch.context() as mp:
        with_callbacks(mp, spy)
        assert train.main(argv(idx_dir, out)) == 0
    assert spy.started == [], "no epoch is trained again"
    assert history_epochs(out) == [0, 1, 2]
    final_names_are_whole(out)


def test_unreadable_checkpoint_is_reported_and_the_one_before_is_used(idx_dir, tmp_path, monkeypatch, capsys):
    out = tmp_path / "run"
    with_callbacks(monkeypatch, Raise(at_epoch=1))
    assert train.main(argv(idx_dir, out)) == 130
    state = checkpoint.read_state(out / train.BACKUP_DIR)
    assert state["epoch"] == 2
    newest = out / train.BACKUP_DIR / state["weights"]
    newest.write_bytes(newest.read_bytes()[:1000])  # truncated, as a crash on another tool might leave it
    capsys.readouterr()
    spy = Spy()
    with_callbacks(monkeypatch, spy)
    assert train.main(argv(idx_dir, out)) == 0
    err = capsys.readouterr().err
    warnings = [line for line in err.splitlines() if "cannot be read" in line]
    assert len(warnings) == 1 and "Traceback" not in err
    assert spy.started == [1, 2]
    assert history_epochs(out) == [0, 1, 2]


def test_resumed_run_ends_with_the_weights_of_an_uninterrupted_one(idx_dir, tmp_path):
    # dae: the noise draws depend on the SeedGenerator state, which the checkpoint must carry too.
    kwargs = dict(epochs=3, limit=128, data_dir=idx_dir, verbose=0, seed=5)
    whole = train.train("dae_mnist", out=tmp_path / "whole", **kwargs)
    with pytest.raises(KeyboardInterrupt):
        train.train("dae_mnist", out=tmp_path / "resumed", callbacks=[Raise(at_epoch=0)], **kwargs)
    resumed = train.train("dae_mnist", out=tmp_path / "resumed", **kwargs)
    a = keras.models.load_model(whole / "model.keras").get_weights()
    b = keras.models.load_model(resumed / "model.keras").get_weights()
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x, y)
    assert (json.loads((whole / "metrics.json").read_text())["metrics"]
            == json.loads((resumed / "metrics.json").read_text())["metrics"])


# --- full disks -----------------------------------------------------------------------------------------------


@contextlib.contextmanager
def small_disk(tmp_path, size="8m"):
    """A tmpfs of `size` (needs root); yields (folder, fill) where fill() takes all its free space."""
    folder = tmp_path / "disk"
    folder.mkdir()
    if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", "size=" + size, "tmpfs", str(folder)],
                                           capture_output=True).returncode != 0:
        pytest.skip("a real full disk needs root to mount a tmpfs")

    def fill():
        for name, chunk in (("filler", 65536), ("filler-tail", 512)):  # then the last few bytes
            with open(folder / name, "wb", buffering=0) as f, contextlib.suppress(OSError):
                while True:
                    f.write(b"\0" * chunk)

    try:
        yield folder, fill
    finally:
        subprocess.run(["umount", "-l", str(folder)], check=False)


class FillDisk(keras.callbacks.Callback):
    def __init__(self, fill, after_epoch):
        super().__init__()
        self.fill, self.after_epoch = fill, after_epoch

    def on_epoch_end(self, epoch, logs=None):
        if epoch == self.after_epoch:
            self.fill()


def free_disk(folder):
    for name in ("filler", "filler-tail"):
        (folder / name).unlink(missing_ok=True)


@pytest.mark.parametrize("after_epoch, what", [(0, "a checkpoint"), (2, "the final save")])
def test_full_disk_during_training_loses_no_epoch(after_epoch, what, idx_dir, tmp_path, monkeypatch, capsys):
    with small_disk(tmp_path) as (disk, fill):
        out = disk / "run"
        with_callbacks(monkeypatch, FillDisk(fill, after_epoch))
        assert train.main(argv(idx_dir, out)) == 1, what
        message = one_line_error(capsys.readouterr().err)
        assert "No space left on device" in message
        assert not (out / "metrics.json").exists() and not (out / "model.keras").exists()
        assert checkpoint.read_state(out / train.BACKUP_DIR)["epoch"] == after_epoch + 1
        free_disk(disk)
        spy = Spy()
        with_callbacks(monkeypatch, spy)
        assert train.main(argv(idx_dir, out)) == 0
        assert spy.started == list(range(after_epoch + 1, 3))
        assert history_epochs(out) == [0, 1, 2]
        final_names_are_whole(out)


def test_full_disk_during_export_release_and_runtime_output(exported, tmp_path, capsys):
    images = np.random.default_rng(0).uniform(0, 1, (4, 28, 28, 1)).astype(np.float32)
    np.save(tmp_path / "images.npy", images)
    with small_disk(tmp_path) as (disk, fill):
        fill()
        commands = [
            (exporter.main, [str(exported), "--out", str(disk / "export"), "--quiet"], disk / "export"),
            (release.main, [str(exported), "--out", str(disk / "dist"), "--quiet"], disk / "dist"),
            (runtime.main, ["encode", str(exported / "export"), str(tmp_path / "images.npy"), "--out",
                            str(disk / "codes.npy")], disk / "codes.npy"),
        ]
        for main, args, target in commands:
            rc = main(args)
            message = one_line_error(capsys.readouterr().err)
            assert rc in (1, 2) and ("No space left on device" in message or "space" in message), message
            assert not target.exists() or not any(target.iterdir()), "nothing half-written under " + str(target)
        assert sorted(p.name for p in disk.iterdir()) == ["filler", "filler-tail"]


# --- two writers ---------------------------------------------------------------------------------------------


def test_a_second_writer_is_refused_in_one_line(idx_dir, tmp_path, capsys):
    out = tmp_path / "run"
    out.mkdir()
    with fileio.FolderLock(out):
        assert train.main(argv(idx_dir, out)) == 2
        message = one_line_error(capsys.readouterr().err)
        assert "is being written by pid {}".format(os.getpid()) in message
    assert not (out / train.BACKUP_DIR).exists()


def test_two_processes_on_one_run_dir(idx_dir, tmp_path):
    out = tmp_path / "run"
    env = dict(os.environ, PYTHONPATH=str(ROOT), TF_CPP_MIN_LOG_LEVEL="3")
    command = [sys.executable, "-m", "zoo.train", *argv(idx_dir, out, epochs=2)]
    procs = [subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(2)]
    results = [(p.wait(timeout=300), p.stderr.read()) for p in procs]
    codes = sorted(rc for rc, _ in results)
    assert codes == [0, 2], results
    refused = next(err for rc, err in results if rc == 2)
    message = one_line_error(refused)
    assert "is being written by " in message or "holds a finished run" in message
    assert history_epochs(out) == [0, 1]


def test_a_stale_lock_from_a_dead_process_is_taken_over(idx_dir, tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / fileio.FolderLock.NAME).write_text("pid 999999 on some-host\n")
    assert train.main(argv(idx_dir, out, epochs=1)) == 0
    assert not (out / fileio.FolderLock.NAME).exists()


# --- output folders ---------------------------------------------------------------------------------------------


def test_a_finished_run_is_not_overwritten_without_overwrite(idx_dir, tmp_path, monkeypatch, capsys):
    out = tmp_path / "run"
    assert train.main(argv(idx_dir, out, epochs=1)) == 0
    before = (out / "model.keras").read_bytes()
    (out / "export").mkdir()
    fileio.write_marker(out / "export", exporter.EXPORT_KIND)
    for preset in (PRESET, "linear_ae_mnist"):
        assert train.main([preset, *argv(idx_dir, out, epochs=1)[1:]]) == 2
        assert "holds a finished run" in one_line_error(capsys.readouterr().err)
    assert (out / "model.keras").read_bytes() == before
    # With --overwrite the old completion marker and export go before any training, so a crash cannot
    # leave a folder that looks complete but mixes two models.
    with_callbacks(monkeypatch, Raise(at_epoch=0))
    assert train.main(argv(idx_dir, out, "--overwrite", epochs=2)) == 130
    assert not (out / "metrics.json").exists() and not (out / "export").exists()
    monkeypatch.undo()
    assert train.main(argv(idx_dir, out, epochs=2)) == 0
    assert history_epochs(out) == [0, 1]


def test_training_into_a_folder_of_user_files_is_refused(idx_dir, tmp_path, capsys):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "thesis.tex").write_text("precious")
    assert train.main(argv(idx_dir, out)) == 2
    assert "did not write" in one_line_error(capsys.readouterr().err)
    assert sorted(p.name for p in out.iterdir()) == ["thesis.tex"]
    # Files that merely share a run's names are not a run, --overwrite or not.
    project = tmp_path / "project"
    (project / "export").mkdir(parents=True)
    (project / "config.json").write_text('{"lr": 0.1}')
    (project / "metrics.json").write_text('{"acc": 0.9}')
    (project / "export" / "slides.pdf").write_text("precious")
    assert train.main(argv(idx_dir, project, "--overwrite")) == 2
    assert "did not write" in one_line_error(capsys.readouterr().err)
    assert (project / "export" / "slides.pdf").is_file() and (project / "config.json").read_text() == '{"lr": 0.1}'


@pytest.mark.parametrize("where", ["run", "parent", "inside", "user", "user-onnx"])
def test_export_and_release_never_replace_what_they_did_not_make(where, exported, tmp_path, capsys):
    user = tmp_path / "user"
    user.mkdir()
    (user / "notes.txt").write_text("precious")
    onnx_only = tmp_path / "onnx"  # a user's own encoder.onnx: a known name, but no parity.json, so not an export
    onnx_only.mkdir()
    (onnx_only / "encoder.onnx").write_text("precious")
    out = {"run": exported, "parent": exported.parent, "inside": exported / "savedmodel-copy", "user": user,
           "user-onnx": onnx_only}[where]
    before = sorted(str(p) for p in out.parent.rglob("*")) if out.exists() else None
    for main in (exporter.main, release.main):
        assert main([str(exported), "--out", str(out), "--quiet"]) == 2
        message = one_line_error(capsys.readouterr().err)
        assert str(out) in message
        if before is not None:
            assert sorted(str(p) for p in out.parent.rglob("*")) == before
    assert (user / "notes.txt").read_text() == "precious"
    assert (onnx_only / "encoder.onnx").read_text() == "precious"
    assert (exported / "model.keras").is_file() and (exported / "export" / "encoder.onnx").is_file()


def test_export_and_release_replace_their_own_output(exported, tmp_path):
    (tmp_path / "dist").mkdir()
    (tmp_path / "dist" / (fileio.PARTIAL + "ae_mnist-x1")).mkdir()  # what a killed release leaves behind
    for _ in range(2):
        exporter.export_run(exported, formats=["onnx"], out=tmp_path / "x", verbose=0)
        release.release([exported], tmp_path / "dist", verbose=0)
    assert fileio.marker_kind(tmp_path / "x") == exporter.EXPORT_KIND
    assert fileio.marker_kind(tmp_path / "dist") == release.RELEASE_KIND
    assert not [p for p in (tmp_path / "x").rglob(fileio.PARTIAL + "*")]


# --- bad arguments and stale files -----------------------------------------------------------------------------


@pytest.mark.parametrize("extra, message", [
    (["--limit", "0"], "--limit must be at least 1"),
    (["--limit", "-5"], "--limit must be at least 1"),
    (["--seed", "-1"], "--seed must be between 0 and"),
    (["--lr", "inf"], "--lr must be a positive finite number"),
    (["--lr", "nan"], "--lr must be a positive finite number"),
])
def test_bad_settings_are_one_line_and_create_nothing(extra, message, idx_dir, tmp_path, capsys):
    out = tmp_path / "run"
    assert train.main(argv(idx_dir, out, *extra)) == 2
    assert message in one_line_error(capsys.readouterr().err)
    assert not out.exists()


def test_failures_before_and_at_the_first_epoch_leave_nothing(tmp_path, idx_dir, monkeypatch, capsys):
    out = tmp_path / "run"
    assert train.main([PRESET, "--out", str(out), "--quiet"]) == 2  # no data anywhere (offline)
    err = capsys.readouterr().err
    assert err.startswith("error: Dataset 'mnist' is not available") and "Traceback" not in err
    assert not out.exists()

    class Poison(keras.callbacks.Callback):
        def on_train_batch_begin(self, batch, logs=None):
            self.model.trainable_variables[0].assign(
                np.full(self.model.trainable_variables[0].shape, np.nan, np.float32))

    with_callbacks(monkeypatch, Poison())
    assert train.main(argv(idx_dir, out)) == 2
    assert "nothing was written" in one_line_error(capsys.readouterr().err)
    assert not out.exists()


def test_ctrl_c_during_a_download_exits_130_and_keeps_nothing(exported, tmp_path, monkeypatch, capsys):
    dist = tmp_path / "dist"
    release.release([exported], dist, verbose=0)
    cache = tmp_path / "cache"
    (cache / ".incoming-999999-abc").mkdir(parents=True)  # left by a killed fetch
    legacy = cache / ".incoming-old"
    legacy.mkdir()
    os.utime(legacy, (0, 0))

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(weights.urllib.request, "urlopen", interrupted)
    assert weights.main(["fetch", "ae_mnist", "--source", str(dist), "--cache-dir", str(cache)]) == 130
    err = capsys.readouterr().err
    assert "Traceback" not in err and "Interrupted" in err
    assert not list(cache.glob(".incoming-*")), "stale and interrupted staging folders are gone"
    monkeypatch.undo()
    assert weights.main(["fetch", "ae_mnist", "--source", str(dist), "--cache-dir", str(cache), "--quiet"]) == 0


def test_a_manifest_entry_named_like_the_extraction_folder_is_refused(exported, tmp_path, capsys):
    dist = tmp_path / "dist"
    release.release([exported], dist, verbose=0)
    manifest_path = dist / "ae_mnist" / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    manifest["files"][0]["file"] = "savedmodel"
    manifest_path.write_text(json.dumps(manifest))
    assert weights.main(["fetch", "ae_mnist", "--source", str(dist), "--cache-dir", str(tmp_path / "c")]) == 2
    assert "bad file entry" in one_line_error(capsys.readouterr().err)


def test_runtime_output_errors_and_permissions(exported, tmp_path, capsys):
    np.save(tmp_path / "images.npy", np.zeros((2, 28, 28, 1), np.float32))
    model, images = str(exported / "export"), str(tmp_path / "images.npy")
    assert runtime.main(["encode", model, images, "--out", str(tmp_path)]) == 2
    assert "is a folder" in one_line_error(capsys.readouterr().err)
    (tmp_path / "afile").write_text("")
    assert runtime.main(["encode", model, images, "--out", str(tmp_path / "afile" / "codes.npy")]) == 2
    assert "Cannot write" in one_line_error(capsys.readouterr().err)
    old = os.umask(0o022)
    try:
        assert runtime.main(["encode", model, images, "--out", str(tmp_path / "codes.npy")]) == 0
    finally:
        os.umask(old)
    assert (tmp_path / "codes.npy").stat().st_mode & 0o777 == 0o644


def test_data_check_reads_every_split(tmp_path, capsys):
    from zoo import data

    folder = write_idx_dir(tmp_path / "idx", n_train=50, n_test=10)
    train_images = folder / "train-images-idx3-ubyte.gz"
    train_images.write_bytes(train_images.read_bytes()[:100])
    assert data.main(["mnist", "--data-dir", str(folder)]) == 2
    assert "train-images" in capsys.readouterr().err


def test_idx_files_of_another_dataset_get_a_warning(tmp_path, caplog):
    from zoo import data, idx

    folder = tmp_path / "idx"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for split, n in (("train", 1000), ("test", 1000)):
        images = (rng.uniform(0, 1, (n, 28, 28)) < data.DATASETS["fashion_mnist"].mean_pixel).astype(np.uint8) * 255
        image_name, label_name = (v[0] for v in idx.idx_file_names(split))
        idx.write_idx(folder / image_name, images)
        idx.write_idx(folder / label_name, np.zeros(n, np.uint8))
    with caplog.at_level("WARNING", logger="zoo.data"):
        data.load_arrays("mnist", "test", data_dir=folder)
    assert "look like fashion_mnist" in caplog.text
    caplog.clear()
    with caplog.at_level("WARNING", logger="zoo.data"):
        data.load_arrays("fashion_mnist", "test", data_dir=folder)
    assert caplog.text == ""


def test_a_truncated_model_keras_is_named_as_such(exported, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(exported, run, ignore=shutil.ignore_patterns("export"))
    (run / "model.keras").write_bytes((exported / "model.keras").read_bytes()[:5000])
    assert exporter.main([str(run), "--quiet"]) == 2
    message = one_line_error(capsys.readouterr().err)
    assert "truncated or corrupt" in message and "not found" not in message.lower()
