"""Who is asking, and what they may see. Decided here and nowhere else.

Tokens are Supabase-compatible JWTs with a `role` claim (`anon`,
`authenticated`, `service_role`), `exp`, and for users `sub`. HS256 tokens
are verified with the configured secret; RS256 / ES256 tokens with the keys
of the project's JWKS (cached, refreshed when an unknown `kid` appears).
`alg: none`, a wrong signature or algorithm, an expired or not-yet-valid
token and a missing role are all refused.

Access to a channel (`authorize`) is one of: everything, only the rows the
principal owns, or nothing:

* `service_role` sees everything;
* a public channel (a plugin marked `public`) is readable by every role;
* a row-scoped channel (one with an owner column) shows an `authenticated`
  principal the rows whose owner equals its `sub`;
* a row-secured channel (`ROW_SECURITY=<table>=rls`) is readable by every
  role, and shows each principal the rows the table's RLS policies let its
  role and claims SELECT (`row_security`), `service_role` everything;
* everything else (including tables without a plugin, unless configured in
  `TABLE_ACCESS`) is for `service_role` only.

A client's filter can only narrow what this allows, never widen it.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import secrets
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import jwt

from realtime_bridge.errors import ClientError

# The protocol defines these (the client subclasses them); the server raises them from here.
from realtime_bridge_client.protocol import TokenExpired as TokenExpired
from realtime_bridge_client.protocol import Unauthorized as Unauthorized

logger = logging.getLogger(__name__)

HMAC_ALGORITHMS = ("HS256",)
ASYMMETRIC_ALGORITHMS = ("RS256", "ES256")
KEY_LIFETIME = 10 * 365 * 24 * 3600


class Role(enum.StrEnum):
    ANON = "anon"
    AUTHENTICATED = "authenticated"
    SERVICE = "service_role"


class Forbidden(ClientError):
    """A valid token whose role may not use this endpoint."""

    code = "forbidden"


@dataclass(frozen=True)
class Principal:
    """The verified identity behind a token."""

    role: Role
    user_id: str | None = None
    expires_at: float | None = None
    claims: dict[str, Any] = field(default_factory=dict, compare=False)

    @property
    def is_service(self) -> bool:
        return self.role is Role.SERVICE

    def expired(self, now: float | None = None) -> bool:
        return self.expires_at is not None and (now or time.time()) >= self.expires_at

    def seconds_left(self) -> float | None:
        return None if self.expires_at is None else self.expires_at - time.time()


# The identity everyone has when authentication is explicitly disabled.
UNCHECKED = Principal(Role.SERVICE, None, None, {"role": "service_role", "auth": "disabled"})


class Access(enum.Enum):
    ALL = "all"
    OWN_ROWS = "own_rows"
    ROW_SECURITY = "row_security"  # the rows the table's RLS policies show this principal
    NONE = "none"


@dataclass(frozen=True)
class ChannelPolicy:
    """What `authorize` needs to know about a channel."""

    name: str
    public: bool = False
    owner_column: str | None = None
    row_security: bool = False


def authorize(principal: Principal, policy: ChannelPolicy) -> Access:
    """The one place that decides who may read a channel, and which rows."""
    if principal.is_service:
        return Access.ALL
    if policy.row_security:
        return Access.ROW_SECURITY
    if policy.public:
        return Access.ALL
    if (
        principal.role is Role.AUTHENTICATED
        and principal.user_id
        and policy.owner_column is not None
    ):
        return Access.OWN_ROWS
    return Access.NONE


def denial(principal: Principal, policy: ChannelPolicy) -> Unauthorized:
    if principal.role is Role.ANON:
        reason = "the anon key may only read public channels; sign in"
    elif principal.role is Role.AUTHENTICATED and policy.owner_column is None:
        reason = "this channel is readable with the service key only"
    else:
        reason = "this token may not read this channel"
    return Unauthorized(f"not allowed to read {policy.name!r}: {reason}", channel=policy.name)


class Authenticator:
    """Verifies tokens; makes keys from the HS256 secret."""

    def __init__(
        self,
        secret: str | None,
        *,
        jwks_url: str | None = None,
        disabled: bool = False,
        leeway: float = 0,
        http: httpx.AsyncClient | None = None,
    ) -> None:
        self.secret = secret
        self.jwks_url = jwks_url
        self.disabled = disabled
        self.leeway = leeway
        self._http = http
        self._jwks: dict[str, Any] = {}
        self._jwks_lock = asyncio.Lock()
        self._jwks_fetched_at = 0.0

    async def verify(self, token: str | None) -> Principal:
        """The principal of `token`, or `Unauthorized` / `TokenExpired` saying why."""
        if self.disabled:
            return UNCHECKED
        if not token:
            raise Unauthorized(
                "missing API key: pass apikey=<key> or 'Authorization: Bearer <key>'"
            )
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError as exc:
            raise Unauthorized(f"malformed token: {exc}") from exc
        alg = str(header.get("alg", ""))
        key: Any
        if alg in HMAC_ALGORITHMS:
            if not self.secret:
                raise Unauthorized("HS256 tokens are not accepted: no JWT secret is configured")
            key = self.secret
        elif alg in ASYMMETRIC_ALGORITHMS:
            key = await self._public_key(str(header.get("kid", "")))
        else:
            raise Unauthorized(f"token algorithm {alg or 'none'!r} is not accepted")
        try:
            claims: dict[str, Any] = jwt.decode(
                token,
                key,
                algorithms=[alg],
                leeway=self.leeway,
                options={"require": ["exp", "role"], "verify_aud": False},
            )
        except jwt.ExpiredSignatureError as exc:
            raise TokenExpired("token has expired; send a fresh one") from exc
        except jwt.ImmatureSignatureError as exc:
            raise Unauthorized("token is not valid yet (nbf / iat in the future)") from exc
        except jwt.MissingRequiredClaimError as exc:
            raise Unauthorized(f"token lacks the {exc.claim!r} claim") from exc
        except jwt.PyJWTError as exc:
            raise Unauthorized(f"invalid token: {exc}") from exc
        try:
            role = Role(claims["role"])
        except ValueError:
            raise Unauthorized(f"unknown role {claims['role']!r}") from None
        user = claims.get("sub")
        if role is Role.AUTHENTICATED and not user:
            raise Unauthorized("an authenticated token needs a 'sub' claim")
        return Principal(role, str(user) if user else None, float(claims["exp"]), claims)

    async def _public_key(self, kid: str) -> Any:
        if not self.jwks_url:
            raise Unauthorized("asymmetric tokens are not accepted: no SUPABASE_URL for its JWKS")
        key = self._jwks.get(kid)
        if key is None:
            await self._refresh_jwks()
            key = self._jwks.get(kid)
        if key is None:
            raise Unauthorized(f"no signing key with kid {kid!r} in the project's JWKS")
        return key

    async def _refresh_jwks(self) -> None:
        async with self._jwks_lock:
            # At most one fetch per few seconds, however many unknown kids arrive.
            if time.monotonic() - self._jwks_fetched_at < 5 and self._jwks_fetched_at:
                return
            self._jwks_fetched_at = time.monotonic()
            assert self.jwks_url is not None
            client = self._http or httpx.AsyncClient(timeout=5)
            try:
                response = await client.get(self.jwks_url)
                response.raise_for_status()
                keys = jwt.PyJWKSet.from_dict(response.json()).keys
            except (httpx.HTTPError, jwt.PyJWTError, ValueError) as exc:
                logger.warning("could not fetch the JWKS from %s: %s", self.jwks_url, exc)
                return
            finally:
                if self._http is None:
                    await client.aclose()
            self._jwks = {k.key_id or "": k.key for k in keys}

    def make_token(
        self,
        role: Role | str,
        *,
        sub: str | None = None,
        ttl: float = KEY_LIFETIME,
        **claims: Any,
    ) -> str:
        """An HS256 token signed with the configured secret."""
        if not self.secret:
            raise RuntimeError("no JWT secret configured")
        now = int(time.time())
        body: dict[str, Any] = {
            "role": str(Role(role)),
            "iat": now,
            "exp": now + int(ttl),
            "iss": "realtime-bridge",
        }
        if sub is not None:
            body["sub"] = sub
        body.update(claims)
        return jwt.encode(body, self.secret, algorithm="HS256")


# Keys carry fixed times so the same secret always prints the same keys.
KEY_ISSUED_AT = 1_700_000_000
KEY_EXPIRES_AT = 4_102_444_800  # 2100-01-01


def project_keys(auth: Authenticator) -> dict[str, str]:
    """The long-lived anon and service keys of the configured secret."""
    return {
        role.value: auth.make_token(role, iat=KEY_ISSUED_AT, exp=KEY_EXPIRES_AT)
        for role in (Role.ANON, Role.SERVICE)
    }


def load_or_create_secret(data_dir: Path) -> str:
    """The secret kept in the data folder, generated on first use."""
    path = data_dir / "jwt_secret"
    if path.exists():
        return path.read_text().strip()
    data_dir.mkdir(parents=True, exist_ok=True)
    secret = secrets.token_urlsafe(48)
    path.write_text(secret + "\n")
    path.chmod(0o600)
    return secret
