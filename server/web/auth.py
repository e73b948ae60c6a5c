"""Signed-token authentication (``ROOMHUB_AUTH=token``): verify and mint JWTs (RFC 7519).

The way Centrifugo does it: the client passes a JWT as ``?token=`` on the upgrade. The user
name comes from its claims (``name`` if present, else ``sub``); an optional ``rooms`` claim
(a list of room names) limits the rooms it may join; an optional ``roles`` claim (a list of
strings) gives roles: ``mod`` lets the user delete any message and kick or ban members
(docs/api.md, "Moderators in the page"); ``exp`` (seconds since the Unix epoch),
when present, is enforced before the upgrade and again while the connection lasts.

Accepted algorithms follow the configured keys, never the token: HS256 with
``ROOMHUB_TOKEN_SECRET``; RS256 with an RSA public key file or ES256 with a P-256 public key
file (``ROOMHUB_TOKEN_PUBLIC_KEY``, PEM). Any other ``alg``, ``none`` included, is refused.
Verification and signing are PyJWT's.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from ..ops.config import ConfigError, Settings
from ..wire.protocol import ProtocolError, validate_room, validate_user

MIN_SECRET_BYTES = 32
"""Shortest HS256 secret accepted (RFC 7518 section 3.2: a key of at least the hash size)."""


class TokenError(ValueError):
    """A token refused. ``code`` is ``token_invalid``, ``token_expired`` or
    ``room_not_allowed``; ``detail`` says why in words."""

    def __init__(self, code: str, detail: str) -> None:
        super().__init__(detail)
        self.code = code
        self.detail = detail


@dataclass(frozen=True, slots=True)
class Identity:
    """Who a valid token names: ``name`` to use in the room, ``expires`` (Unix seconds or
    None), ``rooms`` it may join (None: any) and its ``roles`` (``mod``: a moderator)."""

    name: str
    expires: float | None
    rooms: frozenset[str] | None
    roles: frozenset[str] = frozenset()


def _public_key_algorithm(key: object) -> str:
    if isinstance(key, rsa.RSAPublicKey):
        return "RS256"
    if isinstance(key, ec.EllipticCurvePublicKey) and isinstance(key.curve, ec.SECP256R1):
        return "ES256"
    raise ValueError("must be an RSA or a P-256 (ES256) public key")


class TokenVerifier:
    """Checks tokens against the keys in ``settings`` (see the module docstring)."""

    def __init__(self, settings: Settings) -> None:
        """Raises :class:`ConfigError` naming the setting when a key is missing or unusable."""
        self.keys: dict[str, Any] = {}
        if settings.token_secret:
            if len(settings.token_secret.encode()) < MIN_SECRET_BYTES:
                raise ConfigError(
                    f"ROOMHUB_TOKEN_SECRET: must be at least {MIN_SECRET_BYTES} bytes"
                )
            self.keys["HS256"] = settings.token_secret
        if settings.token_public_key:
            path = settings.token_public_key
            try:
                key = serialization.load_pem_public_key(Path(path).read_bytes())
                self.keys[_public_key_algorithm(key)] = key
            except (OSError, ValueError) as exc:
                raise ConfigError(f"ROOMHUB_TOKEN_PUBLIC_KEY={path!r}: {exc}") from None
        if not self.keys:
            raise ConfigError(
                "ROOMHUB_AUTH=token: needs ROOMHUB_TOKEN_SECRET or ROOMHUB_TOKEN_PUBLIC_KEY"
            )

    def verify(self, token: str) -> Identity:
        """The identity in ``token``, signature and claims checked, ``exp`` not yet (see
        :meth:`check_fresh`). Raises :class:`TokenError` ``token_invalid``."""
        try:
            alg = jwt.get_unverified_header(token).get("alg")
        except jwt.PyJWTError:
            raise TokenError("token_invalid", "token is not a JWT") from None
        key = self.keys.get(alg) if isinstance(alg, str) else None
        if key is None:
            accepted = ", ".join(sorted(self.keys))
            raise TokenError("token_invalid", f"token algorithm {alg!r} is not one of {accepted}")
        try:
            claims = jwt.decode(
                token,
                key,
                algorithms=[cast(str, alg)],  # it named a key, so it is a str
                options={"require": ["sub"], "verify_exp": False},
            )
        except jwt.PyJWTError as exc:
            raise TokenError("token_invalid", f"token refused: {exc}") from None
        return _identity(claims)

    @staticmethod
    def check_fresh(identity: Identity, now: float | None = None) -> None:
        """Raises :class:`TokenError` ``token_expired`` once ``now`` (Unix seconds) is at or
        past the token's ``exp``."""
        now = time.time() if now is None else now
        if identity.expires is not None and now >= identity.expires:
            raise TokenError("token_expired", "token has expired: get a new one")

    @staticmethod
    def check_room(identity: Identity, room: str) -> None:
        """Raises :class:`TokenError` ``room_not_allowed`` unless the token may join ``room``."""
        if identity.rooms is not None and room not in identity.rooms:
            raise TokenError("room_not_allowed", "token does not allow this room")


def _identity(claims: dict[str, Any]) -> Identity:
    sub, name, exp, rooms, roles = (claims.get(k) for k in ("sub", "name", "exp", "rooms", "roles"))
    if not isinstance(sub, str) or not sub.strip():
        raise TokenError("token_invalid", "token claim sub must be a non-empty string")
    if name is not None and not isinstance(name, str):
        raise TokenError("token_invalid", "token claim name must be a string")
    if exp is not None and (isinstance(exp, bool) or not isinstance(exp, int | float)):
        raise TokenError("token_invalid", "token claim exp must be a number")
    if rooms is not None and (
        not isinstance(rooms, list) or not all(isinstance(r, str) for r in rooms)
    ):
        raise TokenError("token_invalid", "token claim rooms must be a list of room names")
    if roles is not None and (
        not isinstance(roles, list) or not all(isinstance(r, str) for r in roles)
    ):
        raise TokenError("token_invalid", "token claim roles must be a list of strings")
    return Identity(
        (name or "").strip() or sub.strip(),
        exp,
        None if rooms is None else frozenset(rooms),
        frozenset(roles or ()),
    )


def mint_token(
    sub: str,
    ttl: float,
    *,
    secret: str | None = None,
    private_key: bytes | None = None,
    name: str | None = None,
    rooms: list[str] | None = None,
    roles: list[str] | None = None,
    now: float | None = None,
) -> str:
    """A token for ``sub`` that expires ``ttl`` seconds from ``now`` (default: the clock).

    Signed HS256 with ``secret``, or RS256/ES256 with the PEM ``private_key`` (by its type).
    Raises ``ValueError`` naming the problem for what a server would refuse: no key, a secret
    under ``MIN_SECRET_BYTES``, an encrypted or unusable private key, a blank ``sub``, a name
    that breaks the name rule or a room name that is not one.
    """
    shown = (name or "").strip() or sub.strip()
    if not shown:
        raise ValueError("--sub must not be blank")
    try:
        validate_user(shown)
        for room in rooms or ():
            validate_room(room)
    except ProtocolError as exc:
        raise ValueError(exc.detail) from None
    now = time.time() if now is None else now
    claims: dict[str, Any] = {"sub": sub, "iat": int(now), "exp": int(now + ttl)}
    if name is not None:
        claims["name"] = name
    if rooms is not None:
        claims["rooms"] = rooms
    if roles:
        claims["roles"] = roles
    if private_key is not None:
        try:
            key = serialization.load_pem_private_key(private_key, password=None)
        except TypeError as exc:  # an encrypted key
            raise ValueError(str(exc)) from None
        try:
            alg = _public_key_algorithm(key.public_key())
        except ValueError:
            raise ValueError(
                "--private-key must be an RSA or a P-256 (ES256) private key"
            ) from None
        return jwt.encode(claims, key, algorithm=alg)  # type: ignore[arg-type]  # an RSA or EC key, as checked above
    if secret:
        if len(secret.encode()) < MIN_SECRET_BYTES:
            raise ValueError(f"ROOMHUB_TOKEN_SECRET: must be at least {MIN_SECRET_BYTES} bytes")
        return jwt.encode(claims, secret, algorithm="HS256")
    raise ValueError("needs ROOMHUB_TOKEN_SECRET or --private-key")
