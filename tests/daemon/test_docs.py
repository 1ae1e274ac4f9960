"""Generated documentation stays in step with the code."""

from __future__ import annotations

from pathlib import Path

from daemon.reference import render_reference
from daemon.registry import builtin_registry

ROOT = Path(__file__).resolve().parents[2]


def test_component_reference_is_current() -> None:
    """docs/components.md equals what the config models generate (run `make docs` after changing them)."""
    assert (ROOT / "docs" / "components.md").read_text() == render_reference(builtin_registry())


def test_component_reference_lists_every_key() -> None:
    """Every key of every registered type appears in the reference."""
    text = render_reference(builtin_registry())
    for kind in ("source", "tool"):
        for spec in builtin_registry().specs(kind):  # type: ignore[arg-type]
            assert f"### `type: {spec.type}`" in text
            for name, info in spec.config_model.model_fields.items():
                if name == "type":
                    continue
                assert f"| `{info.alias or name}` |" in text, (spec.type, name)
