"""Any usual way of saying "this is CI" makes missing binaries fail instead of skip."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.support.processes import in_ci

MISSING = "from tests.support.processes import require_binary; require_binary('no-such-tool-x')"


@pytest.mark.parametrize("value", ["true", "1", "TRUE", "yes"])
def test_ci_set_to_a_true_value_turns_a_missing_binary_into_a_failure(value: str) -> None:
    assert in_ci({"CI": value})
    result = subprocess.run(
        [sys.executable, "-c", MISSING],
        capture_output=True,
        text=True,
        env={"CI": value, "PATH": "/nonexistent"},
        timeout=60,
    )
    assert "Failed" in result.stderr, result.stderr
    assert "Skipped" not in result.stderr


@pytest.mark.parametrize("value", [None, "", "0", "false"])
def test_ci_unset_or_false_skips(value: str | None) -> None:
    assert not in_ci({} if value is None else {"CI": value})
