"""The import graph keeps the layers of ARCHITECTURE.md: imports point downwards only.

app (composition root) -> adapters -> services -> index, storage -> domain. Adapters
depend on services and the domain only; no service speaks a protocol library; only
the composition root reads the settings.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "netpacs"
LAYERS = ("app", "adapters", "services", "index", "storage", "domain")
#: What each layer may import of netpacs (its own layer included).
ALLOWED: dict[str, set[str]] = {
    "adapters": {"adapters", "services", "domain"},
    "services": {"services", "index", "storage", "domain"},
    "index": {"index", "domain"},
    "storage": {"storage", "domain"},
    "domain": {"domain"},
}
#: Libraries a layer must not import: protocols stay in adapters, SQL below services.
FORBIDDEN: dict[str, set[str]] = {
    "adapters": {"sqlalchemy", "alembic", "psycopg"},
    "services": {"fastapi", "starlette", "uvicorn", "pynetdicom", "hl7", "jinja2", "authlib"},
    "index": {"fastapi", "starlette", "uvicorn", "pynetdicom", "hl7"},
    "storage": {"fastapi", "starlette", "uvicorn", "pynetdicom", "hl7", "sqlalchemy"},
    "domain": {"fastapi", "starlette", "uvicorn", "pynetdicom", "hl7", "sqlalchemy"},
}


def imports(path: Path) -> list[str]:
    """Every module ``path`` imports, at any depth (lazy imports in functions too)."""
    found: list[str] = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            found.append(node.module)
    return found


def modules(layer: str) -> list[Path]:
    return sorted(p for p in (PACKAGE / layer).rglob("*.py") if "migrations" not in p.parts)


@pytest.mark.parametrize("layer", [layer for layer in LAYERS if layer != "app"])
def test_a_layer_imports_only_the_layers_below_it(layer: str) -> None:
    wrong = []
    for path in modules(layer):
        for name in imports(path):
            top, _, rest = name.partition(".")
            if top == "netpacs" and rest:  # ``from netpacs import __version__`` is not a layer
                below = rest.partition(".")[0]
                if below not in ALLOWED[layer]:
                    wrong.append(f"{path.relative_to(PACKAGE)} imports {name}")
            elif top in FORBIDDEN[layer]:
                wrong.append(f"{path.relative_to(PACKAGE)} imports {name}")
    assert wrong == []


def test_only_the_composition_root_reads_the_settings() -> None:
    readers = [
        str(path.relative_to(PACKAGE))
        for path in sorted(PACKAGE.rglob("*.py"))
        if "netpacs.app.settings" in imports(path) and path.relative_to(PACKAGE).parts[0] != "app"
    ]
    assert readers == []


def test_every_module_of_the_package_is_in_a_layer() -> None:
    top_level = {p.name for p in PACKAGE.iterdir() if p.suffix == ".py" or p.is_dir()}
    # The synthetic data generators (demo-data, tests and benchmarks) stand beside the
    # layers: nothing in a layer imports them.
    generators = {"demo", "synthetic.py"}
    top_level -= {"__init__.py", "__pycache__", "data", *generators}
    assert top_level == set(LAYERS)
    users = [
        str(path.relative_to(PACKAGE))
        for layer in LAYERS
        if layer != "app"
        for path in modules(layer)
        if any(n.startswith(("netpacs.demo", "netpacs.synthetic")) for n in imports(path))
    ]
    assert users == []
