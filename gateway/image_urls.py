"""Fetching images given by URL, refused unless the host is allow-listed and public.

Off by default (empty allow-list). When on, a URL is fetched only if its host is in the
allow-list and every address it resolves to is public: loopback, private, link-local,
reserved, multicast and unspecified addresses are refused, so a caller cannot make the gateway
reach the cluster's internal services or the cloud metadata endpoint (SSRF). The connection
goes to the address that was checked (no second DNS lookup an attacker could rebind), no
redirect is followed, and the size and time are capped per image and per request (all of a
request's URLs together), against the wall clock: a slow sender cannot stretch a fetch by
trickling bytes, each read waits only for what is left of the budget.
"""

from __future__ import annotations

import http.client
import ipaddress
import socket
import ssl
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass
from urllib.parse import quote, urlsplit

from gateway.errors import invalid

Resolver = Callable[[str, int], list[str]]
_CHUNK = 64 * 1024
DNS_TIMEOUT_S = 2.0
# getaddrinfo cannot be interrupted: lookups run here, and a caller waits at most DNS_TIMEOUT_S.
_DNS_POOL = ThreadPoolExecutor(max_workers=4, thread_name_prefix="image-url-dns")
# Characters left as they are when a URL's path and query are sent (the rest is percent-encoded).
_URL_SAFE = "/?&=%:@!$'()*+,;~-._"


def resolve_addresses(host: str, port: int) -> list[str]:
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return sorted({info[4][0] for info in infos})


def is_public_address(address: str) -> bool:
    ip = ipaddress.ip_address(address.split("%", 1)[0])
    if isinstance(ip, ipaddress.IPv6Address):
        # IPv6 forms that carry an IPv4 address reach that address: it must be public too.
        embedded = [ip.ipv4_mapped, ip.sixtofour, ip.teredo[1] if ip.teredo else None]
        if any(v4 is not None and not is_public_address(str(v4)) for v4 in embedded):
            return False
        if ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped
    refused = (
        ip.is_loopback or ip.is_private or ip.is_link_local or ip.is_reserved
        or ip.is_multicast or ip.is_unspecified or not ip.is_global
    )  # fmt: skip
    return not refused


def _resolve_in_time(resolve: Resolver, host: str, port: int) -> list[str]:
    try:
        return _DNS_POOL.submit(resolve, host, port).result(timeout=DNS_TIMEOUT_S)
    except FutureTimeout:
        raise OSError(f"no answer within {DNS_TIMEOUT_S:g} s") from None


@dataclass
class FetchBudget:
    """What one request's URL fetches may still use together."""

    bytes_left: int
    deadline: float  # time.monotonic()


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
        request_max_bytes: int | None = None,
        request_timeout_s: float | None = None,
    ) -> None:
        self._hosts = parse_allowlist(allowlist)
        self._address_allowed = address_allowed
        self._timeout_s = timeout_s
        self._max_bytes = max_bytes
        self._request_max_bytes = request_max_bytes or max_bytes
        self._request_timeout_s = request_timeout_s or timeout_s
        self._resolve = resolve

    @property
    def enabled(self) -> bool:
        return bool(self._hosts)

    def for_request(self) -> Callable[[str, str], bytes]:
        """A fetch function for one request: its URLs share one byte and wall-clock budget."""
        budget = FetchBudget(self._request_max_bytes, time.monotonic() + self._request_timeout_s)
        return lambda url, where: self.fetch(url, where, budget)

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
            addresses = _resolve_in_time(self._resolve, host, port)
        except (OSError, UnicodeError):
            raise invalid(f"'{where}': host {host!r} does not resolve") from None
        if not addresses:
            raise invalid(f"'{where}': host {host!r} does not resolve")
        # Every address must be public: a name resolving to both a public and a private address is refused.
        if not all(self._address_allowed(a) for a in addresses):
            raise invalid(f"'{where}': host {host!r} resolves to a non-public address; refused")
        return parts.scheme, host, port, addresses[0]

    def fetch(self, url: str, where: str, budget: FetchBudget | None = None) -> bytes:
        budget = budget or FetchBudget(self._max_bytes, time.monotonic() + self._timeout_s)
        scheme, host, port, address = self.check(url, where)
        parts = urlsplit(url)
        target = quote((parts.path or "/") + (f"?{parts.query}" if parts.query else ""), safe=_URL_SAFE)
        deadline = min(time.monotonic() + self._timeout_s, budget.deadline)
        max_bytes = min(self._max_bytes, budget.bytes_left)
        if max_bytes <= 0 or time.monotonic() >= deadline:
            raise invalid(f"'{where}': this request's image URLs used up their byte or time budget")
        connection = _pinned_connection(scheme, host, port, address, deadline - time.monotonic())
        size = 0
        try:
            connection.request(
                "GET", target, headers={"Host": parts.netloc.rsplit("@", 1)[-1], "Accept": "image/*"}
            )
            sock = connection.sock  # getresponse() may drop the connection's reference; the response reads it
            response = connection.getresponse()
            if response.status != 200:
                raise invalid(
                    f"'{where}': fetching the image URL answered HTTP {response.status} (redirects are not followed)"
                )
            length = response.getheader("Content-Length")
            if length and length.isdigit() and int(length) > max_bytes:
                raise invalid(
                    f"'{where}': the image is larger than {max_bytes} bytes (per-image or request budget)"
                )
            chunks = []
            while True:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise invalid(
                        f"'{where}': fetching the image URL ran out of time (budget {self._timeout_s:g} s)"
                    )
                sock.settimeout(remaining)  # each read waits only for what is left
                chunk = response.read1(_CHUNK)
                if not chunk:
                    break
                size += len(chunk)
                if size > max_bytes:
                    raise invalid(
                        f"'{where}': the image is larger than {max_bytes} bytes (per-image or request budget)"
                    )
                chunks.append(chunk)
        except TimeoutError:
            raise invalid(
                f"'{where}': fetching the image URL ran out of time (budget {self._timeout_s:g} s)"
            ) from None
        except (OSError, http.client.HTTPException) as error:
            raise invalid(f"'{where}': could not fetch the image URL ({type(error).__name__})") from None
        finally:
            connection.close()
            budget.bytes_left -= size
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
