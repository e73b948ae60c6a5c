"""Inbound validation and outbound encoding (protocol v1)."""

from __future__ import annotations

import json
import tracemalloc
import unicodedata
from pathlib import Path
from urllib.parse import quote

import orjson
import pytest
from aiohttp.test_utils import make_mocked_request
from hypothesis import example, given
from hypothesis import strategies as st

from server.ops import metrics
from server.ops.config import Settings
from server.wire.protocol import (
    MAX_TEXT,
    NAME_TRIM_RE,
    ChatMessage,
    CloseReason,
    ProtocolError,
    batch,
    frame_header,
    limits_of,
    message_event,
    parse_frame,
    text_frame,
    validate_room,
    validate_since,
    validate_user,
    visible,
    welcome_event,
)

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**63 - 1)
    | st.floats(allow_nan=False)
    | st.text(),
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=8), children, max_size=3)
    ),
    max_leaves=8,
)
frames = st.one_of(
    st.text(),
    json_values.map(lambda v: orjson.dumps(v).decode()),
    st.fixed_dictionaries(
        {"type": st.sampled_from(["message", "other", 1])},
        optional={
            "text": st.one_of(st.text(max_size=2100), st.integers(-(2**63), 2**63 - 1)),
            "id": st.one_of(st.text(max_size=80), st.integers(-(2**63), 2**63 - 1)),
            "sent": st.one_of(
                st.floats(allow_nan=False),
                st.integers(-(2**63), 2**63 - 1),
                st.text(),
                st.booleans(),
            ),
        },
    ).map(lambda v: orjson.dumps(v).decode()),
)


@given(frames)
def test_parse_frame_accepts_only_valid_messages_and_raises_only_protocol_error(data: str) -> None:
    try:
        msg = parse_frame(data)
    except ProtocolError as exc:
        assert exc.code in {"bad_json", "bad_message", "too_long"}
        return
    obj = orjson.loads(data)
    assert obj["type"] == "message"
    assert (msg.text, msg.id, msg.sent) == (obj["text"], obj.get("id"), obj.get("sent"))
    assert 0 < len(msg.text) <= MAX_TEXT and msg.text.strip()
    assert msg.id is None or (isinstance(msg.id, str) and len(msg.id) <= 64)
    assert msg.sent is None or (
        isinstance(msg.sent, int | float) and not isinstance(msg.sent, bool)
    )


@given(st.text(max_size=80))
def test_validate_room_accepts_exactly_the_documented_alphabet(raw: str) -> None:
    allowed = set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_.-")
    expected = 1 <= len(raw) <= 64 and set(raw) <= allowed and raw not in (".", "..")
    try:
        assert validate_room(raw) == raw
        assert expected
    except ProtocolError:
        assert not expected


@given(st.text(max_size=40))
def test_validate_user_returns_trimmed_names_without_control_characters(raw: str) -> None:
    try:
        name = validate_user(raw)
    except ProtocolError as exc:
        assert exc.code == "bad_user"
        return
    assert 1 <= len(name) <= 32
    assert not any(unicodedata.category(ch) in ("Cc", "Cs", "Zl", "Zp") for ch in name)
    trimmed = NAME_TRIM_RE.sub("", raw)
    assert name == trimmed or (not trimmed and name.startswith("guest-"))


NORMAL_FORMS = ("NFC", "NFD", "NFKC", "NFKD")


@given(
    st.text(max_size=16),
    st.characters(categories=["Cc"]),
    st.text(max_size=16),
    st.sampled_from((None, *NORMAL_FORMS)),
    st.booleans(),
)
def test_no_control_character_survives_into_a_name(
    before: str, control: str, after: str, form: str | None, percent_encoded: bool
) -> None:
    # At either end or in the middle, in any normal form, typed or percent-encoded in the query.
    raw = before + control + after
    if form:
        raw = unicodedata.normalize(form, raw)
    if percent_encoded:
        raw = make_mocked_request("GET", "/ws?user=" + quote(raw, safe="")).query["user"]
    with pytest.raises(ProtocolError) as info:
        validate_user(raw)
    assert info.value.code == "bad_user"


@given(st.text(max_size=40))
def test_no_normal_form_of_an_accepted_name_holds_a_control_character(raw: str) -> None:
    try:
        name = validate_user(raw)
    except ProtocolError:
        return
    for form in NORMAL_FORMS:
        assert not any(unicodedata.category(ch) == "Cc" for ch in unicodedata.normalize(form, name))


@pytest.mark.parametrize(
    ("raw", "name"),
    [(" ann ", "ann"), ("\u00a0ann\u3000", "ann"), ("\u2003ann\u202f", "ann"), ("+ann+", "+ann+")],
)
def test_names_are_trimmed_of_white_space_that_is_not_a_control_character(
    raw: str, name: str
) -> None:
    assert validate_user(raw) == name


@pytest.mark.parametrize("raw", ["ann\x1f", "\x1cann", "ann\x85", "\tann", "ann\n"])
def test_control_characters_at_the_ends_are_refused_not_trimmed(raw: str) -> None:
    with pytest.raises(ProtocolError):
        validate_user(raw)


@pytest.mark.parametrize(
    "name", ["ann", "Zoë", "\U0001f469\U0001f3fd ann", "a b", "\u5c0f\u660e", "e\u0301"]
)
def test_validate_user_accepts_ordinary_names_emoji_and_marks(name: str) -> None:
    assert validate_user(f"  {name} ") == name


@pytest.mark.parametrize(
    "name", ["a\x07b", "a\nb", "evil\u202egnp", "\ufffd", "a\u2028b", "x" * 33]
)
def test_validate_user_refuses_control_bidi_and_undecodable_names(name: str) -> None:
    with pytest.raises(ProtocolError) as info:
        validate_user(name)
    assert info.value.code == "bad_user"


@pytest.mark.parametrize(
    "name",
    [
        "ali\u200bce",  # zero-width space
        "\U0001f469\u200d\U0001f4bb",  # zero-width joiner
        "ann\u2060",  # word joiner
        "\ufeffann",  # zero-width no-break space (BOM)
        "a\u2066b\u2069",  # bidi isolates
        "ann\U000e0041",  # tag character, beyond the BMP
        "a\u00adb",  # soft hyphen
    ],
)
def test_validate_user_refuses_format_characters(name: str) -> None:
    with pytest.raises(ProtocolError) as info:
        validate_user(name)
    assert info.value.code == "bad_user"


@pytest.mark.parametrize("text", ["\x01" * 2000, "\u200b", " \u3000\t", "\ufeff\u2028"])
def test_a_message_without_a_visible_character_is_refused(text: str) -> None:
    with pytest.raises(ProtocolError) as info:
        parse_frame(orjson.dumps({"type": "message", "text": text}).decode())
    assert info.value.code == "bad_message"


@pytest.mark.parametrize("text", ["a", "\x01\x01.", "\u200b\U0001f600", "\u0301", "\ue000"])
def test_a_message_with_one_visible_character_is_taken(text: str) -> None:
    frame = parse_frame(orjson.dumps({"type": "message", "text": text}).decode())
    assert isinstance(frame, ChatMessage) and frame.text == text


def test_batch_is_the_event_itself_or_a_json_array() -> None:
    a, b = orjson.dumps({"type": "join"}), orjson.dumps({"type": "leave"})
    assert batch([a]) is a
    assert orjson.loads(batch([a, b])) == [{"type": "join"}, {"type": "leave"}]


def test_welcome_embeds_limits_and_encoded_history() -> None:
    history = [orjson.dumps({"type": "message", "seq": 1})]
    limits = limits_of(Settings(max_msg_size=1000, rate_limit=2.5, rate_burst=3))
    welcome = welcome_event("r", "u", "e1", 1, 2, ["u", "v"], True, limits, history)
    assert orjson.loads(welcome) == {
        "type": "welcome", "room": "r", "user": "u", "epoch": "e1", "seq": 1, "members": 2,
        "online": ["u", "v"], "reset": True,
        "limits": {
            "max_message_bytes": 1000, "max_text_chars": 2000, "rate_limit": 2.5, "rate_burst": 3
        },
        "history": [{"type": "message", "seq": 1}],
    }  # fmt: skip


@pytest.mark.parametrize(
    ("length", "header"),
    [
        (5, b"\x81\x05"),
        (126, b"\x81\x7e\x00\x7e"),
        (70000, b"\x81\x7f" + (70000).to_bytes(8, "big")),
    ],
)
def test_frame_header_follows_rfc_6455_length_encoding(length: int, header: bytes) -> None:
    assert frame_header(length) == header


@pytest.mark.parametrize("raw", ["-1", "1.5", "x", "\u00b2", "\u0663", "1" * 19])
def test_validate_since_refuses_anything_but_ascii_digits(raw: str) -> None:
    with pytest.raises(ProtocolError) as info:
        validate_since(raw)
    assert info.value.code == "bad_since"


def test_validate_since_reads_the_last_seen_sequence_number() -> None:
    assert validate_since("42") == 42
    assert validate_since(None) is None


def _close_code_rows() -> list[list[str]]:
    """Rows of the "Close codes" table in docs/protocol.md, as lists of cell texts."""
    doc = (Path(__file__).parent.parent / "docs" / "protocol.md").read_text()
    section = doc.split("\n## Close codes\n", 1)[1].split("\n## ", 1)[0]
    lines = [line for line in section.splitlines() if line.startswith("|")][2:]
    return [[cell.strip() for cell in line.strip("|").split("|")] for line in lines]


def test_close_reasons_are_the_metric_labels_and_the_documented_codes() -> None:
    assert tuple(reason.label for reason in CloseReason) == metrics.CLOSE_REASONS
    rows = {row[-1].strip("`"): row for row in _close_code_rows()}
    for reason in CloseReason:
        code, _, text, _ = rows[reason.label]
        assert str(reason.code) in code, reason
        assert text.strip("`") == reason.text, reason


ENCODERS = {
    "json.dumps (ASCII escapes)": lambda obj: json.dumps(obj).encode(),
    "json.dumps ensure_ascii=False": lambda obj: json.dumps(obj, ensure_ascii=False).encode(),
    "json.dumps indent=2": lambda obj: json.dumps(obj, indent=2).encode(),
    # JSON.stringify: raw UTF-8, escapes only quote, backslash and control characters.
    "JSON.stringify": lambda obj: json.dumps(
        obj, ensure_ascii=False, separators=(",", ":")
    ).encode(),
    "orjson": orjson.dumps,
}
code_points = st.characters(exclude_categories=("Cs",))
worst_chars = st.sampled_from(["\U0001f642", "\U0010ffff", "\x00", '"', "\\", "\u00e9", "a"])
valid_texts = st.one_of(
    st.text(code_points, max_size=MAX_TEXT),
    st.text(worst_chars, min_size=MAX_TEXT, max_size=MAX_TEXT),
).filter(visible)
valid_messages = st.fixed_dictionaries(
    {"type": st.just("message"), "text": valid_texts},
    optional={
        "id": st.one_of(
            st.text(code_points, max_size=64), st.text(worst_chars, min_size=64, max_size=64)
        ),
        "sent": st.one_of(
            st.integers(-(2**63), 2**63 - 1), st.floats(allow_nan=False, allow_infinity=False)
        ),
    },
)


@given(valid_messages, st.sampled_from(sorted(ENCODERS)))
@example(
    {
        "type": "message",
        "text": "\U0001f642" * MAX_TEXT,
        "id": "\U0001f642" * 64,
        "sent": -1.5e-308,
    },
    "json.dumps indent=2",
)
def test_every_valid_message_fits_the_default_inbound_limit_whatever_the_encoder(
    message: dict[str, object], encoder: str
) -> None:
    frame = ENCODERS[encoder](message)
    assert len(frame) <= Settings().max_msg_size
    parsed = parse_frame(frame.decode())
    assert (parsed.text, parsed.id, parsed.sent) == (
        message["text"],
        message.get("id"),
        message.get("sent"),
    )


def test_text_frame_is_the_header_then_the_payload() -> None:
    payload = b"x" * 300
    assert text_frame(payload) == frame_header(300) + payload


def test_an_encoded_event_holds_little_more_than_its_length() -> None:
    """Events are kept (history, batches, outboxes): each must cost about its own size, not
    the 4 KiB block orjson writes into."""
    msg = ChatMessage("hello", "id-1", 1.0)
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        kept = [message_event(seq, "room", "ann", msg) for seq in range(1000)]
        per_event = (tracemalloc.get_traced_memory()[0] - before) / len(kept)
    finally:
        tracemalloc.stop()
    assert per_event < 4 * len(kept[0])
