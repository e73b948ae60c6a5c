"""How the versions in a requirements file differ from a lock's: ``python requirements/drift.py
LOCK OTHER`` prints one line per package pinned differently (or in one file only), then the
count. Both are ``name==version`` files as ``uv pip compile`` writes them (hashes, markers and
comments are skipped)."""

from __future__ import annotations

import re
import sys
from pathlib import Path

PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s;\\]+)", re.M)


def pins(text: str) -> dict[str, str]:
    """``{normalised name: version}`` of every ``name==version`` line in ``text``."""
    return {re.sub(r"[-_.]+", "-", name).lower(): version for name, version in PIN.findall(text)}


def drift(locked: dict[str, str], other: dict[str, str]) -> list[tuple[str, str, str]]:
    """``(name, locked version, other version)`` for each package whose versions differ,
    sorted by name; ``-`` stands for a package the file does not have."""
    names = sorted(locked.keys() | other.keys())
    rows = [(name, locked.get(name, "-"), other.get(name, "-")) for name in names]
    return [row for row in rows if row[1] != row[2]]


def main(argv: list[str]) -> None:
    lock, other = (Path(arg) for arg in argv)
    rows = drift(pins(lock.read_text()), pins(other.read_text()))
    width = max((len(name) for name, _, _ in rows), default=0)
    if rows:
        print(f"{'package':<{width}}  {lock.name} -> {other.name}")
    for name, was, now in rows:
        print(f"{name:<{width}}  {was} -> {now}")
    print(f"{len(rows)} package(s) differ from {lock}")


if __name__ == "__main__":
    main(sys.argv[1:])
