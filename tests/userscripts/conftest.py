"""The user-script tier: every script runs as ``python app.py`` in its own namespace."""

from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import need

from .harness import namespaces_available

GUIDE = Path(__file__).resolve().parent / "guide"


@pytest.fixture(scope="session")
def namespaces() -> None:
    ok, reason = namespaces_available()
    need(ok, reason)


@pytest.fixture
def workdir(tmp_path: Path, namespaces: None) -> Iterator[Path]:
    """A directory holding copies of the guide's scripts and config files."""
    for f in GUIDE.iterdir():
        if f.suffix in (".py", ".conf"):
            (tmp_path / f.name).write_text(f.read_text())
    yield tmp_path
