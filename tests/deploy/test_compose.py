"""docker-compose.yml with each of its overlays, as `docker-compose config` (1.29.2, which validates against
the Compose schema offline) resolves it, and what the resolved files promise."""

from __future__ import annotations

import os
import re
import subprocess
from functools import cache
from typing import Any

import pytest
import yaml

from service.core.settings import Settings
from tests.deploy.manifests import REPO, documented_drain_margin_s, tool

COMBINATIONS = {
    "cpu": (),
    "gpu": ("deploy/compose.gpu.yml",),
    "npu": ("deploy/compose.npu.yml",),
}
WORKER_TARGETS = {"cpu": "worker-cpu", "gpu": "worker", "npu": "worker-npu"}


def compose_config(files: tuple[str, ...], **variables: str) -> dict[str, Any]:
    return _compose_config(files, tuple(sorted(variables.items())))


@cache
def _compose_config(files: tuple[str, ...], variable_items: tuple[tuple[str, str], ...]) -> dict[str, Any]:
    variables = dict(variable_items)
    compose = tool(
        "docker-compose", os.environ.get("COMPOSE", REPO / ".venv-compose" / "bin" / "docker-compose")
    )
    # Only the variables given: the caller's WANSERVE_* (the test suite sets some) must not leak in.
    environment = {"PATH": os.environ["PATH"], "HOME": os.environ.get("HOME", "/tmp"), **variables}
    arguments = [compose, "--project-directory", str(REPO), "-f", "docker-compose.yml"]
    for extra in files:
        arguments += ["-f", extra]
    result = subprocess.run(
        [*arguments, "config"], cwd=REPO, env=environment, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, f"docker-compose config ({' '.join(files) or 'base'}):\n{result.stderr}"
    return dict(yaml.safe_load(result.stdout))


@pytest.fixture(params=sorted(COMBINATIONS))
def combination(request: pytest.FixtureRequest) -> tuple[str, dict[str, Any]]:
    return request.param, compose_config(COMBINATIONS[request.param])


def _seconds(duration: str) -> int:
    units = {"h": 3600, "m": 60, "s": 1}
    parts = re.findall(r"(\d+)([hms])", duration)
    assert parts and "".join(n + u for n, u in parts) == duration, f"unexpected duration {duration!r}"
    return sum(int(number) * units[unit] for number, unit in parts)


def test_each_combination_is_valid_and_builds_its_worker_target(
    combination: tuple[str, dict[str, Any]],
) -> None:
    name, config = combination
    services = config["services"]
    assert set(services) == {"redis", "api", "worker"}
    assert services["worker"]["build"]["target"] == WORKER_TARGETS[name]
    assert services["worker"]["image"].split(":")[0] == f"wanserve-{WORKER_TARGETS[name]}"
    assert services["api"]["build"]["target"] == "api"
    targets = set(re.findall(r"^FROM \S+ AS (\S+)$", (REPO / "Dockerfile").read_text(), re.M))
    assert {WORKER_TARGETS[name], "api"} <= targets


def test_restarts_grace_and_redis_durability(combination: tuple[str, dict[str, Any]]) -> None:
    _, config = combination
    services = config["services"]
    # A worker group that gives up exits non-zero: compose restarts it; one stopped on purpose stays stopped.
    assert services["worker"]["restart"] == "on-failure"
    assert services["api"]["restart"] == services["redis"]["restart"] == "unless-stopped"
    timeout = int(services["worker"]["environment"]["WANSERVE_JOB_TIMEOUT_S"])
    assert timeout == Settings.model_fields["job_timeout_s"].default
    assert _seconds(services["worker"]["stop_grace_period"]) >= timeout + documented_drain_margin_s()
    assert services["redis"]["command"][:3] == ["redis-server", "--appendonly", "yes"]
    assert any(
        volume.endswith(":/data:rw") or volume.endswith(":/data") for volume in services["redis"]["volumes"]
    )


def test_every_wanserve_variable_is_a_setting(combination: tuple[str, dict[str, Any]]) -> None:
    _, config = combination
    known = {f"WANSERVE_{field.upper()}" for field in Settings.model_fields}
    for name, service in config["services"].items():
        unknown = {v for v in service.get("environment", {}) if v.startswith("WANSERVE_") and v not in known}
        assert not unknown, f"{name}: not settings: {sorted(unknown)}"
    text = "".join((REPO / path).read_text() for path in ("docker-compose.yml", *COMBINATIONS["npu"]))
    interpolated = set(re.findall(r"\$\{(WANSERVE_\w+?)(?::?-[^}]*)?\}", text))
    assert interpolated <= known, f"interpolated but not settings: {sorted(interpolated - known)}"


def test_the_api_listens_on_localhost_unless_told_otherwise() -> None:
    def published(config: dict[str, Any]) -> list[tuple[str | None, int]]:
        # docker-compose prints a port with a host address in the short form: "127.0.0.1:8000:8000".
        ports: list[tuple[str | None, int]] = []
        for port in config["services"]["api"]["ports"]:
            if isinstance(port, str):
                host, number, _ = port.rsplit(":", 2)
                ports.append((host, int(number)))
            else:
                ports.append((port.get("host_ip"), int(port["published"])))
        return ports

    assert published(compose_config(())) == [("127.0.0.1", 8000)]
    assert published(compose_config((), API_BIND="0.0.0.0", API_PORT="9000")) == [("0.0.0.0", 9000)]


def test_accelerator_overlays_hand_the_worker_its_devices() -> None:
    gpu = compose_config(COMBINATIONS["gpu"])["services"]["worker"]
    [device] = gpu["deploy"]["resources"]["reservations"]["devices"]
    assert device["driver"] == "nvidia" and device["capabilities"] == ["gpu"]
    assert gpu["environment"]["WANSERVE_DEVICE"] == "cuda"
    npu = compose_config(COMBINATIONS["npu"])["services"]["worker"]
    assert {"/dev/davinci0", "/dev/davinci_manager", "/dev/devmm_svm", "/dev/hisi_hdc"} <= set(npu["devices"])
    assert npu["environment"]["WANSERVE_DEVICE"] == "npu"
    assert any(
        volume.startswith("/usr/local/Ascend/driver") and volume.endswith(":ro") for volume in npu["volumes"]
    )
    for config in (gpu, npu):
        assert config["shm_size"]
