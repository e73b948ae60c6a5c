"""What a new user meets first: `make run` installs only what serving needs, from its lock."""

from __future__ import annotations

import subprocess
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


@pytest.mark.parametrize("target", ["run", "run-lab"])
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
