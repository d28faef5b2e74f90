"""Fixtures shared by the test modules."""

import pytest


@pytest.fixture
def offline(monkeypatch, tmp_path):
    """No test reads the user's tfds data, their ZOO_DATA_DIR or the network: tfds looks in an empty folder and
    zoo.data fails fast instead of downloading. Modules that train or export use it for every test
    (`pytestmark = pytest.mark.usefixtures("offline")`); test_data checks tfds' own behaviour and does not."""
    monkeypatch.setenv("TFDS_DATA_DIR", str(tmp_path / "tfds"))
    monkeypatch.setenv("ZOO_OFFLINE", "1")
    monkeypatch.delenv("ZOO_DATA_DIR", raising=False)
