"""`helm test`: waits until the gateway's /readyz reports the text encoder SERVING, then asks for one
embedding and checks its shape."""

import json
import pathlib
import sys
import time
import urllib.error
import urllib.request

BASE = sys.argv[1].rstrip("/")
KEYS_FILE = pathlib.Path("/etc/mmserve/api-keys/keys")
READY_TIMEOUT_S = 300


def wait_ready() -> None:
    """The gateway is ready as soon as any backend serves; the embedding below needs the text encoder."""
    deadline = time.monotonic() + READY_TIMEOUT_S
    seen = "no answer"
    while True:
        try:
            with urllib.request.urlopen(f"{BASE}/readyz", timeout=5) as response:
                body = json.load(response)
                seen = json.dumps(body)
                if body.get("backends", {}).get("text") == "SERVING":
                    return
        except urllib.error.HTTPError as exc:  # 503 while no backend serves yet
            seen = f"{exc.code} {exc.read()[:300]!r}"
        except (urllib.error.URLError, OSError, ValueError) as exc:
            seen = repr(exc)
        if time.monotonic() > deadline:
            sys.exit(f"FAIL: {BASE}/readyz did not report text SERVING within {READY_TIMEOUT_S} s: {seen}")
        time.sleep(5)


def embed() -> list:
    headers = {"Content-Type": "application/json"}
    if KEYS_FILE.exists():
        headers["Authorization"] = "Bearer " + KEYS_FILE.read_text().split(",")[0].strip()
    request = urllib.request.Request(
        f"{BASE}/v1/embeddings", data=json.dumps({"input": "hello"}).encode(), headers=headers, method="POST"
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            body = json.load(response)
    except urllib.error.HTTPError as exc:
        sys.exit(f"FAIL: POST /v1/embeddings answered {exc.code}: {exc.read()[:500]!r}")
    return body["data"][0]["embedding"]


def main() -> None:
    wait_ready()
    vector = embed()
    if not vector or not all(isinstance(x, float) for x in vector):
        sys.exit(f"FAIL: not an embedding: {vector!r:.200}")
    print(f"ok: /readyz reports text SERVING and POST /v1/embeddings returned {len(vector)} floats")


if __name__ == "__main__":
    main()
