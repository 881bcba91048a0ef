"""Image URL fetching: refused unless allow-listed and public (SSRF), capped in size, no redirects.

Refusals use a fake resolver (no DNS, no network). The fetch mechanics run against a real HTTP
server on loopback, which only a fetcher told to accept loopback may reach.
"""

from __future__ import annotations

import http.server
import threading
import time
from collections.abc import Iterator

import pytest

from gateway.errors import ApiError
from gateway.image_urls import ImageUrlFetcher, is_public_address

PUBLIC = "93.184.216.34"


def fetcher(
    resolved: dict[str, list[str]], allowlist: str = "images.example.com", **kwargs
) -> ImageUrlFetcher:
    def resolve(host: str, _port: int) -> list[str]:
        if host not in resolved:
            raise OSError("no such host")
        return resolved[host]

    return ImageUrlFetcher(
        allowlist, timeout_s=2.0, max_bytes=kwargs.pop("max_bytes", 1000), resolve=resolve, **kwargs
    )


def refusal(fetch: ImageUrlFetcher, url: str) -> str:
    with pytest.raises(ApiError) as raised:
        fetch.check(url, "images[0]")
    assert raised.value.http_status == 400
    return raised.value.message


@pytest.mark.parametrize(
    "address",
    ["127.0.0.1", "10.1.2.3", "172.16.0.9", "192.168.1.1", "169.254.169.254", "0.0.0.0", "100.64.0.1",
     "224.0.0.1", "240.0.0.1", "::1", "fe80::1", "fc00::1", "::ffff:127.0.0.1", "::ffff:10.0.0.1",
     "2002:7f00:1::1", "2002:a9fe:a9fe::1", "2001:0:4136:e378:8000:63bf:80ff:fffe"],
)  # fmt: skip
def test_non_public_addresses_are_refused(address: str) -> None:
    assert not is_public_address(address)
    message = refusal(fetcher({"images.example.com": [address]}), "https://images.example.com/cat.png")
    assert "non-public address" in message


def test_public_addresses_pass() -> None:
    assert is_public_address(PUBLIC) and is_public_address("2606:2800:220:1::1")
    scheme, host, port, address = fetcher({"images.example.com": [PUBLIC]}).check(
        "https://Images.Example.com/a.png", "x"
    )
    assert (scheme, host, port, address) == ("https", "images.example.com", 443, PUBLIC)


def test_one_private_address_among_public_ones_is_refused() -> None:
    fetch = fetcher({"images.example.com": [PUBLIC, "10.0.0.7"]})
    assert "non-public" in refusal(fetch, "http://images.example.com/a.png")


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("https://evil.example.com/a.png", "not in the image URL allow-list"),
        ("https://images.example.com.evil.com/a.png", "not in the image URL allow-list"),
        ("ftp://images.example.com/a.png", "http(s) URL"),
        ("https://user:pw@images.example.com/a.png", "credentials"),
        ("https://images.example.com:99999/a.png", "not a valid URL"),
    ],
)
def test_urls_outside_the_allow_list_or_malformed_are_refused(url: str, message: str) -> None:
    assert message in refusal(fetcher({"images.example.com": [PUBLIC]}), url)


def test_unresolvable_host_is_refused() -> None:
    assert "does not resolve" in refusal(fetcher({}), "https://images.example.com/a.png")


def test_empty_allow_list_disables_urls() -> None:
    fetch = fetcher({"images.example.com": [PUBLIC]}, allowlist="")
    assert not fetch.enabled
    assert "disabled" in refusal(fetch, "https://images.example.com/a.png")


class _Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # noqa: N802 - the http.server naming
        if self.path == "/slow":  # a trickle: every read gets a byte before a per-read timeout
            self.send_response(200)
            self.send_header("Content-Length", "100")
            self.end_headers()
            for _ in range(100):
                self.wfile.write(b"x")
                self.wfile.flush()
                time.sleep(0.1)
            return
        if self.path.startswith("/caf%C3%A9"):  # the non-ASCII path arrives percent-encoded
            self.path = "/small"
        if self.path == "/redirect":
            self.send_response(302)
            self.send_header("Location", "http://169.254.169.254/latest/meta-data")
            self.end_headers()
            return
        body = b"x" * (5000 if self.path == "/big" else 100)
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *_args) -> None:
        pass


@pytest.fixture(scope="module")
def local_server() -> Iterator[int]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server.server_address[1]
    server.shutdown()
    server.server_close()


def test_fetch_reads_the_checked_address_and_caps_size_and_redirects(local_server: int) -> None:
    # The name resolves to loopback; only this test's fetcher accepts loopback addresses.
    fetch = fetcher({"images.example.com": ["127.0.0.1"]}, address_allowed=lambda _a: True)
    base = f"http://images.example.com:{local_server}"
    assert fetch.fetch(base + "/small", "images[0]") == b"x" * 100
    for path, message in (("/big", "larger than 1000 bytes"), ("/redirect", "redirects are not followed")):
        with pytest.raises(ApiError) as raised:
            fetch.fetch(base + path, "images[0]")
        assert message in raised.value.message
    # The default fetcher refuses the same loopback server.
    assert "non-public" in refusal(fetcher({"images.example.com": ["127.0.0.1"]}), base + "/small")


def test_gateway_route_uses_the_allow_list() -> None:
    from gateway.app import create_app
    from services.common.settings import GatewaySettings

    settings = GatewaySettings(
        text_address="127.0.0.1:1", vision_address="127.0.0.1:1", fusion_address="127.0.0.1:1",
        image_url_allowlist="images.example.com",
    )  # fmt: skip
    client = create_app(settings).test_client()
    response = client.post("/v1/embed/image", json={"images": ["http://127.0.0.1:8080/admin"]})
    assert response.status_code == 400
    assert "not in the image URL allow-list" in response.get_json()["error"]["message"]


def test_a_slow_sender_cannot_stretch_the_time_budget(local_server: int) -> None:
    fetch = ImageUrlFetcher(
        "images.example.com", timeout_s=0.5, max_bytes=1000,
        resolve=lambda _h, _p: ["127.0.0.1"], address_allowed=lambda _a: True,
    )  # fmt: skip
    began = time.monotonic()
    with pytest.raises(ApiError) as raised:
        fetch.fetch(f"http://images.example.com:{local_server}/slow", "images[0]")
    assert "ran out of time" in raised.value.message
    assert time.monotonic() - began < 1.5  # it used to take the whole 10 s trickle


def test_a_requests_urls_share_one_byte_budget(local_server: int) -> None:
    fetch = ImageUrlFetcher(
        "images.example.com", timeout_s=2, max_bytes=1000, request_max_bytes=250,
        resolve=lambda _h, _p: ["127.0.0.1"], address_allowed=lambda _a: True,
    )  # fmt: skip
    url = f"http://images.example.com:{local_server}/small"  # 100 bytes each
    one_request = fetch.for_request()
    assert one_request(url, "images[0]") == one_request(url, "images[1]") == b"x" * 100
    with pytest.raises(ApiError) as raised:
        one_request(url, "images[2]")  # 50 bytes left for a 100-byte image
    assert "budget" in raised.value.message
    assert fetch.for_request()(url, "images[0]") == b"x" * 100  # the next request has its own


def test_a_non_ascii_path_is_sent_percent_encoded(local_server: int) -> None:
    fetch = fetcher({"images.example.com": ["127.0.0.1"]}, address_allowed=lambda _a: True)
    assert fetch.fetch(f"http://images.example.com:{local_server}/café.png", "x") == b"x" * 100


def test_a_dns_lookup_that_hangs_is_refused_in_time() -> None:
    def hanging(_host: str, _port: int) -> list[str]:
        time.sleep(5)
        return [PUBLIC]

    fetch = ImageUrlFetcher("images.example.com", timeout_s=2, max_bytes=1000, resolve=hanging)
    began = time.monotonic()
    assert "does not resolve" in refusal(fetch, "https://images.example.com/a.png")
    assert time.monotonic() - began < 3
