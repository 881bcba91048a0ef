"""Fetching images given by URL, refused unless the host is allow-listed and public.

Off by default (empty allow-list). When on, a URL is fetched only if its host is in the
allow-list and every address it resolves to is public: loopback, private, link-local,
reserved, multicast and unspecified addresses are refused, so a caller cannot make the gateway
reach the cluster's internal services or the cloud metadata endpoint (SSRF). The connection
goes to the address that was checked (no second DNS lookup an attacker could rebind), no
redirect is followed, and the size and time are capped.
"""

from __future__ import annotations

import http.client
import ipaddress
import socket
import ssl
import time
from collections.abc import Callable
from urllib.parse import urlsplit

from gateway.errors import invalid

Resolver = Callable[[str, int], list[str]]
_CHUNK = 64 * 1024


def resolve_addresses(host: str, port: int) -> list[str]:
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return sorted({info[4][0] for info in infos})


def is_public_address(address: str) -> bool:
    ip = ipaddress.ip_address(address.split("%", 1)[0])
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    refused = (
        ip.is_loopback or ip.is_private or ip.is_link_local or ip.is_reserved
        or ip.is_multicast or ip.is_unspecified or not ip.is_global
    )  # fmt: skip
    return not refused


def parse_allowlist(allowlist: str) -> frozenset[str]:
    return frozenset(h.strip().lower().rstrip(".") for h in allowlist.split(",") if h.strip())


class ImageUrlFetcher:
    def __init__(
        self,
        allowlist: str,
        timeout_s: float,
        max_bytes: int,
        resolve: Resolver = resolve_addresses,
        address_allowed: Callable[[str], bool] = is_public_address,
    ) -> None:
        self._hosts = parse_allowlist(allowlist)
        self._address_allowed = address_allowed
        self._timeout_s = timeout_s
        self._max_bytes = max_bytes
        self._resolve = resolve

    @property
    def enabled(self) -> bool:
        return bool(self._hosts)

    def check(self, url: str, where: str) -> tuple[str, str, int, str]:
        """Validates ``url``; returns (scheme, host, port, address to connect to) or raises a 400."""
        if not self.enabled:
            raise invalid(f"'{where}': image URLs are disabled; send the image as base64 or a data URL")
        try:
            parts = urlsplit(url)
            port = parts.port or (443 if parts.scheme == "https" else 80)
        except ValueError:
            raise invalid(f"'{where}' is not a valid URL") from None
        host = (parts.hostname or "").lower().rstrip(".")
        if parts.scheme not in ("http", "https") or not host:
            raise invalid(f"'{where}' must be an http(s) URL with a host")
        if parts.username or parts.password:
            raise invalid(f"'{where}': URLs with credentials are refused")
        if host not in self._hosts:
            raise invalid(f"'{where}': host {host!r} is not in the image URL allow-list")
        try:
            addresses = self._resolve(host, port)
        except (OSError, UnicodeError):
            raise invalid(f"'{where}': host {host!r} does not resolve") from None
        if not addresses:
            raise invalid(f"'{where}': host {host!r} does not resolve")
        # Every address must be public: a name resolving to both a public and a private address is refused.
        if not all(self._address_allowed(a) for a in addresses):
            raise invalid(f"'{where}': host {host!r} resolves to a non-public address; refused")
        return parts.scheme, host, port, addresses[0]

    def fetch(self, url: str, where: str) -> bytes:
        scheme, host, port, address = self.check(url, where)
        parts = urlsplit(url)
        target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        deadline = time.monotonic() + self._timeout_s
        connection = _pinned_connection(scheme, host, port, address, self._timeout_s)
        try:
            connection.request(
                "GET", target, headers={"Host": parts.netloc.rsplit("@", 1)[-1], "Accept": "image/*"}
            )
            response = connection.getresponse()
            if response.status != 200:
                raise invalid(
                    f"'{where}': fetching the image URL answered HTTP {response.status} (redirects are not followed)"
                )
            length = response.getheader("Content-Length")
            if length and length.isdigit() and int(length) > self._max_bytes:
                raise invalid(f"'{where}': the image is larger than {self._max_bytes} bytes")
            chunks, size = [], 0
            while chunk := response.read(_CHUNK):
                size += len(chunk)
                if size > self._max_bytes:
                    raise invalid(f"'{where}': the image is larger than {self._max_bytes} bytes")
                if time.monotonic() > deadline:
                    raise invalid(f"'{where}': fetching the image URL took longer than {self._timeout_s:g} s")
                chunks.append(chunk)
        except (OSError, http.client.HTTPException) as error:
            raise invalid(f"'{where}': could not fetch the image URL ({type(error).__name__})") from None
        finally:
            connection.close()
        if not size:
            raise invalid(f"'{where}': the image URL returned an empty body")
        return b"".join(chunks)


def _pinned_connection(
    scheme: str, host: str, port: int, address: str, timeout_s: float
) -> http.client.HTTPConnection:
    """A connection to the checked ``address``; HTTPS still verifies the certificate for ``host``."""
    if scheme == "https":
        context = ssl.create_default_context()

        class PinnedHTTPS(http.client.HTTPSConnection):
            def connect(self) -> None:
                raw = socket.create_connection((address, port), timeout_s)
                self.sock = context.wrap_socket(raw, server_hostname=host)

        return PinnedHTTPS(host, port, timeout=timeout_s, context=context)

    class PinnedHTTP(http.client.HTTPConnection):
        def connect(self) -> None:
            self.sock = socket.create_connection((address, port), timeout_s)

    return PinnedHTTP(host, port, timeout=timeout_s)
