"""Shared test set-up: every test gets its own weights cache and "latest extraction" record."""

from __future__ import annotations

import pytest


@pytest.fixture(autouse=True)
def _isolated_home(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("FPNCLI_HOME", str(tmp_path_factory.mktemp("fpncli-home")))
