"""The heads being served, kept in step with the heads directory and the serving encoders.

A background task rescans the directory every few seconds: a new or changed head (by the
mtimes and sizes of its files; the weights' sha256 is verified on every load) is loaded without
a restart; a corrupt one is refused while the previously loaded version keeps serving; a head
trained on other encoders (model, revision or dimension) than the ones serving is refused with
the reason and never run on their embeddings. Each scan also re-reads the encoders' model info.
An encoder that has never been reached is not held against a head; requests check the model
that actually produced their embeddings (``check``) before any head runs on them.

Whoever can write the heads directory is not trusted with the server: each head loads in
isolation (any failure, expected or not, refuses that head alone with one WARNING line and a
count in ``mmserve_fusion_heads_rejected_total{reason}``; the other heads keep serving and later
scans still run), files are bounded in size before they are read (``load_head``), and a head
whose directory or files resolve outside the heads directory (a symlink out) is refused.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Collection, Mapping
from dataclasses import dataclass
from pathlib import Path

from prometheus_client import CollectorRegistry, Counter

from services.common.backend import EncoderInfo
from services.common.compiled import check_runtime
from services.common.errors import FailedPrecondition, MmserveError, NotFound
from services.common.settings import FusionSettings
from services.fusion.heads import (
    MANIFEST_FILE,
    WEIGHTS_FILE,
    Head,
    HeadLoadError,
    HeadManifest,
    IncompatibleHead,
    check_encoders,
    load_head,
)
from services.fusion.modalities import ENCODED, MODALITIES

_LOGGER = logging.getLogger(__name__)

Stamp = tuple[int, int, int, int]  # mtime_ns and size of the manifest, then of the weights
InfoSource = Callable[[], Awaitable[Mapping[str, EncoderInfo | None]]]


def _stamp(directory: Path) -> Stamp | None:
    try:
        manifest, weights = (directory / MANIFEST_FILE).stat(), (directory / WEIGHTS_FILE).stat()
    except OSError:
        return None
    return (manifest.st_mtime_ns, manifest.st_size, weights.st_mtime_ns, weights.st_size)


class HeadOutsideDir(HeadLoadError):
    """A head's directory or files resolve (through a symlink) outside the heads directory."""

    reason = "outside_heads_dir"


# Label of failures no check anticipated (a bug, or an input nobody thought of): still one head's.
UNEXPECTED_REASON = "unexpected"


def check_confined(directory: Path, root: Path) -> None:
    """Refuses (HeadOutsideDir) a head whose directory or files resolve outside ``root``;
    symlinks that stay inside it are fine."""
    root = root.resolve()
    for path in (directory, directory / MANIFEST_FILE, directory / WEIGHTS_FILE):
        if not path.resolve().is_relative_to(root):
            what = "directory" if path == directory else path.name
            raise HeadOutsideDir(f"head {directory.name!r}: its {what} resolves outside the heads directory")


def rejections_counter(registry: CollectorRegistry) -> Counter:
    return Counter(
        "mmserve_fusion_heads_rejected_total",
        "Heads refused at load (each new or changed version once), by reason.",
        ("reason",),
        registry=registry,
    )


def check_head(
    manifest: HeadManifest, infos: Mapping[str, EncoderInfo | None], configured: Collection[str] = ENCODED
) -> None:
    """Raises IncompatibleHead if a known encoder differs from the head's, or if the head reads a
    modality whose encoder this service has no address for; encoders not reached yet pass."""
    for modality in manifest.encoded_modalities:
        if modality not in configured:
            encoder = MODALITIES[modality].encoder
            raise IncompatibleHead(
                f"head {manifest.name!r} reads {modality}, but this fusion service has no {encoder} encoder "
                f"(its {encoder}_address setting is empty)"
            )
    trained = {
        m: EncoderInfo(manifest.encoders[m].model_id, manifest.encoders[m].revision, manifest.input_dims[m])
        for m in manifest.encoded_modalities
    }
    check_encoders(manifest, {m: infos.get(m) or trained[m] for m in trained})


@dataclass(frozen=True)
class _Loaded:
    head: Head
    stamp: Stamp


class HeadRegistry:
    """Loaded heads by name; ``served()`` and ``get()`` answer from the last scan."""

    def __init__(
        self,
        heads_dir: Path,
        refresh_infos: InfoSource,
        interval_s: float,
        max_weights_bytes: int = FusionSettings.max_head_weights_bytes,
        metrics_registry: CollectorRegistry | None = None,
        configured: Collection[str] = ENCODED,
        cpu_runtime: str = "eager",
    ) -> None:
        check_runtime(cpu_runtime)
        self._dir = heads_dir
        self._cpu_runtime = cpu_runtime  # what runs each head's decision layer (Head.compiled_for)
        self._configured = tuple(configured)  # modalities whose encoder has an address
        self._refresh_infos = refresh_infos
        self._interval_s = interval_s
        self._max_weights_bytes = max_weights_bytes
        self._rejected = rejections_counter(metrics_registry or CollectorRegistry())
        self._loaded: dict[str, _Loaded] = {}
        self._unloadable: dict[str, tuple[Stamp, str]] = {}  # why; kept until the files change
        self._refused: dict[str, str] = {}  # loaded, but incompatible with the serving encoders
        self._served: dict[str, Head] = {}
        self._infos: Mapping[str, EncoderInfo | None] = dict.fromkeys(ENCODED)
        self._dir_missing = False
        self._task: asyncio.Task | None = None

    def served(self) -> list[Head]:
        return [self._served[name] for name in sorted(self._served)]

    def get(self, name: str) -> Head:
        if not name:
            raise NotFound("a head name is required; ListHeads names the served heads")
        head = self._served.get(name)
        if head is not None:
            return head
        if name in self._refused:
            raise IncompatibleHead(self._refused[name])
        if name in self._unloadable and name not in self._loaded:
            raise FailedPrecondition(f"head {name!r} is not served: {self._unloadable[name][1]}")
        raise NotFound(f"no head named {name!r}; served heads: {', '.join(sorted(self._served)) or 'none'}")

    def check(self, head: Head, infos: Mapping[str, EncoderInfo]) -> None:
        """Refuses (IncompatibleHead) to run ``head`` on embeddings from the encoder models ``infos``."""
        check_head(head.manifest, infos, self._configured)

    async def start(self) -> None:
        await self._scan_logged()  # a failing first scan must not stop the service: the watcher retries
        self._task = asyncio.get_running_loop().create_task(self._watch(), name="heads-watch")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()

    async def _watch(self) -> None:
        while True:
            await asyncio.sleep(self._interval_s)
            await self._scan_logged()

    async def _scan_logged(self) -> None:
        try:
            await self.scan()
        except Exception:  # noqa: BLE001 - the watcher must outlive any one bad scan
            _LOGGER.exception("heads scan failed")

    async def scan(self) -> None:
        """Re-reads the encoders' model info and the heads directory, then decides what is served."""
        infos, _ = await asyncio.gather(self._refresh_infos(), asyncio.to_thread(self._reload_files))
        self._infos = dict(infos)
        self._decide_served()

    def _reload_files(self) -> None:
        if not self._dir.is_dir():
            if not self._dir_missing:
                _LOGGER.warning("heads directory %s does not exist; no heads are served", self._dir)
            self._dir_missing = True
            self._loaded.clear()
            return
        self._dir_missing = False
        # Dot-directories are staging areas (a head being copied in); names can't start with '.'.
        present = {p.name: p for p in self._dir.iterdir() if p.is_dir() and not p.name.startswith(".")}
        for name in list(self._loaded):
            if name not in present:
                _LOGGER.info("head removed", extra={"fields": {"head": name}})
                del self._loaded[name]
        for name in list(self._unloadable):
            if name not in present:
                del self._unloadable[name]
        for name, directory in sorted(present.items()):
            self._load_if_changed(name, directory)

    def _load_if_changed(self, name: str, directory: Path) -> None:
        stamp = _stamp(directory)
        if stamp is None:
            return  # incomplete: still being copied in, or being replaced
        current = self._loaded.get(name)
        failed = self._unloadable.get(name)
        if (current is not None and current.stamp == stamp) or (failed is not None and failed[0] == stamp):
            return
        try:
            check_confined(directory, self._dir)
            # Compiled here, in the scan's thread: the event loop keeps serving meanwhile.
            head = load_head(directory, self._max_weights_bytes).compiled_for(self._cpu_runtime)
        except Exception as error:  # noqa: BLE001 - one head's failure, whatever it is, is that head's alone
            self._refuse(name, stamp, error, kept=current is not None)
            return
        self._unloadable.pop(name, None)
        self._loaded[name] = _Loaded(head, stamp)
        _LOGGER.info(
            "head loaded",
            extra={"fields": {"head": name, "task": head.manifest.task, "strategy": head.manifest.strategy}},
        )

    def _refuse(self, name: str, stamp: Stamp, error: Exception, kept: bool) -> None:
        if isinstance(error, MmserveError):
            reason, message = getattr(error, "reason", UNEXPECTED_REASON), str(error)
        else:
            # The details may be anything (paths, internals): they go to the log, not to callers.
            reason, message = UNEXPECTED_REASON, f"head {name!r} could not be loaded ({type(error).__name__})"
        self._unloadable[name] = (stamp, message)
        self._rejected.labels(reason).inc()
        _LOGGER.warning(
            "head refused: %s%s",
            message if isinstance(error, MmserveError) else f"{message}: {error}",
            "; the previously loaded version keeps serving" if kept else "",
            extra={"fields": {"head": name, "reason": reason}},
        )

    def _decide_served(self) -> None:
        served: dict[str, Head] = {}
        refused: dict[str, str] = {}
        for name, loaded in self._loaded.items():
            try:
                check_head(loaded.head.manifest, self._infos, self._configured)
            except MmserveError as error:
                refused[name] = str(error)
                if self._refused.get(name) != refused[name]:
                    _LOGGER.error("head refused: %s", error, extra={"fields": {"head": name}})
                continue
            if name in self._refused:
                _LOGGER.info("head served again: the encoders match it", extra={"fields": {"head": name}})
            served[name] = loaded.head
        self._served, self._refused = served, refused
