"""The Dockerfile without a Docker engine: hadolint, the versions it pins, what each target runs as, and the
build context its .dockerignore leaves, built into the wheel the images install."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.version import Version

from tests.deploy.manifests import REPO, venv_tool

DOCKERFILE = REPO / "Dockerfile"
TARGETS = ("api", "worker", "worker-cpu", "worker-npu")
REQUIREMENTS_SCRIPT = REPO / "deploy" / "docker" / "pyproject_requirements.py"
ASCEND_ENV = REPO / "deploy" / "docker" / "ascend-env.sh"


def test_hadolint_finds_nothing() -> None:
    result = subprocess.run(
        [venv_tool("hadolint"), "--no-color", str(DOCKERFILE)], capture_output=True, text=True, timeout=60
    )
    assert (result.returncode, result.stdout + result.stderr) == (0, "")


def _stages() -> dict[str, tuple[str, list[str]]]:
    """Each stage: its parent (a stage or an image) and its instructions, continuation lines joined."""
    text = re.sub(r"\\\n\s*", " ", DOCKERFILE.read_text())
    stages: dict[str, tuple[str, list[str]]] = {}
    current: list[str] = []
    for line in text.splitlines():
        line = line.strip()
        found = re.match(r"FROM (\S+) AS (\S+)$", line)
        if found:
            current = []
            stages[found[2]] = (found[1], current)
        elif line and not line.startswith("#") and stages:
            current.append(line)
    return stages


def _instructions(target: str) -> list[str]:
    """A target's instructions with those of the stages it is built on, oldest first."""
    stages = _stages()
    chain: list[str] = []
    while target in stages:
        parent, instructions = stages[target]
        chain = instructions + chain
        target = parent
    return chain


def _arg(name: str) -> str:
    found = re.search(rf"^ARG {name}=(\S+)$", DOCKERFILE.read_text(), re.M)
    assert found, f"Dockerfile has no default for {name}"
    return found[1]


@pytest.mark.parametrize("target", TARGETS)
def test_each_target_runs_as_user_10001_under_an_init_with_exec_form_checks(target: str) -> None:
    instructions = _instructions(target)
    users = [line for line in instructions if line.startswith("USER ")]
    assert users[-1] == "USER 10001:10001"
    [entrypoint] = [line for line in instructions if line.startswith("ENTRYPOINT ")][-1:]
    assert entrypoint.startswith('ENTRYPOINT ["dumb-init", "--single-child", "--"')
    healthcheck = [line for line in instructions if line.startswith("HEALTHCHECK ")][-1]
    assert " CMD [" in healthcheck, "health checks in exec form"
    assert [line for line in instructions if line.startswith("CMD ")][-1].startswith('CMD ["wanserve", ')
    port = "8000/healthz" if target == "api" else "{port}/healthz"
    assert port in healthcheck
    # Dependencies before the source: the one step reading the source tree is the last install.
    installs = [i for i, line in enumerate(instructions) if "pip install" in line]
    source = [i for i, line in enumerate(instructions) if "--mount=type=bind,target=/tmp/src" in line]
    assert len(source) == 1 and source[0] == installs[-1]
    assert all("--mount=type=cache,target=/root/.cache/pip" in instructions[i] for i in installs)


def test_torch_versions_are_the_tests_and_torch_npu_matches_torch() -> None:
    makefile = (REPO / "Makefile").read_text()
    spec = re.search(r"^TORCH_SPEC \?= torch==(\S+)$", makefile, re.M)
    assert spec and _arg("TORCH_VERSION") == spec[1]
    torch, torch_npu = Version(_arg("TORCH_VERSION")), Version(_arg("TORCH_NPU_VERSION"))
    assert (torch.major, torch.minor) == (torch_npu.major, torch_npu.minor)
    import tomllib

    npu = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["optional-dependencies"]["npu"]
    pins = {Requirement(line).name.replace("-", "_"): Requirement(line).specifier for line in npu}
    assert torch in pins["torch"] and torch_npu in pins["torch_npu"]


def _excluded(path: str, patterns: list[str]) -> bool:
    """Docker's .dockerignore rule: the last pattern matching the path or one of its parent folders wins."""
    excluded = False
    parts = path.split("/")
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    for pattern in patterns:
        negated = pattern.startswith("!")
        regex = _docker_glob(pattern.lstrip("!").strip("/"))
        if any(regex.fullmatch(prefix) for prefix in prefixes):
            excluded = not negated
    return excluded


def _docker_glob(pattern: str) -> re.Pattern[str]:
    regex = re.escape(pattern).replace(r"\*\*/", "(.*/)?").replace(r"\*\*", ".*").replace(r"\*", "[^/]*")
    return re.compile(regex.replace(r"\?", "[^/]"))


def build_context() -> list[str]:
    """The files `docker build .` sends, by the .dockerignore rules."""
    lines = (REPO / ".dockerignore").read_text().splitlines()
    patterns = [line.strip() for line in lines if line.strip() and not line.startswith("#")]
    negated_roots = {p.lstrip("!").strip("/").split("/")[0] for p in patterns if p.startswith("!")}
    files = []
    for folder, subfolders, names in os.walk(REPO):
        relative = Path(folder).relative_to(REPO).as_posix()
        relative = "" if relative == "." else relative + "/"
        # Walk only where something may be included (never into .git or the virtualenvs).
        subfolders[:] = [s for s in subfolders if relative or s in negated_roots]
        files += [relative + name for name in names if not _excluded(relative + name, patterns)]
    return sorted(files)


def test_the_build_context_holds_every_package_and_every_file_the_dockerfile_reads() -> None:
    context = set(build_context())
    import tomllib

    include = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]["find"]
    packages = [
        path.name
        for path in REPO.iterdir()
        if (path / "__init__.py").exists()
        and any(re.fullmatch(g.replace("*", ".*"), path.name) for g in include["include"])
    ]
    assert sorted(packages) == ["cli", "service", "worker"]
    for package in packages:
        assert f"{package}/__init__.py" in context, f"the images would lack {package}/"
    assert "worker/models/wan2.1-tiny-shapes/model_index.json" in context
    read = re.findall(r"source=(\S+?),", DOCKERFILE.read_text()) + re.findall(
        r"^COPY (?:--\S+ )*(\S+) ", DOCKERFILE.read_text(), re.M
    )
    assert read
    for path in read:
        assert path in context, f"the Dockerfile reads {path}, which .dockerignore leaves out"
    assert not any(path.startswith(("tests/", "shapes_model/", ".git/", ".venv")) for path in context)


def test_the_wheel_built_from_the_context_has_the_command_and_the_shipped_model(tmp_path: Path) -> None:
    source = tmp_path / "context"
    for path in build_context():
        (source / path).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO / path, source / path)
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(tmp_path),
            str(source),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    [wheel] = tmp_path.glob("wanserve-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        [entry_points] = [name for name in names if name.endswith(".dist-info/entry_points.txt")]
        assert "wanserve = cli.main:main" in archive.read(entry_points).decode()
    assert {"cli/main.py", "service/api/app.py", "worker/serve.py", "worker/metrics.py"} <= names
    assert "worker/models/wan2.1-tiny-shapes/model_index.json" in names
    assert not any(name.startswith(("shapes_model/", "tests/")) for name in names)


def _requirements(*extras: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(REQUIREMENTS_SCRIPT), str(REPO / "pyproject.toml"), *extras],
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_image_requirements_come_from_pyproject() -> None:
    api = _requirements("api", "s3").stdout.splitlines()
    names = {Requirement(line).name.lower() for line in api}
    assert {"setuptools", "fastapi", "uvicorn", "boto3", "redis", "rq"} <= names
    assert "torch" not in names
    npu = {
        Requirement(line).name.lower().replace("-", "_")
        for line in _requirements("worker", "npu", "s3").stdout.splitlines()
    }
    assert {"torch", "torch_npu", "diffusers", "boto3"} <= npu
    dev = _requirements("dev").stdout.splitlines()
    assert not any(line.startswith("wanserve") for line in dev)  # wanserve[api,...] expanded
    assert {"fastapi", "diffusers", "pytest"} <= {Requirement(line).name.lower() for line in dev}
    missing = _requirements("no-such-extra")
    assert missing.returncode != 0 and "no-such-extra" in missing.stderr


def test_the_npu_entry_point_needs_cann_and_says_so() -> None:
    assert subprocess.run(["bash", "-n", str(ASCEND_ENV)], timeout=30).returncode == 0
    if Path("/usr/local/Ascend/ascend-toolkit/set_env.sh").exists():
        pytest.skip("CANN is installed here")
    result = subprocess.run(["bash", str(ASCEND_ENV), "true"], capture_output=True, text=True, timeout=30)
    assert result.returncode == 1 and "set_env.sh not found" in result.stderr
