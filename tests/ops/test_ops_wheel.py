"""The package as a user installs it: a wheel in a fresh venv, used from a folder outside the checkout.

The venv reuses this test environment's installed dependencies through a ``.pth`` line (so torch is not
installed again), but the project itself comes only from the wheel: nothing of the checkout is on the
path, and the demo config, its annotations, the HTML pages and ``prefect.yaml`` must come from the
package data.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
import tomllib
import venv
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
LAYERS = ("flows", "pipelines", "model", "quality", "storage")


def _packages_on_disk() -> set[str]:
    """Folders with Python modules, and folders of package data (``demo_data``): both are packages."""
    found = set()
    for layer in LAYERS:
        for folder in [ROOT / layer, *(p for p in (ROOT / layer).rglob("*") if p.is_dir())]:
            if folder.name == "__pycache__":
                continue
            if any(f.is_file() for f in folder.iterdir()):
                found.add("ieiw." + ".".join(folder.relative_to(ROOT).parts))
    return found


def test_every_package_folder_is_listed_in_pyproject():
    """The explicit package list (needed by the ``package-dir`` mapping) misses no folder."""
    listed = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    assert listed == _packages_on_disk()


@pytest.fixture(scope="module")
def installed_wheel(tmp_path_factory):
    """A fresh venv with the project's wheel installed, and a working folder outside the checkout."""
    base = tmp_path_factory.mktemp("wheel")
    source = base / "source"  # a copy, so the build's own folders never land in the checkout
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(ROOT / name, source / name)
    for layer in LAYERS:
        shutil.copytree(ROOT / layer, source / layer, ignore=shutil.ignore_patterns("__pycache__"))
    built = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-v", "--no-deps", "--no-build-isolation"]
        + ["-w", str(base / "dist"), str(source)],
        capture_output=True,
        text=True,
    )
    assert built.returncode == 0, built.stdout + built.stderr
    for noise in ("Deprecat", "would be ignored"):
        assert noise not in built.stdout + built.stderr, f"building the wheel warns: {noise}"
    wheel = next((base / "dist").glob("ieiw_builder-*.whl"))
    env_dir = base / "venv"
    venv.EnvBuilder(with_pip=False).create(env_dir)
    site = Path(sysconfig.get_path("purelib", vars={"base": str(env_dir), "platbase": str(env_dir)}))
    # The test environment's dependencies, but not its editable install of the checkout.
    (site / "_test_dependencies.pth").write_text(sysconfig.get_path("purelib") + "\n")
    python = env_dir / "bin" / "python"
    installed = subprocess.run(
        [sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps", "--no-index"]
        + [str(wheel)],
        capture_output=True,
        text=True,
    )
    assert installed.returncode == 0, installed.stdout + installed.stderr
    work = base / "elsewhere"
    work.mkdir()
    dropped = ("PYTHONPATH", "VIRTUAL_ENV")
    env = {k: v for k, v in os.environ.items() if k not in dropped and not k.startswith("PREFECT_")}
    env["HOME"] = str(base / "home")
    return env_dir, work, env


def _run(installed, *args: str, timeout: float = 120, env: dict | None = None) -> subprocess.CompletedProcess:
    env_dir, work, base_env = installed
    return subprocess.run(
        list(args),
        cwd=work,
        env={**base_env, **(env or {})},
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def test_the_wheel_installs_only_the_ieiw_namespace(installed_wheel):
    env_dir = installed_wheel[0]
    python = str(env_dir / "bin" / "python")
    where = _run(installed_wheel, python, "-c", "import ieiw.flows.cli as m; print(m.__file__)")
    assert where.returncode == 0, where.stderr
    assert str(env_dir) in where.stdout and str(ROOT) not in where.stdout
    for bare in LAYERS:
        result = _run(installed_wheel, python, "-c", f"import {bare}")
        assert result.returncode != 0 and "ModuleNotFoundError" in result.stderr, (bare, result.stdout)


def test_ieiw_help_and_deploy_help_work_from_the_wheel(installed_wheel):
    ieiw = str(installed_wheel[0] / "bin" / "ieiw")
    for args in ([], ["deploy"]):
        result = _run(installed_wheel, ieiw, *args, "--help", env={"COLUMNS": "80"})
        assert result.returncode == 0, result.stdout + result.stderr
        assert "Usage" in result.stdout
    listed = _run(installed_wheel, ieiw, "--help", env={"COLUMNS": "200"}).stdout
    for command in ("build", "demo", "deploy", "worker", "train", "export-hf"):
        assert command in listed


def test_packaged_resources_are_files_of_the_installed_package(installed_wheel):
    python = str(installed_wheel[0] / "bin" / "python")
    code = (
        "from ieiw.flows.resources import resource_path;"
        "from ieiw.model.review.app import page_html;"
        "from ieiw.model import webapp;"
        "from ieiw.pipelines.sources.demo import demo_annotation_path;"
        "import os;"
        "print(resource_path('prefect.yaml'), resource_path('demo.yaml'), demo_annotation_path());"
        "assert os.path.isfile(demo_annotation_path());"
        "assert '<html' in page_html().lower() and '<html' in webapp.PAGE.lower()"
    )
    result = _run(installed_wheel, python, "-c", code)
    assert result.returncode == 0, result.stdout + result.stderr
    assert str(ROOT) not in result.stdout


@pytest.mark.slow
def test_ieiw_demo_runs_from_the_wheel(installed_wheel, prefect_api):
    """The whole demo from an installed wheel, in a folder that is not the checkout."""
    ieiw = str(installed_wheel[0] / "bin" / "ieiw")
    out = installed_wheel[1] / "demo-out"
    result = _run(
        installed_wheel,
        ieiw,
        "demo",
        "--output",
        str(out),
        timeout=600,
        env={"PREFECT_API_URL": prefect_api, "TQDM_DISABLE": "1", "COLUMNS": "80"},
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    card = (out / "build" / "DATA_CARD.md").read_text()
    assert "| multitask |" in card and "unknown" not in card  # every configured source's license is known
    shards = list((out / "build" / "removal" / "shards").glob("*.tar"))
    assert shards, result.stdout
