"""The installable package holds every module: `pip install .` (the Dockerfile's) ships all subpackages."""

from __future__ import annotations

import fnmatch
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_every_package_directory_is_included_in_the_distribution() -> None:
    """Each folder of daemon/, streams/, handlers/ with an __init__.py matches the setuptools include list
    (a plain `packages = [...]` of the top-level names silently left streams.rules out of the wheel)."""
    setuptools = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    include = setuptools["packages"]["find"]["include"]
    packages = sorted(
        ".".join(init.parent.relative_to(ROOT).parts)
        for top in ("daemon", "streams", "handlers")
        for init in (ROOT / top).rglob("__init__.py")
    )
    assert "streams.rules.steps" in packages
    missing = [p for p in packages if not any(fnmatch.fnmatchcase(p, pattern) for pattern in include)]
    assert missing == []
