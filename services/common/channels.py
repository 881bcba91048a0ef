"""gRPC client channels: one place for load balancing, retries, keepalive and TLS.

Targets like ``dns:///text-headless:50051`` resolve to every pod behind a headless Service;
the ``round_robin`` policy then spreads calls over them per call, not per connection.
UNAVAILABLE (and CANCELLED, what a server shutting down answers a call that arrives as it stops)
is retried once with a short backoff by gRPC itself (service-config retry policy),
which is safe because every mmserve RPC is idempotent.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import grpc

from services.common import tracing
from services.common.call_auth import AioTokenClientInterceptor, TokenClientInterceptor, read_token
from services.common.channel_rotation import AioRotatingChannel, RotatingChannel

DNS_MIN_RERESOLUTION_MS = 5_000
# How often a TLS client looks for rotated CA / client certificate files, and how long a channel
# replaced by a rotation stays open for the calls still on it (longer than the gateway's and
# fusion's default 10 s deadlines; callers with longer deadlines pass theirs).
ROTATION_CHECK_S = 5.0
ROTATION_GRACE_S = 60.0


def _service_config(retry_backoff_ms: float) -> str:
    backoff_s = max(retry_backoff_ms, 1.0) / 1000.0
    return json.dumps(
        {
            "loadBalancingConfig": [{"round_robin": {}}],
            "methodConfig": [
                {
                    "name": [{}],
                    "retryPolicy": {
                        "maxAttempts": 2,
                        "initialBackoff": f"{backoff_s:.3f}s",
                        "maxBackoff": f"{backoff_s * 4:.3f}s",
                        "backoffMultiplier": 2,
                        # CANCELLED: a server shutting down cancels calls that arrive as it
                        # stops; another replica (or the restarted one) can take them.
                        "retryableStatusCodes": ["UNAVAILABLE", "CANCELLED"],
                    },
                }
            ],
        }
    )


@dataclass(frozen=True)
class ChannelSecurity:
    """TLS to the backends: a CA to verify them, and optionally a client cert for mTLS.

    gRPC checks that the server's certificate names the host of the target (its SANs), so each
    component's certificate must name the Service names its clients dial. ``target_name_override``
    replaces that name for the check; only for setups that dial an address the certificate cannot
    name (it never turns the check off).

    The CA and client files are looked at again at most every ``rotation_check_s``; when they
    changed, new calls go over a channel built with the new ones (services.common.channel_rotation),
    and the replaced channel closes ``rotation_grace_s`` later.
    """

    ca_file: str = ""
    client_cert_file: str = ""
    client_key_file: str = ""
    token_file: str = ""  # this component's caller token (services.common.call_auth)
    target_name_override: str = ""
    rotation_check_s: float = ROTATION_CHECK_S
    rotation_grace_s: float = ROTATION_GRACE_S

    @property
    def enabled(self) -> bool:
        return bool(self.ca_file)

    def token(self) -> str:
        return read_token(self.token_file) if self.token_file else ""

    def credentials(self) -> grpc.ChannelCredentials:
        cert = Path(self.client_cert_file).read_bytes() if self.client_cert_file else None
        key = Path(self.client_key_file).read_bytes() if self.client_key_file else None
        return grpc.ssl_channel_credentials(
            root_certificates=Path(self.ca_file).read_bytes(), private_key=key, certificate_chain=cert
        )


def channel_options(retry_backoff_ms: float = 50.0) -> list[tuple[str, object]]:
    return [
        ("grpc.service_config", _service_config(retry_backoff_ms)),
        ("grpc.enable_retries", 1),
        # Images travel in requests; allow what the services accept (they enforce their own caps).
        ("grpc.max_send_message_length", 64 * 1024 * 1024),
        ("grpc.max_receive_message_length", 64 * 1024 * 1024),
        # Notice dead peers quickly so a killed pod is dropped from the round-robin set.
        ("grpc.keepalive_time_ms", 10_000),
        ("grpc.keepalive_timeout_ms", 5_000),
        ("grpc.keepalive_permit_without_calls", 1),
        # Reconnect fast after a backend restarts instead of backing off for up to 2 minutes.
        ("grpc.initial_reconnect_backoff_ms", 100),
        ("grpc.max_reconnect_backoff_ms", 1_000),
        # Re-resolve DNS at most this often (gRPC's default is 30 s): a replica an autoscaler adds
        # joins a client's rotation within the servers' max_connection_age plus this.
        ("grpc.dns_min_time_between_resolutions_ms", DNS_MIN_RERESOLUTION_MS),
    ]


def _secure_options(security: ChannelSecurity | None, retry_backoff_ms: float) -> list[tuple[str, object]]:
    options = channel_options(retry_backoff_ms)
    if security is not None and security.enabled and security.target_name_override:
        options.append(("grpc.ssl_target_name_override", security.target_name_override))
    return options


def create_channel(
    target: str, security: ChannelSecurity | None = None, retry_backoff_ms: float = 50.0
) -> grpc.Channel:
    """A synchronous channel (the gateway's threads); with TLS, one that follows rotated files."""
    options = _secure_options(security, retry_backoff_ms)
    if security is not None and security.enabled:
        channel = RotatingChannel(
            lambda credentials: grpc.secure_channel(target, credentials, options=options), security, target
        )
    else:
        channel = grpc.insecure_channel(target, options=options)
    token = security.token() if security is not None else ""
    channel = grpc.intercept_channel(channel, TokenClientInterceptor(token)) if token else channel
    return tracing.traced_channel(channel)


def create_aio_channel(
    target: str, security: ChannelSecurity | None = None, retry_backoff_ms: float = 50.0
) -> grpc.aio.Channel:
    """An asyncio channel (the fusion service's downstream calls); with TLS, one that follows rotated
    files."""
    options = _secure_options(security, retry_backoff_ms)
    token = security.token() if security is not None else ""
    interceptors = [
        *([AioTokenClientInterceptor(token)] if token else []),
        *tracing.aio_client_interceptors(),
    ]
    interceptors = interceptors or None
    if security is not None and security.enabled:
        return AioRotatingChannel(
            lambda credentials: grpc.aio.secure_channel(
                target, credentials, options=options, interceptors=interceptors
            ),
            security,
            target,
        )
    return grpc.aio.insecure_channel(target, options=options, interceptors=interceptors)
