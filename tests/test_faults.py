"""The delivery guarantee under faults (bench/faults.py, docs/scaling.md "Faults"): two real
roomhub instances on two real redis-server shards under steady numbered traffic, one run of
every fault; each test reads one fault's tallies. The checker itself is tested first, on
made-up logs, so that each breach it reports is known to be seen."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.faults import FAULTS, MemberLog, Row, Segment, Tally, check, run, table
from tests.support.docs import table as doc_table
from tests.support.processes import require_binary

HISTORY = 50


def member(name: str, *segments: Segment, echoed: tuple[str, ...] = ()) -> MemberLog:
    log = MemberLog(name, "lobby", 0, 0, segments=list(segments))
    log.sent = dict.fromkeys(echoed, 0.0)
    log.echoed = dict.fromkeys(echoed, 0.01)
    return log


def seg(
    epoch: str,
    welcome_seq: int,
    *received: tuple[int, str],
    reset: bool = False,
    closed: int | None = None,
) -> Segment:
    """A connection whose welcome gave ``epoch`` and ``welcome_seq``, that got ``received``."""
    return Segment(epoch, welcome_seq, reset, list(received), closed)


def sender() -> MemberLog:
    """A member that sent and saw echoed ``a.1`` .. ``a.3`` as seq 1..3 of epoch E."""
    return member(
        "a", seg("E", 0, (1, "a.1"), (2, "a.2"), (3, "a.3")), echoed=("a.1", "a.2", "a.3")
    )


def test_the_checker_finds_nothing_wrong_when_every_member_got_every_message_once() -> None:
    tallies = check(
        [sender(), member("b", seg("E", 0, (1, "a.1"), (2, "a.2"), (3, "a.3")))], HISTORY
    )
    assert sum(tallies, Tally()).broken == 0
    assert tallies[1].delivered == 3


def test_the_checker_counts_a_message_a_connected_member_never_got_as_lost() -> None:
    tallies = check([sender(), member("b", seg("E", 0, (1, "a.1"), (3, "a.3")))], HISTORY)
    assert (tallies[1].lost, tallies[1].broken) == (1, 1)


def test_the_checker_counts_a_message_received_twice_as_duplicated() -> None:
    twice = member("b", seg("E", 0, (1, "a.1"), (2, "a.2"), (2, "a.2"), (3, "a.3")))
    assert check([sender(), twice], HISTORY)[1].duplicated == 1


def test_the_checker_counts_a_lower_seq_after_a_higher_one_as_out_of_order() -> None:
    swapped = member("b", seg("E", 0, (2, "a.2"), (1, "a.1"), (3, "a.3")))
    assert check([sender(), swapped], HISTORY)[1].out_of_order == 1


def test_the_checker_counts_two_messages_under_one_seq_as_a_conflict() -> None:
    other = member("b", seg("E", 0, (1, "a.1"), (2, "x.9"), (3, "a.3")))
    assert check([sender(), other], HISTORY)[1].conflicts == 1


def test_the_checker_holds_a_member_that_resumed_in_the_same_epoch_to_the_gap() -> None:
    left = seg("E", 0, (1, "a.1"), closed=1006)
    back = seg("E", 1, (3, "a.3"))
    assert check([sender(), member("b", left, back)], HISTORY)[1].lost == 1


def test_the_checker_excuses_a_member_whose_connection_ended_before_a_reset() -> None:
    left = seg("E", 0, (1, "a.1"), closed=1012)
    reset = seg("F", 0, reset=True)
    tally = check([sender(), member("b", left, reset)], HISTORY)[1]
    assert (tally.lost, tally.excused, tally.closes, tally.resets) == (0, 2, 1, 1)


def test_the_checker_counts_a_refused_message_that_reached_a_member() -> None:
    refused = member("c", seg("E", 0, (1, "a.1"), (2, "a.2"), (3, "a.3"), (4, "c.0")))
    refused.sent["c.0"] = 0.0
    refused.refused.add("c.0")
    assert check([sender(), refused], HISTORY)[1].refused_delivered == 1


def test_the_checker_counts_a_member_left_without_a_connection_as_unresumed() -> None:
    gone = member("b", seg("E", 0, (1, "a.1"), closed=1006))
    gone.rejoined = False
    assert check([sender(), gone], HISTORY)[1].unresumed == 1


def test_the_faults_table_in_the_docs_has_the_harness_columns_and_a_line_per_fault() -> None:
    measured = doc_table("docs/scaling.md", "## Faults", index=1)
    header = [cell.strip() for cell in table([]).splitlines()[0].strip("|").split("|")]
    assert list(measured[0]) == header
    assert len(measured) == 2 * len(FAULTS)


@pytest.fixture(scope="module")
def rows(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Row]:
    """One run of every fault (about 30 s), by fault label."""
    binary = require_binary("redis-server")
    workdir: Path = tmp_path_factory.mktemp("faults")
    return {row.fault.label: row for row in run(workdir, binary, shards=2)}


KILL_SHARD, PAUSE, KILL_INSTANCE, SLOW_LINK = (fault.label for fault in FAULTS)


def breaches(tally: Tally) -> dict[str, int]:
    return {
        "lost": tally.lost,
        "duplicated": tally.duplicated,
        "out of order": tally.out_of_order,
        "conflicts": tally.conflicts,
        "unresumed": tally.unresumed,
        "refused, yet delivered": tally.refused_delivered,
    }


NONE = dict.fromkeys(breaches(Tally()), 0)


def disturbances(tally: Tally) -> dict[str, int]:
    """The breaches, and the closes, resets and refusals a member that the fault spared (or
    only delayed) must not see."""
    return {
        **breaches(tally),
        "closes": tally.closes,
        "resets": tally.resets,
        "refused": tally.refused,
    }


CALM = dict.fromkeys(disturbances(Tally()), 0)


def test_a_killed_shard_loses_no_echoed_message_and_its_members_resume_with_a_reset(
    rows: dict[str, Row],
) -> None:
    struck = rows[KILL_SHARD].hit
    assert struck.echoed > 0
    assert breaches(struck) == NONE
    assert struck.resets >= struck.members  # the shard came back empty: a new epoch


def test_a_killed_shard_leaves_the_other_shards_rooms_untouched(rows: dict[str, Row]) -> None:
    others = rows[KILL_SHARD].spared
    assert others.members > 0
    assert disturbances(others) == CALM


def test_a_paused_shard_delays_its_rooms_and_loses_nothing(rows: dict[str, Row]) -> None:
    row = rows[PAUSE]
    assert row.hit.slowest_echo >= 2.0  # messages waited out the 3 s pause
    assert [disturbances(row.hit), disturbances(row.spared)] == [CALM, CALM]


def test_a_killed_instances_members_resume_on_the_other_without_a_gap(
    rows: dict[str, Row],
) -> None:
    struck = rows[KILL_INSTANCE].hit
    assert struck.closes >= struck.members
    assert breaches(struck) == NONE
    assert struck.resets == 0  # the rooms lived on in Redis


def test_a_killed_instance_costs_the_other_instances_members_nothing(
    rows: dict[str, Row],
) -> None:
    assert disturbances(rows[KILL_INSTANCE].spared) == CALM


def test_a_stalled_link_to_one_shard_delays_and_loses_nothing(rows: dict[str, Row]) -> None:
    row = rows[SLOW_LINK]
    assert row.hit.slowest_echo >= 1.5  # messages waited out the 2 s stall
    assert [disturbances(row.hit), disturbances(row.spared)] == [CALM, CALM]
