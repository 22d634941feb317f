"""Fixtures shared by the end-to-end training tests."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.training.tiny_run import tiny_data


@pytest.fixture(scope="session")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny synthetic category (`tiny_run.tiny_data`), made once and only read by the tests that use it.
    A module with other needs defines its own `data` (test_dataset.py)."""
    return tiny_data(tmp_path_factory.mktemp("data"))
