"""At run time, in a fresh interpreter: the API process loads no torch, the worker no HTTP layer."""

import subprocess
import sys

import pytest

CHECK = """
import sys
{imports}
loaded = sorted(m for m in {forbidden} if m in sys.modules)
print(",".join(loaded))
"""


def loaded_modules(imports: str, forbidden: set[str]) -> str:
    code = CHECK.format(imports=imports, forbidden=sorted(forbidden))
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return done.stdout.strip()


def test_the_api_process_leaves_torch_out() -> None:
    imports = (
        "from service.core.settings import Settings\n"
        "from service.api.app import create_app\n"
        "create_app(Settings(redis_url='redis://127.0.0.1:1/0'))\n"
        "import cli.main"
    )
    assert loaded_modules(imports, {"torch", "diffusers", "transformers", "worker", "numpy"}) == ""


@pytest.mark.parametrize("module", ["worker.serve", "worker.tasks", "worker.group"])
def test_the_worker_leaves_the_http_layer_out(module: str) -> None:
    forbidden = {"fastapi", "starlette", "uvicorn", "httpx", "service.api", "cli"}
    assert loaded_modules(f"import {module}", forbidden) == ""
