"""The layers, read from the source: every import of every module, function-level ones included.

``service.core`` is what the API and the worker share; ``service.api`` is the HTTP side; ``worker`` the torch
side; ``cli`` composes them. tests/e2e/test_import_boundaries.py checks the same at run time.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
TORCH_SIDE = ("torch", "diffusers", "transformers", "accelerate", "numpy", "imageio", "worker")
HTTP_SIDE = ("fastapi", "starlette", "uvicorn", "httpx", "httpcore", "multipart", "service.api")

RULES = {
    "service": ("cli", *TORCH_SIDE),
    "service.core": ("cli", *TORCH_SIDE, *HTTP_SIDE),
    "worker": ("cli", *HTTP_SIDE),
}


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path, package: str | None = None) -> set[str]:
    names: set[str] = set()
    package = package or module_name(path).rsplit(".", 1)[0]
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: resolve against this module's package
                anchor = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                base = f"{anchor}.{base}".rstrip(".")
            names.add(base)
            names.update(f"{base}.{alias.name}" for alias in node.names)
    return names


def within(name: str, prefix: str) -> bool:
    return name == prefix or name.startswith(prefix + ".")


def modules(package: str) -> list[Path]:
    return sorted((ROOT / package.replace(".", "/")).rglob("*.py"))


@pytest.mark.parametrize("package", sorted(RULES))
def test_each_layer_imports_only_what_it_may(package: str) -> None:
    broken = [
        f"{module_name(path)} imports {name}"
        for path in modules(package)
        for name in sorted(imports_of(path))
        if any(within(name, forbidden) for forbidden in RULES[package])
    ]
    assert broken == []


def test_the_rules_see_imports_inside_functions_and_relative_ones(tmp_path: Path) -> None:
    probe = tmp_path / "probe.py"
    probe.write_text(
        "def later():\n"
        "    from worker import engine\n"
        "    import fastapi.responses\n"
        "    from ..api import app\n"
    )
    names = imports_of(probe, package="service.core")
    assert {"worker", "worker.engine", "fastapi.responses", "service.api.app"} <= names
