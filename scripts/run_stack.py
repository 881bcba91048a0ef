"""``make run``: the whole stack on this machine, in the foreground; Ctrl-C stops all five.

Starts text, vision and audio (default real models), fusion (serving the heads in ./heads) and the
gateway on the default ports, waits until /readyz answers, then prints where to call it. The
fine-tuned text models ``make finetune-demo`` leaves in ./models (``ner``, ``classifier``) are
served by the text service when they are there.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

from scripts.stack import ROOT, start_stack

DEFAULT_PORTS = {"text": 50051, "vision": 50052, "fusion": 50053, "audio": 50054, "gateway": 8080}


def wait_ready(url: str, timeout_s: float = 120.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url + "/readyz", timeout=2) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.5)
    raise TimeoutError(f"{url}/readyz did not become ready in {timeout_s:.0f}s")


def finetuned_model_args(models_dir: Path) -> list[str]:
    """Text service flags for the fine-tuned models found in ``models_dir`` (unless the
    environment already names a model: an explicit choice wins)."""
    args = []
    for folder, flag, env in (
        ("ner", "--ner-model", "MMSERVE_TEXT_NER_MODEL"),
        ("classifier", "--classifier-model", "MMSERVE_TEXT_CLASSIFIER_MODEL"),
    ):
        if (models_dir / folder / "config.json").is_file() and not os.environ.get(env):
            print(f"serving the fine-tuned {folder} model in {models_dir / folder}", flush=True)
            args += [flag, str(models_dir / folder)]
    return args


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--heads-dir", default=str(ROOT / "heads"))
    parser.add_argument("--models-dir", default=str(ROOT / "models"), help="Fine-tuned text models.")
    parser.add_argument("--log-dir", default=str(ROOT / "build" / "logs"))
    args = parser.parse_args()
    log_dir = Path(args.log_dir)
    log_dir.mkdir(parents=True, exist_ok=True)
    Path(args.heads_dir).mkdir(parents=True, exist_ok=True)

    print("starting text, vision, audio, fusion and gateway (logs in build/logs) ...", flush=True)
    # Development: reflection on, so grpcurl can list and call the services (all on 127.0.0.1).
    dev = ["--reflection", "true"]
    extra_args = {
        "text": [*dev, *finetuned_model_args(Path(args.models_dir))],
        "vision": dev,
        "audio": dev,
        "fusion": dev,
    }
    stack = start_stack(ports=DEFAULT_PORTS, heads_dir=args.heads_dir, log_dir=log_dir, extra_args=extra_args)
    # Ctrl-C reaches the whole process group; SIGTERM (e.g. from a supervisor) stops us the same way.
    signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
    try:
        wait_ready(stack.gateway.url)
        body = json.dumps({"input": ["a photo of a cat", "a dog on a skateboard"]})
        print(
            f"\nmmserve is ready at http://localhost:{DEFAULT_PORTS['gateway']}"
            f"  (docs: http://localhost:{DEFAULT_PORTS['gateway']}/docs)\n\n"
            f"  curl -s localhost:{DEFAULT_PORTS['gateway']}/v1/embeddings "
            f"-H 'Content-Type: application/json' -d '{body}'\n\n"
            "Ctrl-C stops all five services.",
            flush=True,
        )
        while all(s.process.poll() is None for s in stack.services):
            time.sleep(0.5)
        dead = [s for s in stack.services if s.process.poll() is not None]
        for service in dead:
            print(
                f"\n{service.kind} exited with {service.process.returncode}:\n{service.log_tail()}",
                file=sys.stderr,
            )
        raise SystemExit(1)
    except KeyboardInterrupt:
        print("\nstopping ...", flush=True)
    finally:
        stack.stop()


if __name__ == "__main__":
    main()
