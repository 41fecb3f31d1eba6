"""Imports point inwards (STYLE: models ← store, broker ← actors ← console, app ← run.py)."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
OURS = {"models", "store", "broker", "actors", "console", "app", "run", "bench", "tests"}

ALLOWED: dict[str, tuple[str, ...]] = {
    "models": (),
    "store": ("models",),
    "broker": ("models",),
    # actors depend on the ports (and the records they carry), never on an adapter
    "actors": ("models", "store.ports", "store.records", "broker.ports"),
    # the console talks to the running system through its public API
    "console": ("models", "actors.system", "actors.protocol", "actors.runtime.metrics"),
    "app": ("models", "store", "broker", "actors"),
}


def imports_of(path: Path) -> list[str]:
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.append(node.module)
        elif isinstance(node, ast.Import):
            found += [alias.name for alias in node.names]
    return found


def test_every_package_imports_only_what_lies_inwards() -> None:
    wrong = []
    for package, allowed in ALLOWED.items():
        for path in sorted((ROOT / package).rglob("*.py")):
            for module in imports_of(path):
                top = module.split(".")[0]
                if top not in OURS or top == package:
                    continue
                if not any(module == a or module.startswith(a + ".") for a in allowed):
                    wrong.append(f"{path.relative_to(ROOT)} imports {module}")
    assert not wrong, "imports against the direction of the layers:\n" + "\n".join(wrong)
