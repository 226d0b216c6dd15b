"""docker-compose.yml validated by a real Compose implementation, plus what the team setup needs.

`docker compose config` (v2) or `docker-compose config` (v1, Debian's package, which the test command
installs) parses and validates the file without a running engine; without either the test is skipped,
never passed. The structural checks add what the schema does not say (health checks, wiring).
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "docker-compose.yml"
SERVICE_KEYS = {
    "image",
    "build",
    "command",
    "environment",
    "ports",
    "volumes",
    "depends_on",
    "healthcheck",
    "profiles",
    "extends",
    "deploy",
    "restart",
}


def _compose() -> dict:
    return yaml.safe_load(COMPOSE.read_text())


def _named_volumes(service: dict) -> set[str]:
    names = set()
    for entry in service.get("volumes", []):
        source = entry.split(":", 1)[0]
        if not source.startswith((".", "/", "~")):
            names.add(source)
    return names


def test_services_are_well_formed_and_reference_only_what_exists():
    compose = _compose()
    services = compose["services"]
    assert {"postgres", "prefect-server", "worker", "worker-gpu", "minio"} <= set(services)
    declared = set(compose.get("volumes", {}))
    for name, service in services.items():
        assert set(service) <= SERVICE_KEYS, f"{name}: unknown keys {set(service) - SERVICE_KEYS}"
        base = services[service["extends"]["service"]] if "extends" in service else {}
        assert "image" in service or "build" in service or "image" in base, f"{name}: no image or build"
        for dependency, rule in service.get("depends_on", {}).items():
            assert dependency in services, f"{name} depends on unknown {dependency}"
            if rule.get("condition") == "service_healthy":
                assert "healthcheck" in services[dependency], f"{dependency} has no healthcheck"
        assert _named_volumes(service) <= declared, f"{name}: undeclared volumes"
        if "build" in service:
            assert (ROOT / service["build"]["context"] / service["build"]["dockerfile"]).is_file()
        for check in [service.get("healthcheck")] if service.get("healthcheck") else []:
            assert check["test"][0] in {"CMD", "CMD-SHELL"} and check["retries"] > 0


def test_the_team_setup_is_wired_together():
    services = _compose()["services"]
    server_env = services["prefect-server"]["environment"]
    assert "@postgres:5432" in server_env["PREFECT_API_DATABASE_CONNECTION_URL"]
    assert server_env["PREFECT_API_DATABASE_CONNECTION_URL"].startswith("postgresql+asyncpg://")
    worker = services["worker"]
    assert worker["environment"]["PREFECT_API_URL"] == "http://prefect-server:4200/api"
    assert "minio:9000" in worker["environment"]["AWS_ENDPOINT_URL"]
    assert "--pool" in worker["command"] and "process" in worker["command"]
    gpu = services["worker-gpu"]
    devices = gpu["deploy"]["resources"]["reservations"]["devices"]
    assert gpu["profiles"] == ["gpu"] and devices[0]["driver"] == "nvidia"
    dockerfile = (ROOT / "docker" / "Dockerfile").read_text()
    assert "pip install" in dockerfile and "COPY flows flows" in dockerfile


def _compose_command() -> list[str] | None:
    docker = shutil.which("docker")
    if docker and subprocess.run([docker, "compose", "version"], capture_output=True).returncode == 0:
        return [docker, "compose"]
    legacy = shutil.which("docker-compose")
    return [legacy] if legacy else None


def test_a_compose_implementation_validates_the_file():
    command = _compose_command()
    if command is None:
        pytest.skip("neither `docker compose` nor `docker-compose` is installed (test_system_deps.sh)")
    result = subprocess.run(
        [*command, "-f", str(COMPOSE), "config", "-q"], capture_output=True, text=True, cwd=ROOT
    )
    assert result.returncode == 0, result.stdout + result.stderr
    resolved = subprocess.run(
        [*command, "-f", str(COMPOSE), "config"], capture_output=True, text=True, cwd=ROOT
    )
    services = yaml.safe_load(resolved.stdout)["services"]
    assert services["worker-gpu"]["image"] == "ieiw-builder:gpu"
    assert services["worker"]["environment"]["PREFECT_API_URL"] == "http://prefect-server:4200/api"


def test_each_gpu_worker_is_pinned_to_its_own_gpu():
    services = _compose()["services"]
    gpu_workers = {name: s for name, s in services.items() if name.startswith("worker-gpu")}
    pinned = []
    for name, service in gpu_workers.items():
        words = service["command"].split()
        assert words[:2] == ["ieiw", "worker"] and "--gpu" in words, f"{name}: not an `ieiw worker --gpu N`"
        pinned.append(words[words.index("--gpu") + 1])
        assert service["image"] == "ieiw-builder:gpu" and service["profiles"]
        assert service["deploy"]["resources"]["reservations"]["devices"][0]["driver"] == "nvidia"
    assert len(pinned) >= 2 and len(set(pinned)) == len(pinned)  # one worker per GPU


def _pool_of(command: str) -> str:
    """The pool a worker command pulls from, with compose's ``${VAR:-default}`` at its default."""
    words = command.split()
    value = words[words.index("--pool") + 1]
    return value[2:-1].split(":-", 1)[1] if value.startswith("${") else value


def test_every_worker_pulls_from_the_pool_the_packaged_deployments_target():
    deployments = yaml.safe_load((ROOT / "flows" / "resources" / "prefect.yaml").read_text())["deployments"]
    targeted = {d["work_pool"]["name"] for d in deployments}
    workers = {name: s for name, s in _compose()["services"].items() if name.startswith("worker")}
    assert len(workers) >= 3
    for name, service in workers.items():
        assert {_pool_of(service["command"])} == targeted, f"{name} pulls from a pool no deployment targets"
