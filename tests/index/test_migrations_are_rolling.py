"""Rolling upgrades: a migration must leave the schema usable by the previous release's
code, which keeps serving on the other nodes while one node is upgraded (README,
"Rolling upgrade"). So an ``upgrade()`` only adds: tables, nullable columns or columns
with a server default, indexes. Dropping or renaming what the previous release reads,
or a NOT NULL column it does not fill, waits for a later release's migration, listed
here with the release that stopped reading it."""

from __future__ import annotations

import ast
from pathlib import Path

from netpacs.index.db import MIGRATIONS

# "<revision file>:<operation>" allowed because no released code reads the object.
CONTRACTIONS_ALLOWED: set[str] = set()

FORBIDDEN = {"drop_table", "drop_column", "rename_table", "drop_constraint"}


def _problems(path: Path) -> list[str]:
    tree = ast.parse(path.read_text())
    upgrade = next(
        (n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == "upgrade"), None
    )
    assert upgrade is not None, f"{path.name} has no upgrade()"
    problems = []
    for node in ast.walk(upgrade):
        if not isinstance(node, ast.Call) or not isinstance(node.func, ast.Attribute):
            continue
        op = node.func.attr
        keywords = {k.arg: k.value for k in node.keywords}
        if op in FORBIDDEN:
            problems.append(op)
        elif op == "alter_column" and ("new_column_name" in keywords or "type_" in keywords):
            problems.append(f"{op} (rename or retype)")
        elif op == "alter_column" and _is_false(keywords.get("nullable")):
            problems.append(f"{op} (NOT NULL)")
        elif op == "add_column":
            column = node.args[-1] if node.args else None
            if isinstance(column, ast.Call):
                col_kw = {k.arg: k.value for k in column.keywords}
                if _is_false(col_kw.get("nullable")) and "server_default" not in col_kw:
                    problems.append(f"{op} (NOT NULL without a server default)")
    return [f"{path.name}:{p}" for p in problems if f"{path.name}:{p}" not in CONTRACTIONS_ALLOWED]


def _is_false(value: ast.expr | None) -> bool:
    return isinstance(value, ast.Constant) and value.value is False


def test_every_migration_only_adds_what_the_previous_release_can_ignore() -> None:
    files = sorted((MIGRATIONS / "versions").glob("*.py"))
    assert len(files) >= 8
    problems = [p for f in files for p in _problems(f)]
    assert problems == [], (
        "a migration contracts the schema while the previous release may still be "
        f"serving: {problems}"
    )


def test_the_check_finds_a_dropped_column(tmp_path: Path) -> None:
    bad = tmp_path / "0099_bad.py"
    bad.write_text(
        "def upgrade():\n"
        "    op.drop_column('study', 'accession_number')\n"
        "    op.add_column('study', sa.Column('x', sa.Text(), nullable=False))\n"
        "def downgrade():\n    pass\n"
    )
    assert _problems(bad) == [
        "0099_bad.py:drop_column",
        "0099_bad.py:add_column (NOT NULL without a server default)",
    ]
