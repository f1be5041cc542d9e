"""The declared version floors are ones the code really runs on; nobody lowers them silently.

- diffusers 0.41.0 is the first release with ``HookRegistry.invalidate_child_registries_cache`` (worker/cache)
  and ``cache_context(name, **kwargs)`` (the engine passes step_index, sigma, num_inference_steps);
  0.40.0 has neither.
- transformers 5.0: 4.57.x requires huggingface-hub<1.0 while diffusers 0.41.0 requires
  huggingface-hub>=1.32, so no older transformers installs beside it; 5.0.0 runs the tiny pipeline.
- torch 2.6: ``torch.accelerator`` (worker/parallel.py) and diffusers 0.41's own torch floor.
- torch_npu's releases track torch's: the npu extra pins both to the 2.13 series.
"""

import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement

PYPROJECT = Path(__file__).parents[2] / "pyproject.toml"
FLOORS = {
    # name: (the oldest release the code runs on, the newest one it does not)
    "torch": ("2.6.0", "2.5.1"),
    "diffusers": ("0.41.0", "0.40.0"),
    "transformers": ("5.0.0", "4.57.6"),
}


def requirements(extra: str) -> dict[str, Requirement]:
    project = tomllib.loads(PYPROJECT.read_text())["project"]
    parsed = (Requirement(line) for line in project["optional-dependencies"][extra])
    return {requirement.name.lower().replace("_", "-"): requirement for requirement in parsed}


@pytest.mark.parametrize(("name", "releases"), FLOORS.items(), ids=list(FLOORS))
def test_worker_floors_are_the_releases_the_code_needs(name: str, releases: tuple[str, str]) -> None:
    oldest_working, newest_failing = releases
    specifier = requirements("worker")[name].specifier
    assert newest_failing not in specifier, f"{name} {specifier} admits {newest_failing}"
    assert oldest_working in specifier, f"{name} {specifier} excludes {oldest_working}, which works"


def test_torch_npu_is_pinned_to_the_torch_series_it_is_built_for() -> None:
    npu = requirements("npu")
    torch_series, npu_series = npu["torch"].specifier, npu["torch-npu"].specifier
    for version in ("2.13.0", "2.13.1"):
        assert version in torch_series and version in npu_series
    assert "2.13.0.post2" in npu_series  # Ascend's patch releases of the same build
    for other in ("2.12.0", "2.14.0"):
        assert other not in torch_series and other not in npu_series
