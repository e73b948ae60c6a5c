"""Signed tokens (ROOMHUB_AUTH=token): the refusal table, names from claims, expiry, keys."""

from __future__ import annotations

import base64
import hashlib
import hmac
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import jwt
import orjson
import pytest
from aiohttp.test_utils import TestClient
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

from server.ops.config import ConfigError
from server.web.auth import mint_token
from server.wire.protocol import CloseReason
from tests.chat import UPGRADE_HEADERS, Client, sample, wait_until

SECRET = "s" * 32
OTHER_SECRET = "o" * 32


def hs256(**claims: Any) -> str:
    return jwt.encode({"sub": "alice", **claims}, SECRET, algorithm="HS256")


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def unsigned(**claims: Any) -> str:
    """An ``alg: none`` token (RFC 7519 section 6.1): header and claims, no signature."""
    header, body = orjson.dumps({"alg": "none"}), orjson.dumps({"sub": "alice", **claims})
    return f"{b64(header)}.{b64(body)}."


def hs256_with_key(key: bytes, **claims: Any) -> str:
    """HS256 by hand (RFC 7515 appendix A.1), with any bytes as the key: PyJWT refuses to
    sign with a PEM key, which is what an attacker does."""
    header, body = orjson.dumps({"alg": "HS256"}), orjson.dumps({"sub": "alice", **claims})
    signing_input = f"{b64(header)}.{b64(body)}"
    mac = hmac.new(key, signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{b64(mac)}"


def pem_public(key: Any) -> bytes:
    return key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def pem_private(key: Any) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


@pytest.fixture(scope="module")
def rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture
async def token_server(make_server: Any) -> TestClient:
    return await make_server(auth="token", token_secret=SECRET)


async def upgrade(server: TestClient, room: str = "r1", **params: str) -> tuple[int, Any]:
    """``GET /ws`` as an upgrade: (status, JSON body) of a refusal, or (101, welcome)."""
    response = await server.get(
        "/ws", params={"room": room, **params}, headers=dict(UPGRADE_HEADERS)
    )
    if response.status != 101:
        return response.status, await response.json()
    response.close()
    ws = await server.ws_connect("/ws", params={"room": room, **params})
    return 101, await Client(ws).next_of("welcome")


EXPIRED = {"exp": 1_000_000_000}  # 2001-09-09
REFUSALS = [
    pytest.param({}, 401, "token_missing", id="no-token"),
    pytest.param({"token": "not.a.jwt"}, 401, "token_invalid", id="not-a-jwt"),
    pytest.param(
        {"token": jwt.encode({"sub": "alice"}, OTHER_SECRET, algorithm="HS256")},
        401,
        "token_invalid",
        id="wrong-signature",
    ),
    pytest.param({"token": unsigned()}, 401, "token_invalid", id="alg-none"),
    pytest.param(
        {"token": jwt.encode({"sub": "alice"}, SECRET * 2, algorithm="HS512")},
        401,
        "token_invalid",
        id="wrong-algorithm-hs512",
    ),
    pytest.param(
        {"token": jwt.encode({"name": "alice"}, SECRET, algorithm="HS256")},
        401,
        "token_invalid",
        id="no-sub",
    ),
    pytest.param({"token": hs256(**EXPIRED)}, 401, "token_expired", id="expired"),
    pytest.param(
        {"token": hs256(rooms=["other"])}, 403, "room_not_allowed", id="room-not-in-claim"
    ),
]


@pytest.mark.parametrize(("params", "status", "error"), REFUSALS)
async def test_token_refusals_answer_before_the_upgrade_and_are_counted(
    token_server: TestClient, params: dict[str, str], status: int, error: str
) -> None:
    before = sample("chat_handshakes_rejected_total", reason=error)
    got_status, body = await upgrade(token_server, **params)
    assert (got_status, body["error"]) == (status, error)
    assert sample("chat_handshakes_rejected_total", reason=error) == before + 1


async def test_valid_token_names_the_user_by_sub(token_server: TestClient) -> None:
    status, welcome = await upgrade(token_server, token=hs256())
    assert (status, welcome["user"]) == (101, "alice")


async def test_name_claim_is_the_name_shown(token_server: TestClient) -> None:
    _, welcome = await upgrade(token_server, token=hs256(name="Alice Liddell"))
    assert welcome["user"] == "Alice Liddell"


async def test_room_in_the_rooms_claim_is_allowed(token_server: TestClient) -> None:
    status, welcome = await upgrade(token_server, "r1", token=hs256(rooms=["r1", "r2"]))
    assert (status, welcome["room"]) == (101, "r1")


async def test_query_user_is_ignored_with_tokens_on(token_server: TestClient) -> None:
    _, welcome = await upgrade(token_server, token=hs256(), user="mallory")
    assert welcome["user"] == "alice"


async def test_query_token_is_ignored_with_tokens_off(make_server: Any) -> None:
    server = await make_server()
    _, welcome = await upgrade(server, token="anything", user="bob")
    assert welcome["user"] == "bob"


async def test_connection_is_closed_with_4001_once_its_token_expires(
    token_server: TestClient,
) -> None:
    before = sample("chat_connections_closed_total", reason="token_expired")
    ws = await token_server.ws_connect(
        "/ws", params={"room": "r1", "token": hs256(exp=time.time() + 2)}
    )
    client = Client(ws)
    await client.next_of("welcome")
    assert await client.closed() == CloseReason.TOKEN_EXPIRED.code == 4001
    # Counted when the server's handler ends, just after the close handshake.
    await wait_until(
        lambda: sample("chat_connections_closed_total", reason="token_expired") > before
    )
    assert sample("chat_connections_closed_total", reason="token_expired") == before + 1


async def test_rs256_public_key_accepts_rs256_and_refuses_hs256_signed_with_it(
    make_server: Any, tmp_path: Path, rsa_key: rsa.RSAPrivateKey
) -> None:
    public = tmp_path / "public.pem"
    public.write_bytes(pem_public(rsa_key))
    server = await make_server(auth="token", token_public_key=str(public))
    good = jwt.encode({"sub": "alice"}, rsa_key, algorithm="RS256")
    assert (await upgrade(server, token=good))[0] == 101
    # The classic confusion: an HS256 token whose "secret" is the server's public key.
    forged = hs256_with_key(pem_public(rsa_key), sub="mallory")
    assert (await upgrade(server, token=forged))[1]["error"] == "token_invalid"


async def test_es256_public_key_accepts_es256(make_server: Any, tmp_path: Path) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    public = tmp_path / "public.pem"
    public.write_bytes(pem_public(key))
    server = await make_server(auth="token", token_public_key=str(public))
    status, welcome = await upgrade(
        server, token=mint_token("bo", 60, private_key=pem_private(key))
    )
    assert (status, welcome["user"]) == (101, "bo")


@pytest.mark.parametrize(
    ("overrides", "named"),
    [
        ({}, "ROOMHUB_TOKEN_SECRET or ROOMHUB_TOKEN_PUBLIC_KEY"),
        ({"token_secret": "short"}, "ROOMHUB_TOKEN_SECRET"),
        ({"token_public_key": "/nonexistent.pem"}, "ROOMHUB_TOKEN_PUBLIC_KEY"),
    ],
)
async def test_token_mode_without_a_usable_key_stops_start_up(
    make_server: Any, overrides: dict[str, str], named: str
) -> None:
    with pytest.raises(ConfigError, match=named):
        await make_server(auth="token", **overrides)


def token_command(*args: str, secret: str | None = None) -> subprocess.CompletedProcess[str]:
    """``python -m server token --sub alice ARGS`` with no ``ROOMHUB_*`` but ``secret``."""
    env = {"PATH": ""} | ({"ROOMHUB_TOKEN_SECRET": secret} if secret is not None else {})
    return subprocess.run(
        [sys.executable, "-m", "server", "token", "--sub", "alice", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
    )


def test_token_command_mints_a_token_the_server_accepts(tmp_path: Path) -> None:
    result = token_command("--ttl", "1h", "--rooms", "a", secret=SECRET)
    assert result.returncode == 0, result.stderr
    claims = jwt.decode(result.stdout.strip(), SECRET, algorithms=["HS256"])
    assert claims["sub"] == "alice"
    assert claims["rooms"] == ["a"]
    assert 3590 <= claims["exp"] - time.time() <= 3600


def test_token_command_without_a_key_exits_2() -> None:
    result = token_command()
    assert result.returncode == 2
    assert "ROOMHUB_TOKEN_SECRET" in result.stderr


@pytest.mark.parametrize(
    ("claims", "secret", "named"),
    [
        ({"sub": " "}, SECRET, "--sub must not be blank"),
        ({"sub": "alice", "name": "x" * 33}, SECRET, "user must be 1-32 characters"),
        ({"sub": "alice", "rooms": ["a b"]}, SECRET, "room must be 1-64 characters"),
        ({"sub": "alice"}, "short", "ROOMHUB_TOKEN_SECRET: must be at least 32 bytes"),
    ],
    ids=["blank-sub", "long-name", "bad-room", "short-secret"],
)
def test_mint_token_refuses_what_the_server_would_refuse(
    claims: dict[str, Any], secret: str, named: str
) -> None:
    with pytest.raises(ValueError, match=named):
        mint_token(ttl=60, secret=secret, **claims)


def test_token_command_with_an_encrypted_key_exits_2(tmp_path: Path) -> None:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = tmp_path / "key.pem"
    pem.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(b"pass"),
        )
    )
    result = token_command("--private-key", str(pem))
    assert result.returncode == 2
    assert result.stderr.startswith("roomhub token: ") and "encrypted" in result.stderr
    assert "Traceback" not in result.stderr


def test_token_command_with_an_ed25519_key_names_the_private_key_kinds_it_takes(
    tmp_path: Path,
) -> None:
    pem = tmp_path / "ed25519.pem"
    pem.write_bytes(pem_private(ed25519.Ed25519PrivateKey.generate()))
    result = token_command("--private-key", str(pem))
    assert result.returncode == 2
    assert result.stderr == (
        "roomhub token: --private-key must be an RSA or a P-256 (ES256) private key\n"
    )
