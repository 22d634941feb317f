"""Fixtures shared by the service tests."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.service.fake_model import write_fake_model


@pytest.fixture(scope="module")
def models_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A models folder holding the tiny fake model `fake` (tests.service.fake_model), one per test module."""
    root = tmp_path_factory.mktemp("models")
    write_fake_model(root, "fake")
    return root
