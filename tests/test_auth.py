"""Token verification and the authorization rule, on their own."""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Callable
from typing import Any

import httpx
import jwt
import pytest
import respx
from cryptography.hazmat.primitives.asymmetric import rsa

from realtime_bridge.auth import (
    Access,
    Authenticator,
    ChannelPolicy,
    Principal,
    Role,
    TokenExpired,
    Unauthorized,
    authorize,
    project_keys,
)

SECRET = "test-secret-long-enough-for-any-hmac-0123456789-0123456789-abcdef"
OTHER_SECRET = "another-secret-entirely-0123456789abcdef-0123456789-0123456789"
auth = Authenticator(SECRET)


def token(claims: dict[str, Any], key: Any = SECRET, alg: str = "HS256", **headers: Any) -> str:
    return jwt.encode(claims, key, algorithm=alg, headers=headers or None)


def claims(**extra: Any) -> dict[str, Any]:
    return {"role": "authenticated", "sub": "u1", "exp": int(time.time()) + 60, **extra}


async def test_a_valid_user_token_gives_its_principal() -> None:
    principal = await auth.verify(token(claims()))
    assert principal.role is Role.AUTHENTICATED
    assert principal.user_id == "u1"
    assert principal.expires_at is not None
    assert 0 < principal.expires_at - time.time() <= 60


# Built when each test runs, not at collection: a long suite must not age them.
BAD_TOKENS: dict[str, tuple[Callable[[], str | None], type[Exception], str]] = {
    "missing": (lambda: None, Unauthorized, "missing API key"),
    "malformed": (lambda: "not-a-jwt", Unauthorized, "malformed"),
    "wrong secret": (lambda: token(claims(), key=OTHER_SECRET), Unauthorized, "invalid"),
    "expired": (lambda: token(claims(exp=int(time.time()) - 5)), TokenExpired, "expired"),
    "not yet valid": (
        lambda: token(claims(nbf=int(time.time()) + 60)),
        Unauthorized,
        "not valid yet",
    ),
    "no role": (lambda: token({"sub": "u1", "exp": int(time.time()) + 60}), Unauthorized, "'role'"),
    "no exp": (lambda: token({"role": "authenticated", "sub": "u1"}), Unauthorized, "'exp'"),
    "unknown role": (lambda: token(claims(role="superuser")), Unauthorized, "unknown role"),
    "user without sub": (
        lambda: token({"role": "authenticated", "exp": int(time.time()) + 60}),
        Unauthorized,
        "needs a 'sub'",
    ),
    "HS512": (lambda: token(claims(), alg="HS512"), Unauthorized, "HS512"),
}


@pytest.mark.parametrize("case", list(BAD_TOKENS))
async def test_bad_tokens_are_refused_with_a_reason(case: str) -> None:
    make, error, fragment = BAD_TOKENS[case]
    with pytest.raises(error, match=fragment):
        await auth.verify(make())


async def test_alg_none_is_refused() -> None:
    unsigned = jwt.encode(claims(role="service_role"), key=None, algorithm="none")  # type: ignore[arg-type]
    with pytest.raises(Unauthorized, match="'none'"):
        await auth.verify(unsigned)


async def test_an_hs256_token_cannot_pose_as_rs256_with_the_secret() -> None:
    # Algorithm confusion: the header says RS256; no JWKS is configured.
    forged = token(claims(role="service_role"), alg="HS256")
    _header, rest = forged.split(".", 1)
    bad = base64.urlsafe_b64encode(json.dumps({"alg": "RS256", "typ": "JWT"}).encode()).rstrip(b"=")
    with pytest.raises(Unauthorized):
        await auth.verify(bad.decode() + "." + rest)


@respx.mock
async def test_asymmetric_tokens_use_the_projects_jwks_refreshed_on_unknown_kid() -> None:
    url = "https://project.supabase.co/auth/v1/.well-known/jwks.json"
    first = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    second = rsa.generate_private_key(public_exponent=65537, key_size=2048)

    def jwk(key: rsa.RSAPrivateKey, kid: str) -> dict[str, Any]:
        public: dict[str, Any] = jwt.algorithms.RSAAlgorithm.to_jwk(key.public_key(), as_dict=True)
        return {**public, "kid": kid, "alg": "RS256", "use": "sig"}

    route = respx.get(url).mock(
        side_effect=[
            httpx.Response(200, json={"keys": [jwk(first, "k1")]}),
            httpx.Response(200, json={"keys": [jwk(first, "k1"), jwk(second, "k2")]}),
        ]
    )
    verifier = Authenticator(SECRET, jwks_url=url)
    signed = token(claims(), key=first, alg="RS256", kid="k1")
    assert (await verifier.verify(signed)).user_id == "u1"
    assert (await verifier.verify(signed)).user_id == "u1"
    assert route.call_count == 1  # cached
    verifier._jwks_fetched_at -= 10  # the rotation happened a while later
    rotated = token(claims(sub="u2"), key=second, alg="RS256", kid="k2")
    assert (await verifier.verify(rotated)).user_id == "u2"
    assert route.call_count == 2
    with pytest.raises(Unauthorized, match="kid 'k9'"):
        await verifier.verify(token(claims(), key=second, alg="RS256", kid="k9"))
    wrong_key = token(claims(), key=second, alg="RS256", kid="k1")
    with pytest.raises(Unauthorized, match="invalid"):
        await verifier.verify(wrong_key)


async def test_project_keys_are_stable_and_valid() -> None:
    keys = project_keys(auth)
    assert keys == project_keys(Authenticator(SECRET))
    assert (await auth.verify(keys["anon"])).role is Role.ANON
    assert (await auth.verify(keys["service_role"])).is_service


async def test_disabled_auth_treats_everyone_as_service() -> None:
    assert (await Authenticator(None, disabled=True).verify(None)).is_service


PRIVATE = ChannelPolicy("position-updates", owner_column="user_id")
PUBLIC = ChannelPolicy("prices", public=True)
SERVICE_ONLY = ChannelPolicy("public.audit")


@pytest.mark.parametrize(
    ("principal", "policy", "access"),
    [
        (Principal(Role.SERVICE), PRIVATE, Access.ALL),
        (Principal(Role.SERVICE), SERVICE_ONLY, Access.ALL),
        (Principal(Role.AUTHENTICATED, "u1"), PRIVATE, Access.OWN_ROWS),
        (Principal(Role.AUTHENTICATED, "u1"), PUBLIC, Access.ALL),
        (Principal(Role.AUTHENTICATED, "u1"), SERVICE_ONLY, Access.NONE),
        (Principal(Role.ANON), PRIVATE, Access.NONE),
        (Principal(Role.ANON), PUBLIC, Access.ALL),
        (Principal(Role.ANON), SERVICE_ONLY, Access.NONE),
    ],
)
def test_authorize_is_one_rule(principal: Principal, policy: ChannelPolicy, access: Access) -> None:
    assert authorize(principal, policy) is access
