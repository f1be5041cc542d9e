"""Render the Kubernetes manifests with kustomize and find things in them; find the tools the checks run."""

from __future__ import annotations

import base64
import os
import re
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
K8S = REPO / "deploy" / "k8s"
OVERLAYS = tuple(sorted(path.name for path in (K8S / "overlays").iterdir() if path.is_dir()))
COMPONENT_RENDERS = {
    # The optional components, each on the overlay it is most often added to.
    "cuda+external-redis": ("overlays/cuda", ("components/external-redis",)),
    "cuda+wan-model": ("overlays/cuda", ("components/wan-model",)),
    "ascend-s3+wan-model+external-redis": (
        "overlays/ascend-s3",
        ("components/wan-model", "components/external-redis"),
    ),
}
RENDERS = (*OVERLAYS, *COMPONENT_RENDERS)
STRICT_ENV = "DEPLOY_CHECK_STRICT"
"""Set by `make deploy-check`: a missing tool fails the check instead of skipping it."""


def tool(name: str, path: Path | str | None = None) -> str:
    """A tool the checks run; a missing one skips the test (fails it under DEPLOY_CHECK_STRICT)."""
    found = shutil.which(str(path or name))
    if found:
        return found
    message = f"{name} not found ({path or 'on PATH'}): `make deploy-check` installs or names it"
    if os.environ.get(STRICT_ENV):
        pytest.fail(message)
    pytest.skip(message)


def venv_tool(name: str) -> str:
    """A console script installed beside this interpreter (the project's .venv)."""
    return tool(name, Path(sys.executable).parent / name)


def kubectl() -> str:
    return tool("kubectl", os.environ.get("KUBECTL", "kubectl"))


@dataclass(frozen=True)
class Render:
    """One rendered kustomization: its resources, as kubectl would apply them."""

    name: str
    docs: tuple[dict[str, Any], ...]

    def of_kind(self, kind: str) -> list[dict[str, Any]]:
        return [doc for doc in self.docs if doc["kind"] == kind]

    def get(self, kind: str, name: str) -> dict[str, Any]:
        matches = [doc for doc in self.of_kind(kind) if doc["metadata"]["name"] == name]
        assert len(matches) == 1, f"{self.name}: expected one {kind} {name}, found {len(matches)}"
        return matches[0]

    def generated(self, kind: str, name: str) -> dict[str, Any]:
        """A ConfigMap or Secret from a generator, whose name carries a content hash: ``name-<hash>``."""
        matches = [
            doc
            for doc in self.of_kind(kind)
            if doc["metadata"]["name"] == name or doc["metadata"]["name"].rsplit("-", 1)[0] == name
        ]
        assert len(matches) == 1, f"{self.name}: expected one {kind} {name}, found {len(matches)}"
        return matches[0]

    def workloads(self) -> list[dict[str, Any]]:
        return self.of_kind("Deployment") + self.of_kind("StatefulSet")

    def component(self, component: str) -> dict[str, Any]:
        """The Deployment or StatefulSet labelled ``app.kubernetes.io/component: <component>``."""
        matches = [
            doc
            for doc in self.workloads()
            if doc["metadata"]["labels"].get("app.kubernetes.io/component") == component
        ]
        assert len(matches) == 1, f"{self.name}: expected one {component} workload, found {len(matches)}"
        return matches[0]

    def container(self, component: str) -> dict[str, Any]:
        containers = self.component(component)["spec"]["template"]["spec"]["containers"]
        assert len(containers) == 1
        return containers[0]

    def environment(self, component: str) -> dict[str, str]:
        """The variables the component's container starts with: ``envFrom`` in order (a later source wins),
        then ``env`` (values and ConfigMap keys)."""
        container = self.container(component)
        values: dict[str, str] = {}
        for source in container.get("envFrom", []):
            if "configMapRef" in source:
                values.update(self.get("ConfigMap", source["configMapRef"]["name"]).get("data", {}))
            else:
                values.update(secret_data(self.get("Secret", source["secretRef"]["name"])))
        for variable in container.get("env", []):
            if "value" in variable:
                values[variable["name"]] = variable["value"]
            elif "configMapKeyRef" in variable["valueFrom"]:
                ref = variable["valueFrom"]["configMapKeyRef"]
                values[variable["name"]] = self.get("ConfigMap", ref["name"])["data"][ref["key"]]
        return values


def secret_data(secret: dict[str, Any]) -> dict[str, str]:
    return {key: base64.b64decode(value).decode() for key, value in secret.get("data", {}).items()}


@cache
def render(name: str) -> Render:
    """An overlay (``cuda``) or a component render (``cuda+wan-model``) through ``kubectl kustomize``."""
    if name in COMPONENT_RENDERS:
        overlay, components = COMPONENT_RENDERS[name]
        with tempfile.TemporaryDirectory(prefix="kustomize-") as folder:
            # kustomize refuses absolute paths to other kustomizations: relative ones from the temporary root.
            relative = Path(os.path.relpath(K8S, folder))
            kustomization = {
                "apiVersion": "kustomize.config.k8s.io/v1beta1",
                "kind": "Kustomization",
                "resources": [str(relative / overlay)],
                "components": [str(relative / component) for component in components],
            }
            (Path(folder) / "kustomization.yaml").write_text(yaml.safe_dump(kustomization))
            text = _kustomize(Path(folder))
    else:
        text = _kustomize(K8S / "overlays" / name)
    docs = tuple(doc for doc in yaml.safe_load_all(text) if doc)
    return Render(name, docs)


def _kustomize(folder: Path) -> str:
    result = subprocess.run(
        [kubectl(), "kustomize", str(folder)], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, f"kubectl kustomize {folder} failed:\n{result.stderr}"
    return result.stdout


def pod_specs(render: Render) -> list[tuple[str, dict[str, Any]]]:
    """(workload name, pod spec) for every Deployment and StatefulSet."""
    return [(doc["metadata"]["name"], doc["spec"]["template"]["spec"]) for doc in render.workloads()]


def substitute(argument: str, environment: dict[str, str]) -> str:
    """Kubernetes' ``$(VAR)`` expansion in a container's args, for the variables the test knows."""
    for name, value in environment.items():
        argument = argument.replace(f"$({name})", value)
    return argument


def documented_drain_margin_s() -> int:
    """The minimum grace period is WANSERVE_JOB_TIMEOUT_S plus this, as deploy/README.md states it."""
    found = re.search(
        r"terminationGracePeriodSeconds` ≥ `WANSERVE_JOB_TIMEOUT_S` \+ (\d+)",
        (REPO / "deploy" / "README.md").read_text(),
    )
    assert found, "deploy/README.md must state the workers' minimum grace period"
    return int(found[1])
