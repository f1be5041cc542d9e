"""The Kubernetes manifests, rendered by kustomize as `kubectl apply -k` would, checked without a cluster:
every core resource against Kubernetes' OpenAPI schemas (kubernetes-validate, strict), KEDA's resources
against KEDA's own CRDs, and the things that matter checked against the code they configure."""

from __future__ import annotations

import re
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml
from prometheus_client import CollectorRegistry
from redis import Redis
from starlette.routing import Match

from cli.main import _parser
from service.core.settings import Settings, SettingsError, load_settings
from service.core.storage import parse_storage_url
from service.core.video_store import VideoStore
from tests.deploy.manifests import (
    RENDERS,
    REPO,
    Render,
    documented_drain_margin_s,
    pod_specs,
    render,
    secret_data,
    substitute,
)
from worker.metrics import ProbeServer

KUBERNETES_VERSIONS = ("1.29.0", "1.37.0")
"""The oldest and newest Kubernetes the manifests are checked against (deploy/README.md)."""
CRDS = Path(__file__).parent / "crds"
PROMETHEUS = REPO / "deploy" / "prometheus.yml"
WORKER_IMAGES = {"cpu": "wanserve-worker-cpu", "cuda": "wanserve-worker", "ascend": "wanserve-worker-npu"}
DEVICE_RESOURCES = {"cuda": "nvidia.com/gpu", "ascend": "huawei.com/Ascend910"}
DEVICE_SETTING = {"cpu": "cpu", "cuda": "cuda", "ascend": "npu"}
WRITABLE_ROOT = {("ascend", "worker")}
"""Containers whose root filesystem stays writable, and why: deploy/components/ascend/worker-npu.yaml."""


def device_of(name: str) -> str:
    return name.split("+")[0].removesuffix("-s3")


@pytest.fixture(params=RENDERS)
def rendered(request: pytest.FixtureRequest) -> Render:
    return render(request.param)


# ------------------------------------------------------------------------------------------- schemas


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_core_resources_validate_strictly(rendered: Render, version: str) -> None:
    core = [doc for doc in rendered.docs if not doc["apiVersion"].startswith("keda.sh/")]
    assert len(core) >= 10
    for doc in core:
        try:
            kubernetes_validate.validate(doc, version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            pytest.fail(
                f"{rendered.name}: {doc['kind']}/{doc['metadata']['name']} on {version}: {exc.message}"
            )


def _crd_schema(kind: str, version: str) -> dict[str, Any]:
    for path in CRDS.glob("keda.sh_*.yaml"):
        crd = yaml.safe_load(path.read_text())
        if crd["spec"]["names"]["kind"] == kind:
            served = {v["name"]: v for v in crd["spec"]["versions"] if v["served"]}
            assert version in served, f"KEDA serves {kind} as {sorted(served)}, not {version}"
            return _strict(served[version]["schema"]["openAPIV3Schema"])
    raise AssertionError(f"no vendored CRD for {kind}")


def _strict(schema: Any) -> Any:
    """An OpenAPI v3 schema that rejects unknown fields, as the API server's strict field validation does
    (objects without ``x-kubernetes-preserve-unknown-fields`` are closed)."""
    if isinstance(schema, list):
        return [_strict(item) for item in schema]
    if not isinstance(schema, dict):
        return schema
    closed = {key: _strict(value) for key, value in schema.items()}
    if (
        "properties" in schema
        and "additionalProperties" not in schema
        and not schema.get("x-kubernetes-preserve-unknown-fields")
    ):
        closed["additionalProperties"] = False
    return closed


def test_keda_resources_validate_against_keda_crds(rendered: Render) -> None:
    keda = [doc for doc in rendered.docs if doc["apiVersion"].startswith("keda.sh/")]
    assert [doc["kind"] for doc in keda].count("ScaledObject") == 1
    for doc in keda:
        schema = _crd_schema(doc["kind"], doc["apiVersion"].split("/")[1])
        # metadata is the API server's to check (the CRD schema leaves it open); the rest is KEDA's.
        body = {key: value for key, value in doc.items() if key != "metadata"}
        errors = sorted(jsonschema.Draft7Validator(schema).iter_errors(body), key=str)
        assert not errors, f"{rendered.name}: {doc['kind']}: " + "; ".join(
            f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in errors
        )


def test_the_strict_crd_check_rejects_an_unknown_field() -> None:
    schema = _crd_schema("ScaledObject", "v1alpha1")
    doc = {k: v for k, v in render("cpu").get("ScaledObject", "wanserve-worker").items() if k != "metadata"}
    jsonschema.validate(doc, schema)
    doc = {**doc, "spec": {**doc["spec"], "maxReplicas": 3}}  # a misspelt maxReplicaCount
    with pytest.raises(jsonschema.ValidationError, match="maxReplicas"):
        jsonschema.validate(doc, schema)


# ------------------------------------------------------------------------------------------- references


def test_every_reference_resolves(rendered: Render) -> None:
    names = {(doc["kind"], doc["metadata"]["name"]) for doc in rendered.docs}
    for workload, pod in pod_specs(rendered):
        claim_templates = {
            template["metadata"]["name"]
            for doc in rendered.of_kind("StatefulSet")
            if doc["metadata"]["name"] == workload
            for template in doc["spec"].get("volumeClaimTemplates", [])
        }
        volumes = {volume["name"] for volume in pod.get("volumes", [])} | claim_templates
        for volume in pod.get("volumes", []):
            if "persistentVolumeClaim" in volume:
                claim = volume["persistentVolumeClaim"]["claimName"]
                assert ("PersistentVolumeClaim", claim) in names, f"{workload}: no claim {claim}"
        for container in pod["containers"]:
            for mount in container.get("volumeMounts", []):
                assert mount["name"] in volumes, f"{workload}: mounts unknown volume {mount['name']}"
            for source in container.get("envFrom", []):
                kind, ref = (
                    ("ConfigMap", "configMapRef") if "configMapRef" in source else ("Secret", "secretRef")
                )
                assert (kind, source[ref]["name"]) in names, f"{workload}: no {kind} {source[ref]['name']}"
            for variable in container.get("env", []):
                ref = variable.get("valueFrom", {}).get("configMapKeyRef")
                if ref:
                    data = rendered.get("ConfigMap", ref["name"])["data"]
                    assert ref["key"] in data, f"{workload}: ConfigMap {ref['name']} has no {ref['key']}"
    for service in rendered.of_kind("Service"):
        pods = [
            doc["spec"]["template"]
            for doc in rendered.workloads()
            if service["spec"]["selector"].items() <= doc["spec"]["template"]["metadata"]["labels"].items()
        ]
        assert len(pods) == 1, f"Service {service['metadata']['name']} selects {len(pods)} workloads"
        port_names = {port.get("name") for c in pods[0]["spec"]["containers"] for port in c.get("ports", [])}
        for port in service["spec"]["ports"]:
            assert port["targetPort"] in port_names
    for doc in rendered.of_kind("TriggerAuthentication"):
        for ref in doc["spec"]["secretTargetRef"]:
            secret = rendered.get("Secret", ref["name"])
            assert ref["key"] in secret["data"], (
                f"TriggerAuthentication: Secret {ref['name']} has no {ref['key']}"
            )
    scaled = rendered.get("ScaledObject", "wanserve-worker")
    assert ("Deployment", scaled["spec"]["scaleTargetRef"]["name"]) in names
    for trigger in scaled["spec"]["triggers"]:
        if "authenticationRef" in trigger:
            assert ("TriggerAuthentication", trigger["authenticationRef"]["name"]) in names


def test_one_namespace_and_the_labels_prometheus_selects(rendered: Render) -> None:
    namespaces = {doc["metadata"].get("namespace") for doc in rendered.docs if doc["kind"] != "Namespace"}
    assert namespaces == {"wanserve"}
    for doc in rendered.docs:
        assert doc["metadata"]["labels"]["app.kubernetes.io/part-of"] == "wanserve", doc["metadata"]["name"]
    # deploy/prometheus.yml's pod discovery (active or given as a commented example) keeps pods by label and
    # by port name: ours must be kept.
    keep = _prometheus_pod_keep_rules()
    if not keep:
        pytest.skip("deploy/prometheus.yml has no Kubernetes pod discovery to check against")
    for component, port in (("api", "http"), ("worker", "metrics")):
        labels = rendered.component(component)["spec"]["template"]["metadata"]["labels"]
        meta = {"container_port_name": {p["name"] for p in rendered.container(component)["ports"]}}
        meta |= {"label_" + re.sub(r"[^a-zA-Z0-9_]", "_", key): {value} for key, value in labels.items()}
        for source, regex in keep:
            assert any(re.fullmatch(regex, value) for value in meta.get(source, ())), (
                f"prometheus.yml keeps {source} =~ {regex}: the {component} pod has {meta.get(source)}"
            )
        assert port in meta["container_port_name"]


def _prometheus_pod_keep_rules() -> list[tuple[str, str]]:
    """(meta label without ``__meta_kubernetes_pod_``, regex) of each ``keep`` rule, commented out or not."""
    text = "\n".join(line.lstrip().removeprefix("#").rstrip() for line in PROMETHEUS.read_text().splitlines())
    rule = re.compile(
        r"source_labels: \[__meta_kubernetes_pod_(\w+)\]\s*\n\s*regex: (\S+)\s*\n\s*action: keep"
    )
    return rule.findall(text)


# ------------------------------------------------------------------------------------------- images, devices


def test_images_per_overlay(rendered: Render) -> None:
    version = re.search(r'^version = "([^"]+)"', (REPO / "pyproject.toml").read_text(), re.M)
    assert version
    targets = set(re.findall(r"^FROM \S+ AS (\S+)$", (REPO / "Dockerfile").read_text(), re.M))
    images = {
        "api": rendered.container("api")["image"],
        "worker": rendered.container("worker")["image"],
    }
    assert images == {
        "api": f"wanserve-api:{version[1]}",
        "worker": f"{WORKER_IMAGES[device_of(rendered.name)]}:{version[1]}",
    }
    for image in images.values():  # every image is one of the Dockerfile's targets, named wanserve-<target>
        assert image.split(":")[0].removeprefix("wanserve-") in targets


def test_device_requests_match_the_worker_group(rendered: Render) -> None:
    device = device_of(rendered.name)
    group = rendered.generated("ConfigMap", "wanserve-worker-group")["data"]
    nproc = int(group["nproc"])
    from worker.parallel import ParallelLayout

    ParallelLayout(nproc, int(group["ulysses"]), int(group["cfg"]))  # the layout the worker will accept
    for workload in rendered.workloads():
        component = workload["metadata"]["labels"]["app.kubernetes.io/component"]
        limits = rendered.container(component).get("resources", {}).get("limits", {})
        requested = {name: limits[name] for name in DEVICE_RESOURCES.values() if name in limits}
        expected = {DEVICE_RESOURCES[device]: nproc} if component == "worker" and device != "cpu" else {}
        assert requested == expected, f"{component} on {rendered.name}"
    assert rendered.environment("worker")["WANSERVE_DEVICE"] == DEVICE_SETTING[device]


def test_containers_keep_the_image_entry_point_and_the_cli_accepts_their_args(rendered: Render) -> None:
    for component in ("api", "worker"):
        container = rendered.container(component)
        assert "command" not in container, f"{component}: `command` would replace dumb-init as PID 1"
        environment = rendered.environment(component)
        args = [substitute(arg, environment) for arg in container["args"]]
        assert args[:2] == ["wanserve", component]
        parsed = _parser().parse_args(args[1:])
        if component == "worker":
            assert (parsed.nproc, parsed.ulysses, parsed.cfg) == tuple(
                int(rendered.generated("ConfigMap", "wanserve-worker-group")["data"][key])
                for key in ("nproc", "ulysses", "cfg")
            )


# ------------------------------------------------------------------------------------------- settings


def test_every_wanserve_variable_is_a_setting_and_its_value_is_accepted(
    rendered: Render, monkeypatch: pytest.MonkeyPatch
) -> None:
    known = {f"WANSERVE_{name.upper()}" for name in Settings.model_fields}
    named: set[str] = set()
    for doc in rendered.of_kind("ConfigMap"):
        named |= set(doc.get("data", {}))
    for doc in rendered.of_kind("Secret"):
        named |= set(doc.get("data", {}))
    for _, pod in pod_specs(rendered):
        for container in pod["containers"]:
            named |= {variable["name"] for variable in container.get("env", [])}
            named |= set(re.findall(r"\$\((\w+)\)", " ".join(container.get("args", []))))
    unknown = sorted(name for name in named if name.startswith("WANSERVE_") and name not in known)
    assert not unknown, f"{rendered.name}: not settings: {unknown}"
    for component in ("api", "worker"):
        environment = rendered.environment(component)
        for name in [*known, "HOME"]:
            monkeypatch.delenv(name, raising=False)
        for name, value in environment.items():
            monkeypatch.setenv(name, value)
        try:
            settings = load_settings()
            parse_storage_url(settings.storage_url) if settings.storage_url else None
        except SettingsError as exc:
            pytest.fail(f"{rendered.name}: the {component} would refuse its environment: {exc}")
        assert settings.redis_url, f"{rendered.name}: {component} has no WANSERVE_REDIS_URL"
        assert settings.storage_url, f"{rendered.name}: {component} has no WANSERVE_STORAGE_URL"


# ------------------------------------------------------------------------------------------- autoscaling


def test_keda_watches_the_queue_and_the_running_jobs_of_wanserve_queue(rendered: Render) -> None:
    settings = _settings(rendered.environment("worker"))
    store = VideoStore(Redis.from_url(settings.redis_url or "redis://unused"), settings.queue)
    scaled = rendered.get("ScaledObject", "wanserve-worker")
    triggers = {trigger["name"]: trigger for trigger in scaled["spec"]["triggers"]}
    assert {name: t["metadata"]["listName"] for name, t in triggers.items()} == {
        "queued": store.queue.key,  # rq:queue:<WANSERVE_QUEUE>
        "running": store.queue.started_job_registry.key,  # rq:wip:<WANSERVE_QUEUE>
    }
    assert scaled["spec"]["minReplicaCount"] == 0 < scaled["spec"]["maxReplicaCount"]
    assert scaled["spec"]["scaleTargetRef"]["name"] == rendered.component("worker")["metadata"]["name"]
    database = (settings.redis_url or "").rsplit("/", 1)[1]
    bundled = [s for s in rendered.of_kind("Service") if s["metadata"]["name"] == "wanserve-redis"]
    for trigger in triggers.values():
        assert trigger["type"] == "redis"
        assert trigger["metadata"]["databaseIndex"] == database
        if bundled:  # KEDA runs in its own namespace: the address names the Service's
            service = bundled[0]
            port = service["spec"]["ports"][0]["port"]
            host = f"{service['metadata']['name']}.{service['metadata']['namespace']}.svc.cluster.local"
            assert trigger["metadata"]["address"] == f"{host}:{port}"
            assert settings.redis_url == f"redis://{service['metadata']['name']}:{port}/{database}"
        else:
            assert "address" not in trigger["metadata"] and trigger["authenticationRef"]


def _settings(environment: dict[str, str]) -> Settings:
    """The settings a container with this environment reads (empty values are unset, as Settings has it)."""
    fields = {
        name.removeprefix("WANSERVE_").lower(): value
        for name, value in environment.items()
        if name.startswith("WANSERVE_") and value
    }
    return Settings.model_validate(fields)


def test_the_api_scales_on_cpu_and_keeps_a_replica_through_disruptions(rendered: Render) -> None:
    api = rendered.component("api")
    assert "replicas" not in api["spec"], "the HPA owns the API's replica count"
    assert "replicas" not in rendered.component("worker")["spec"], "KEDA owns the workers' replica count"
    hpa = rendered.get("HorizontalPodAutoscaler", "wanserve-api")
    assert hpa["spec"]["scaleTargetRef"] == {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "name": "wanserve-api",
    }
    assert hpa["spec"]["minReplicas"] >= 2
    assert [metric["resource"]["name"] for metric in hpa["spec"]["metrics"]] == ["cpu"]
    assert rendered.container("api")["resources"]["requests"]["cpu"]  # utilisation needs a request
    pdb = rendered.get("PodDisruptionBudget", "wanserve-api")
    labels = api["spec"]["template"]["metadata"]["labels"]
    assert pdb["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert pdb["spec"]["minAvailable"] < hpa["spec"]["minReplicas"]


# ------------------------------------------------------------------------------------------- lifecycle


def test_workers_have_time_to_finish_the_running_job(rendered: Render) -> None:
    timeout = _settings(rendered.environment("worker")).job_timeout_s
    pod = rendered.component("worker")["spec"]["template"]["spec"]
    assert pod["terminationGracePeriodSeconds"] >= timeout + documented_drain_margin_s()
    # A preStop hook would only add a second signal (a group then stops at once) or wait to be killed:
    # the drain is the pod's one SIGTERM (deploy/README.md, "Stopping a worker").
    assert "lifecycle" not in rendered.container("worker")


def test_probes_ask_endpoints_that_exist(rendered: Render) -> None:
    from service.api.app import create_app

    app = create_app(Settings(redis_url="redis://127.0.0.1:1/0"))
    api = rendered.container("api")
    ports = {port["name"]: port["containerPort"] for port in api["ports"]}
    assert api["args"][api["args"].index("--port") + 1] == str(ports["http"])
    for probe in ("readinessProbe", "livenessProbe"):
        get = api[probe]["httpGet"]
        assert get["port"] == "http"
        scope = {"type": "http", "path": get["path"], "method": "GET"}
        assert any(route.matches(scope)[0] == Match.FULL for route in app.routes), f"API has no {get['path']}"
    assert (api["readinessProbe"]["httpGet"]["path"], api["livenessProbe"]["httpGet"]["path"]) == (
        "/readyz",
        "/healthz",
    )

    worker = rendered.container("worker")
    metrics_port = _settings(rendered.environment("worker")).metrics_port
    assert {port["name"]: port["containerPort"] for port in worker["ports"]} == {"metrics": metrics_port}
    server = ProbeServer(0, CollectorRegistry(), lambda: {"model_loaded": True}, host="127.0.0.1").start()
    try:
        for probe, path in (
            ("startupProbe", "/readyz"),
            ("readinessProbe", "/readyz"),
            ("livenessProbe", "/healthz"),
        ):
            get = worker[probe]["httpGet"]
            assert (get["path"], get["port"]) == (path, "metrics")
            assert _status(f"http://127.0.0.1:{server.port}{get['path']}") == 200
        assert _status(f"http://127.0.0.1:{server.port}/no-such-probe") == 404  # the check can fail
    finally:
        server.close()


def _status(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return int(response.status)
    except urllib.error.HTTPError as exc:
        return exc.code


# ------------------------------------------------------------------------------------------- security


def test_pods_run_as_non_root_without_capabilities(rendered: Render) -> None:
    device = device_of(rendered.name)
    for workload, pod in pod_specs(rendered):
        assert pod["securityContext"]["runAsNonRoot"] is True, workload
        assert pod["securityContext"]["runAsUser"] > 0, workload
        assert pod["automountServiceAccountToken"] is False, workload
        for container in pod["containers"]:
            context = container["securityContext"]
            assert context["allowPrivilegeEscalation"] is False, workload
            assert context["capabilities"]["drop"] == ["ALL"], workload
            writable = (device, container["name"]) in WRITABLE_ROOT
            assert context["readOnlyRootFilesystem"] is not writable, f"{workload} on {rendered.name}"
    for component in ("api", "worker"):  # the images' user, so files on shared volumes agree
        assert (
            rendered.component(component)["spec"]["template"]["spec"]["securityContext"]["runAsUser"] == 10001
        )


def test_secrets_hold_the_credentials_and_config_maps_do_not(rendered: Render) -> None:
    secret = {
        key
        for doc in rendered.of_kind("Secret")
        if doc["metadata"]["name"].startswith("wanserve-secrets")
        for key in secret_data(doc)
    }
    assert {"WANSERVE_API_KEYS", "WANSERVE_WEBHOOK_SECRET"} <= secret
    if "s3" in rendered.name:
        assert {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"} <= secret
    for doc in rendered.of_kind("ConfigMap"):
        for key, value in doc.get("data", {}).items():
            assert not re.search(r"KEY|SECRET|PASSWORD|TOKEN", key), f"ConfigMap holds {key}"
            assert "@" not in value, f"ConfigMap {key} looks like it carries credentials"
