"""TLS client channels that follow their CA and client certificate/key files as they rotate.

A Kubernetes Secret is rotated by swapping a symlink, so each file's (inode, size, mtime) stamp
changes. The files are looked at by a call at most every ``ChannelSecurity.rotation_check_s``
(a ``time.monotonic()`` comparison on the call path, never a ``stat`` per call); when they changed
and the new material is whole (the key matches the certificate, the CA parses), new calls go over
a fresh channel built with it. Calls already under way finish on the old channel, which is closed
``rotation_grace_s`` later. A half-written update is ignored until it is whole.

The rotating channel sits under the interceptors (token, tracing) and the stubs: it hands out
multi-callables that resolve the current channel on each call, so stubs made once follow a swap.
"""

from __future__ import annotations

import asyncio
import logging
import os
import ssl
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import grpc

if TYPE_CHECKING:
    from services.common.channels import ChannelSecurity

_LOGGER = logging.getLogger(__name__)

_Stamp = tuple[tuple[int, int, int], ...]


def _stamp(paths: tuple[str, ...]) -> _Stamp:
    stats = [os.stat(p) for p in paths]
    return tuple((s.st_ino, s.st_size, s.st_mtime_ns) for s in stats)


class _CredentialFiles:
    """The CA and client certificate/key files of one client, and the stamp they were read at."""

    def __init__(self, security: ChannelSecurity, target: str) -> None:
        self._security = security
        self._target = target
        self._paths = tuple(
            p for p in (security.ca_file, security.client_cert_file, security.client_key_file) if p
        )
        self._stamp = _stamp(self._paths)
        self._rejected: object = object()  # the stamp of the last update refused (none yet)
        self.initial = security.credentials()
        self.next_check = time.monotonic() + security.rotation_check_s

    def _check(self) -> None:
        # The ssl module refuses a key that does not match its certificate and a CA file that is
        # not PEM: a half-written rotation is caught here, not by every handshake after it.
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        context.load_verify_locations(cafile=self._security.ca_file)
        if self._security.client_cert_file:
            context.load_cert_chain(self._security.client_cert_file, self._security.client_key_file or None)

    def changed(self) -> grpc.ChannelCredentials | None:
        """New credentials when the files changed since they were last read and are whole, else None."""
        self.next_check = time.monotonic() + self._security.rotation_check_s
        stamp: _Stamp | None = None
        try:
            stamp = _stamp(self._paths)
            if stamp in (self._stamp, self._rejected):
                return None
            self._check()
            credentials = self._security.credentials()
            if _stamp(self._paths) != stamp:
                return None  # changed while being read: take it at a later check
        except (OSError, ssl.SSLError, ValueError) as exc:
            if stamp != self._rejected:  # one warning per bad update, not one per check
                _LOGGER.warning(
                    "cannot reload the TLS client files; keeping the current ones: %s",
                    exc,
                    extra={"fields": {"target": self._target}},
                )
            self._rejected = stamp
            return None
        self._stamp = stamp
        _LOGGER.info(
            "TLS client certificate reloaded",
            extra={"fields": {"target": self._target, "cert_file": self._security.client_cert_file}},
        )
        return credentials


class _MultiCallable:
    """A stub's method: resolves the channel in use at each call, and caches the underlying
    multi-callable for as long as that channel stays current."""

    __slots__ = ("_args", "_bound", "_kind", "_owner")

    def __init__(self, owner: _Rotating, kind: str, args: tuple) -> None:
        self._owner = owner
        self._kind = kind
        self._args = args
        self._bound: tuple[int, Any] = (-1, None)

    def _inner(self):
        generation, channel = self._owner._current()
        bound_generation, inner = self._bound  # one tuple: threads never see half an update
        if bound_generation != generation:
            inner = getattr(channel, self._kind)(*self._args)
            self._bound = (generation, inner)
        return inner

    def __call__(self, *args, **kwargs):
        return self._inner()(*args, **kwargs)

    def with_call(self, *args, **kwargs):
        return self._inner().with_call(*args, **kwargs)

    def future(self, *args, **kwargs):
        return self._inner().future(*args, **kwargs)


class _Rotating:
    """What the synchronous and asyncio rotating channels share: the files, the current channel
    and the generation it belongs to, and the multi-callables handed out."""

    def __init__(
        self, build: Callable[[grpc.ChannelCredentials], Any], security: ChannelSecurity, target: str
    ):
        self._build = build
        self._grace_s = security.rotation_grace_s
        self._files = _CredentialFiles(security, target)
        self._lock = threading.Lock()
        self._state: tuple[int, Any] = (0, build(self._files.initial))
        self._callables: dict[tuple, _MultiCallable] = {}
        self._closed = False

    @property
    def generation(self) -> int:
        """How many times the channel was rebuilt with rotated files."""
        return self._state[0]

    def _current(self) -> tuple[int, Any]:
        if time.monotonic() >= self._files.next_check:
            self._rotate()
        return self._state

    def _rotate(self) -> None:
        if not self._can_rotate() or not self._lock.acquire(blocking=False):
            return  # another thread is checking: this call takes the channel in use
        try:
            if self._closed or time.monotonic() < self._files.next_check:
                return
            credentials = self._files.changed()
            if credentials is None:
                return
            generation, old = self._state
            new = self._build(credentials)
            self._moved(old, new)
            self._state = (generation + 1, new)
            self._retire(old)
        finally:
            self._lock.release()

    def _can_rotate(self) -> bool:
        return True

    def _moved(self, old, new) -> None:
        """Hook: carry what was attached to the old channel over to the new one."""

    def _retire(self, old) -> None:
        raise NotImplementedError

    def _callable(self, kind: str, *args) -> _MultiCallable:
        key = (kind, *args)
        found = self._callables.get(key)
        if found is None:
            found = self._callables.setdefault(key, _MultiCallable(self, kind, args))
        return found

    # The four kinds of call, with grpc's signature (sync and asyncio spell them alike).
    def unary_unary(
        self, method, request_serializer=None, response_deserializer=None, _registered_method=False
    ):
        return self._callable(
            "unary_unary", method, request_serializer, response_deserializer, _registered_method
        )

    def unary_stream(
        self, method, request_serializer=None, response_deserializer=None, _registered_method=False
    ):
        return self._callable(
            "unary_stream", method, request_serializer, response_deserializer, _registered_method
        )

    def stream_unary(
        self, method, request_serializer=None, response_deserializer=None, _registered_method=False
    ):
        return self._callable(
            "stream_unary", method, request_serializer, response_deserializer, _registered_method
        )

    def stream_stream(
        self, method, request_serializer=None, response_deserializer=None, _registered_method=False
    ):
        return self._callable(
            "stream_stream", method, request_serializer, response_deserializer, _registered_method
        )


class RotatingChannel(_Rotating, grpc.Channel):
    """A synchronous TLS channel rebuilt when its CA or client certificate/key files change."""

    def __init__(
        self, build: Callable[[grpc.ChannelCredentials], grpc.Channel], security: ChannelSecurity, target: str
    ) -> None:
        self._subscriptions: dict[Callable, bool] = {}
        self._retired: dict[grpc.Channel, threading.Timer] = {}
        super().__init__(build, security, target)

    def _moved(self, old: grpc.Channel, new: grpc.Channel) -> None:
        for callback, try_to_connect in list(self._subscriptions.items()):
            old.unsubscribe(callback)
            new.subscribe(callback, try_to_connect=try_to_connect)

    def _retire(self, old: grpc.Channel) -> None:
        # grpc's synchronous close() cancels calls in flight: give them the grace first.
        timer = threading.Timer(self._grace_s, self._close_retired, (old,))
        timer.daemon = True
        self._retired[old] = timer
        timer.start()

    def _close_retired(self, old: grpc.Channel) -> None:
        if self._retired.pop(old, None) is not None:
            old.close()

    def subscribe(self, callback, try_to_connect=False):
        with self._lock:
            self._subscriptions[callback] = try_to_connect
            self._state[1].subscribe(callback, try_to_connect=try_to_connect)

    def unsubscribe(self, callback):
        with self._lock:
            self._subscriptions.pop(callback, None)
            self._state[1].unsubscribe(callback)

    def close(self):
        with self._lock:
            self._closed = True
            retired, self._retired = self._retired, {}
            for old, timer in retired.items():
                timer.cancel()
                old.close()
            self._state[1].close()

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc_val, exc_tb):
        self.close()
        return False


class AioRotatingChannel(_Rotating, grpc.aio.Channel):
    """An asyncio TLS channel rebuilt when its CA or client certificate/key files change; the old
    channel is closed with ``close(grace)``, which lets its calls finish first."""

    def __init__(
        self,
        build: Callable[[grpc.ChannelCredentials], grpc.aio.Channel],
        security: ChannelSecurity,
        target: str,
    ) -> None:
        self._retired: dict[grpc.aio.Channel, asyncio.Task] = {}
        self._swapped = asyncio.Event()  # set (and replaced) on each swap: state watchers move on
        super().__init__(build, security, target)

    def _can_rotate(self) -> bool:
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            return False  # outside the loop the old channel could not be closed later
        return True

    def _retire(self, old: grpc.aio.Channel) -> None:
        task = asyncio.get_running_loop().create_task(old.close(self._grace_s), name="close-rotated-channel")
        self._retired[old] = task
        task.add_done_callback(lambda _: self._retired.pop(old, None))
        swapped, self._swapped = self._swapped, asyncio.Event()
        swapped.set()

    async def __aenter__(self):
        return self

    async def __aexit__(self, exc_type, exc_val, exc_tb):
        await self.close(None)

    async def close(self, grace: float | None = None) -> None:
        self._closed = True
        retired, self._retired = self._retired, {}
        for task in retired.values():
            task.cancel()
        await asyncio.gather(self._state[1].close(grace), *(old.close(grace) for old in retired))

    def get_state(self, try_to_connect: bool = False) -> grpc.ChannelConnectivity:
        return self._current()[1].get_state(try_to_connect)

    async def wait_for_state_change(self, last_observed_state: grpc.ChannelConnectivity) -> None:
        """Returns when the current channel's state changes, or when a new channel replaced it."""
        channel = self._current()[1]
        changed = asyncio.ensure_future(channel.wait_for_state_change(last_observed_state))
        swapped = asyncio.ensure_future(self._swapped.wait())
        try:
            await asyncio.wait((changed, swapped), return_when=asyncio.FIRST_COMPLETED)
        finally:
            for waiter in (changed, swapped):
                waiter.cancel()
        if changed.done() and not changed.cancelled() and changed.exception() is not None:
            raise changed.exception()

    async def channel_ready(self) -> None:
        state = self.get_state(try_to_connect=True)
        while state != grpc.ChannelConnectivity.READY:
            await self.wait_for_state_change(state)
            state = self.get_state(try_to_connect=True)
