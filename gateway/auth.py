"""API keys: parsed once, failing closed, and checked in constant time."""

from __future__ import annotations

import hmac

from flask import request

from services.common.settings import GatewaySettings


def parse_api_keys(settings: GatewaySettings) -> list[bytes]:
    """The configured keys; fails closed: a value that parses to no key (",", blanks) or no key
    where the deployment requires them is an error at start, never auth silently off."""
    keys = [key.strip().encode() for key in settings.api_keys.split(",") if key.strip()]
    if not keys and settings.api_keys.strip():
        raise ValueError("MMSERVE_GATEWAY_API_KEYS is set but holds no key; refusing to run without auth")
    if not keys and settings.require_api_keys:
        raise ValueError("MMSERVE_GATEWAY_REQUIRE_API_KEYS is on but MMSERVE_GATEWAY_API_KEYS is empty")
    return keys


def authorized(api_keys: list[bytes]) -> bool:
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return False
    presented = token.strip().encode()
    # Compare against every key (constant time each) so timing reveals nothing about which matched.
    return any([hmac.compare_digest(presented, key) for key in api_keys])  # noqa: C419
