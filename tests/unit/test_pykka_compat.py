"""pykka's private API is used in one module only, and only on the version it was written for."""

from __future__ import annotations

import importlib
from importlib.metadata import version
from pathlib import Path

from actors.runtime import pykka_compat

ROOT = Path(__file__).resolve().parents[2]


def test_pykka_is_the_minor_version_the_compat_module_was_written_for() -> None:
    installed = version("pykka")
    assert installed.startswith(pykka_compat.SUPPORTED + "."), (
        f"pykka {installed} is installed but actors/runtime/pykka_compat.py was written "
        f"against {pykka_compat.SUPPORTED}: review every name in PRIVATE_NAMES against the new "
        "release, then move SUPPORTED and the pin in pyproject.toml together")


def test_every_private_name_the_compat_module_uses_still_exists() -> None:
    missing = []
    for owner, name in pykka_compat.PRIVATE_NAMES:
        head, _, last = owner.rpartition(".")
        module_name, class_name = (head, last) if last[:1].isupper() else (owner, "")
        target: object = importlib.import_module(module_name)
        if class_name:
            target = getattr(target, class_name)
        if not hasattr(target, name):
            missing.append(f"{owner}.{name}")
    assert not missing, f"pykka no longer has {', '.join(missing)}: update pykka_compat.py"


def test_no_module_but_the_compat_module_touches_pykka_private_names() -> None:
    offenders = []
    for path in sorted(ROOT.rglob("*.py")):
        relative = path.relative_to(ROOT)
        if relative.parts[0] in {".git", "build"} \
                or relative == Path("actors/runtime/pykka_compat.py"):
            continue
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if pykka_compat.PRIVATE_USE.search(line):
                offenders.append(f"{relative}:{number}: {line.strip()}")
    assert not offenders, "pykka private API outside pykka_compat.py:\n" + "\n".join(offenders)
