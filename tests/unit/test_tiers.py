"""The test suite's own rule, read from its source: no test imports another tier's modules or another test
module (shared fixtures belong in a conftest.py, shared helpers in a helper module)."""

from __future__ import annotations

import ast
from pathlib import Path

TESTS = Path(__file__).resolve().parents[1]


def imported_test_modules(source: str) -> set[str]:
    """The ``tests.*`` modules ``source`` imports, function-level imports included."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return {name for name in names if name.split(".")[0] == "tests"}


def tier_of(parts: tuple[str, ...]) -> str | None:
    """``unit`` for tests/unit/..., None for a module at the top of tests/."""
    return parts[0] if len(parts) > 1 else None


def broken_rules(relative: Path, source: str) -> list[str]:
    """What the module at ``relative`` (to tests/) imports against the rule."""
    importer = relative.with_suffix("").parts
    broken = []
    for name in sorted(imported_test_modules(source)):
        target = tuple(name.split(".")[1:])
        if not target:
            continue
        if target[-1].startswith("test_") or target[-1] == "conftest":
            broken.append(f"tests/{relative} imports the test module {name}")
        elif tier_of(target) not in (None, tier_of(importer)):
            broken.append(f"tests/{relative} imports {name}, of the {tier_of(target)} tier")
    return broken


def test_no_test_imports_another_tiers_modules_or_another_test_module() -> None:
    broken = [
        rule
        for path in sorted(TESTS.rglob("*.py"))
        for rule in broken_rules(path.relative_to(TESTS), path.read_text())
    ]
    assert broken == [], "\n".join(broken)


def test_what_the_rule_allows_and_refuses() -> None:
    allowed = "from tests.params import PARAMS\nfrom tests.unit.helpers import x\n"
    assert broken_rules(Path("unit/test_a.py"), allowed) == []
    refused = (
        "from tests.e2e.conftest import wait_until\n"
        "def f():\n    from tests.unit.test_b import helper\n"
        "import tests.distributed.params\n"
    )
    assert broken_rules(Path("unit/test_a.py"), refused) == [
        "tests/unit/test_a.py imports tests.distributed.params, of the distributed tier",
        "tests/unit/test_a.py imports the test module tests.e2e.conftest",
        "tests/unit/test_a.py imports the test module tests.unit.test_b",
    ]
