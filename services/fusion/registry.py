"""The heads being served, kept in step with the heads directory and the serving encoders.

A background task rescans the directory every few seconds: a new or changed head is loaded
without a restart; a corrupt one is refused while the previously loaded version keeps serving;
a head trained on other encoders (model, revision or dimension) than the ones serving is
refused with the reason, and never mixed with them. Encoder model info is refreshed on each
scan, so an encoder restarted with another model is noticed.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

from services.common.errors import FailedPrecondition, MmserveError, NotFound
from services.fusion.clients import EncoderInfo
from services.fusion.heads import MANIFEST_FILE, WEIGHTS_FILE, Head, check_compatible, load_head

_LOGGER = logging.getLogger(__name__)


@dataclass(frozen=True)
class _Loaded:
    head: Head
    stamp: tuple[float, float, int, int]  # (mtimes, sizes) of manifest and weights


def _stamp(directory: Path) -> tuple[float, float, int, int] | None:
    try:
        manifest, weights = (directory / MANIFEST_FILE).stat(), (directory / WEIGHTS_FILE).stat()
    except OSError:
        return None
    return (manifest.st_mtime, weights.st_mtime, manifest.st_size, weights.st_size)


class HeadRegistry:
    def __init__(
        self,
        heads_dir: Path,
        fetch_encoder_infos: Callable[[], Awaitable[dict[str, EncoderInfo | None]]],
        interval_s: float,
    ) -> None:
        self._dir = heads_dir
        self._fetch_infos = fetch_encoder_infos
        self._interval_s = interval_s
        self._loaded: dict[str, _Loaded] = {}
        self._failed_stamps: dict[str, tuple] = {}  # don't re-log the same broken files every scan
        self._refused: dict[str, str] = {}
        self._served: dict[str, Head] = {}
        self._infos: dict[str, EncoderInfo | None] = {"text": None, "image": None}
        self._task: asyncio.Task | None = None

    @property
    def encoder_infos(self) -> dict[str, EncoderInfo | None]:
        return self._infos

    def served(self) -> list[Head]:
        return [self._served[name] for name in sorted(self._served)]

    def get(self, name: str) -> Head:
        if not name:
            raise NotFound("a head name is required; GET /v1/heads lists them")
        head = self._served.get(name)
        if head is not None:
            return head
        if name in self._refused:
            raise FailedPrecondition(self._refused[name])
        raise NotFound(f"no head named {name!r}; served heads: {', '.join(sorted(self._served)) or 'none'}")

    async def start(self) -> None:
        await self.scan()
        self._task = asyncio.get_running_loop().create_task(self._watch(), name="heads-watch")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()

    async def _watch(self) -> None:
        while True:
            await asyncio.sleep(self._interval_s)
            try:
                await self.scan()
            except Exception:  # noqa: BLE001 - the watcher must outlive any one bad scan
                _LOGGER.exception("heads scan failed")

    async def scan(self) -> None:
        infos = await self._fetch_infos()
        # Keep the last known info of an encoder that is down right now.
        self._infos = {m: infos.get(m) or self._infos.get(m) for m in ("text", "image")}
        await asyncio.to_thread(self._reload_files)
        self._check_compatibility()

    def _reload_files(self) -> None:
        present = {p.name: p for p in self._dir.iterdir() if p.is_dir()} if self._dir.is_dir() else {}
        for name in list(self._loaded):
            if name not in present:
                _LOGGER.info("head removed", extra={"fields": {"head": name}})
                del self._loaded[name]
        for name, directory in present.items():
            stamp = _stamp(directory)
            if stamp is None:
                continue  # incomplete (still being copied in)
            current = self._loaded.get(name)
            if (current is not None and current.stamp == stamp) or self._failed_stamps.get(name) == stamp:
                continue
            try:
                head = load_head(directory)
            except MmserveError as error:
                self._failed_stamps[name] = stamp
                kept = "; the previous version keeps serving" if current else ""
                _LOGGER.error("head refused: %s%s", error, kept, extra={"fields": {"head": name}})
                continue
            self._failed_stamps.pop(name, None)
            self._loaded[name] = _Loaded(head, stamp)
            _LOGGER.info("head loaded", extra={"fields": {"head": name, "strategy": head.manifest.strategy}})

    def _check_compatibility(self) -> None:
        served: dict[str, Head] = {}
        refused: dict[str, str] = {}
        for name, loaded in self._loaded.items():
            try:
                check_compatible(loaded.head.manifest, self._infos["text"], self._infos["image"])
            except MmserveError as error:
                refused[name] = str(error)
                if self._refused.get(name) != refused[name]:
                    _LOGGER.error("head refused: %s", error, extra={"fields": {"head": name}})
                continue
            served[name] = loaded.head
        self._served, self._refused = served, refused
