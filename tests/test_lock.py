"""The locks (requirements/*.txt, `make lock`): one per install set, every package pinned with
its hashes, within pyproject.toml's ranges and the same in every set; every install path reads
them. And the drift report of `make test-latest`."""

from __future__ import annotations

import re
import tomllib

import pytest
from packaging.requirements import Requirement

from requirements.drift import drift, pins
from tests.support.promql import ROOT

PROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
EXTRAS: dict[str, list[str]] = PROJECT["optional-dependencies"]
SETS = {
    "serve": [],
    "test": ["test"],
    "lab": ["lab"],
    **{extra: ["test", extra] for extra in EXTRAS if extra not in ("test", "lab")},
}
"""Install set: the extras it adds to the package's own dependencies."""


def requirements_of(extra: str) -> list[Requirement]:
    """The requirements ``extra`` names, with the extras it takes from roomhub itself
    (``roomhub[lab]``) expanded."""
    found = []
    for requirement in map(Requirement, EXTRAS[extra]):
        if requirement.name == PROJECT["name"]:
            found += [r for inner in sorted(requirement.extras) for r in requirements_of(inner)]
        else:
            found.append(requirement)
    return found


def lock_text(name: str) -> str:
    return (ROOT / "requirements" / f"{name}.txt").read_text()


def test_every_install_set_has_a_lock() -> None:
    assert {path.stem for path in (ROOT / "requirements").glob("*.txt")} == set(SETS)


@pytest.mark.parametrize("name", SETS)
def test_every_locked_package_carries_its_hashes(name: str) -> None:
    entries = re.split(r"\n(?=\S)", lock_text(name))
    pinned = [entry for entry in entries if "==" in entry.split("\n")[0]]
    assert pinned
    assert [e.split()[0] for e in pinned if "--hash=sha256:" not in e] == []


@pytest.mark.parametrize("name", SETS)
def test_the_lock_pins_versions_pyproject_allows(name: str) -> None:
    locked = pins(lock_text(name))
    wanted = [Requirement(r) for r in PROJECT["dependencies"]]
    wanted += [r for extra in SETS[name] for r in requirements_of(extra)]
    for requirement in wanted:
        version = locked.get(re.sub(r"[-_.]+", "-", requirement.name).lower())
        assert version is not None, f"{name}.txt lacks {requirement.name}"
        assert requirement.specifier.contains(version), f"{name}.txt: {requirement} {version}"


def test_the_sets_pin_what_they_share_alike() -> None:
    locks = {name: pins(lock_text(name)) for name in SETS}
    for name, locked in locks.items():
        assert drift(locks["serve"], {k: v for k, v in locked.items() if k in locks["serve"]}) == []
        assert set(locks["serve"]) <= set(locked), name


def test_the_image_installs_the_serve_lock_then_the_package_alone() -> None:
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert "RUN pip install --require-hashes -r requirements/serve.txt\n" in dockerfile
    assert "RUN pip install --no-deps . " in dockerfile


def test_drift_names_each_package_pinned_differently_or_in_one_file_only() -> None:
    lock = "aiohttp==3.14.5 \\\n    --hash=sha256:00\nredis==8.2.0\nPyYAML==6.0.4\n"
    latest = "aiohttp==3.14.6\nredis==8.2.0\npyyaml==6.0.4\nnew_thing==1.0 ; python_version < '4'\n"
    assert drift(pins(lock), pins(latest)) == [
        ("aiohttp", "3.14.5", "3.14.6"),
        ("new-thing", "-", "1.0"),
    ]
