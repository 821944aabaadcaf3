"""Print the config reference (docs/config.md): ``python -m rtserver.configref``."""

from __future__ import annotations

from .config import load_all, markdown

if __name__ == "__main__":
    load_all()
    print(markdown())
