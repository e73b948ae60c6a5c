"""What a new user meets first: `make run` installs only what serving needs, from its lock."""

from __future__ import annotations

import ast
import importlib.metadata
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from tests.support.processes import require_binary
from tests.support.promql import ROOT


def planned_installs(target: str, tmp_venv: str) -> list[str]:
    """The ``pip install`` commands ``make TARGET`` would run for a fresh venv (``make -n``)."""
    result = subprocess.run(
        [require_binary("make"), "-n", target, f"VENV={tmp_venv}"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    return [line for line in result.stdout.splitlines() if "pip install" in line]


@pytest.mark.parametrize("target", ["run", "run-lab", "venv"])
def test_serving_targets_install_the_serve_lock_then_the_package_alone(
    target: str, tmp_path: Path
) -> None:
    installs = planned_installs(target, str(tmp_path / "venv"))
    assert installs[-2].endswith("pip install -q --require-hashes -r requirements/serve.txt")
    assert installs[-1].endswith("pip install -q --no-deps -e .")
    assert not any(lock in line for line in installs for lock in ("test.txt", "dev.txt", "["))


@pytest.mark.parametrize("target", ["test", "lint", "install"])
def test_test_and_lint_add_the_dev_lock(target: str, tmp_path: Path) -> None:
    installs = planned_installs(target, str(tmp_path / "venv"))
    assert installs[-1].endswith("pip install -q --require-hashes -r requirements/dev.txt")


@pytest.mark.parametrize("target", ["k6-local", "bench", "soak"])
def test_load_lab_targets_install_only_the_lab_extra(target: str, tmp_path: Path) -> None:
    installs = planned_installs(target, str(tmp_path / "venv"))
    assert installs[-1].endswith("pip install -q --require-hashes -r requirements/lab.txt")
    assert not any(lock in line for line in installs for lock in ("test.txt", "dev.txt", "["))


def optional_dependencies() -> dict[str, list[str]]:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]


def test_the_test_extra_brings_everything_the_lab_extra_does() -> None:
    assert "roomhub[lab]" in optional_dependencies()["test"]


def third_party_imports(folder: Path) -> set[str]:
    """Top-level modules the ``.py`` files of ``folder`` import, but project and stdlib ones."""
    modules = set()
    for path in folder.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                modules |= {alias.name.split(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                modules.add(node.module.split(".")[0])
    return modules - set(sys.stdlib_module_names) - {"__future__", "bench", "server"}


def test_the_lab_extra_and_the_servers_own_dependencies_cover_what_bench_imports() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    wanted = [*project["dependencies"], *optional_dependencies()["lab"]]
    declared = {canonical(re.split(r"[\[<>=!~; ]", spec, maxsplit=1)[0]) for spec in wanted}
    providers = importlib.metadata.packages_distributions()
    for module in third_party_imports(ROOT / "bench"):
        assert {canonical(name) for name in providers[module]} & declared, module


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def fake_pythons(directory: Path, **versions: tuple[int, int]) -> str:
    """Executables named like ``python3.12`` that answer the Makefile's version check as a
    Python of the given (major, minor) would; returns a PATH holding only them."""
    for name, version in versions.items():
        script = directory / name.replace("_", ".")
        script.write_text(f"#!/bin/sh\nexit {0 if version >= (3, 11) else 1}\n")
        script.chmod(0o755)
    return str(directory)


def make_run(env_path: str, *args: str, tmp_path: Path) -> subprocess.CompletedProcess:
    """``make ARGS run`` for a venv in ``tmp_path``, with PATH=``env_path`` only."""
    return subprocess.run(
        [require_binary("make"), *args, "run", f"VENV={tmp_path / 'venv'}"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=30,
        env={"PATH": env_path},
    )


def venv_line(env_path: str, *args: str, tmp_path: Path) -> str:
    """The line of ``make -n run`` that makes the venv, with PATH=``env_path``."""
    result = make_run(env_path, "-n", *args, tmp_path=tmp_path)
    assert result.returncode == 0, result.stderr
    (line,) = [line for line in result.stdout.splitlines() if " -m venv " in line]
    return line


def test_make_run_makes_the_venv_with_python3_11_when_there_is_one(tmp_path: Path) -> None:
    path = fake_pythons(tmp_path, python3_11=(3, 11), python3_13=(3, 13), python3=(3, 13))
    assert "|| python3.11 -m venv" in venv_line(path, tmp_path=tmp_path)


def test_make_run_takes_a_newer_python_when_3_11_is_missing(tmp_path: Path) -> None:
    path = fake_pythons(tmp_path, python3_12=(3, 12), python3=(3, 9))
    assert "|| python3.12 -m venv" in venv_line(path, tmp_path=tmp_path)


def test_make_run_passes_over_a_python3_older_than_3_11(tmp_path: Path) -> None:
    path = fake_pythons(tmp_path, python3=(3, 10), python3_13=(3, 13))
    assert "|| python3.13 -m venv" in venv_line(path, tmp_path=tmp_path)


def test_make_run_uses_the_python_given_as_PYTHON(tmp_path: Path) -> None:
    path = fake_pythons(tmp_path, python3_11=(3, 11))
    line = venv_line(path, "PYTHON=/opt/py/bin/python3.12", tmp_path=tmp_path)
    assert "|| /opt/py/bin/python3.12 -m venv" in line


def test_make_run_without_python_3_11_or_newer_says_so_and_how_to_choose(tmp_path: Path) -> None:
    result = make_run(fake_pythons(tmp_path, python3=(3, 9)), tmp_path=tmp_path)
    assert result.returncode == 2
    assert "no Python 3.11 or newer on PATH" in result.stderr
    assert "PYTHON=" in result.stderr
    assert not (tmp_path / "venv").exists()


def test_make_run_refuses_a_python_given_as_PYTHON_that_is_too_old(tmp_path: Path) -> None:
    path = fake_pythons(tmp_path, python3_10=(3, 10))
    result = make_run(path, "PYTHON=python3.10", tmp_path=tmp_path)
    assert result.returncode == 2
    assert "PYTHON=python3.10 is not Python 3.11 or newer" in result.stderr
