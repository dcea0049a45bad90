"""ZeroMQ PUB publisher of picks, events and status heartbeats.

Every message is two frames, ``[topic, json]``: topics are ``pick.NET.STA``,
``event`` and ``status`` so subscribers filter by prefix. Sending never blocks
the pipeline: each send is non-blocking and, with ``XPUB_NODROP`` on, fails
instead of silently discarding when a subscriber's queue (``sndhwm``) is full.
We then count one drop and deliver the message to the subscribers that still
have room (a lossy resend), so a stalled subscriber costs only itself.

libzmq then skips the stalled subscriber silently until it has drained part of
its queue, so the publisher's drop count marks the *onset* of each stall. The
exact loss is visible to the subscriber: every message carries ``seq``, a
per-topic sequence number, and a jump is a loss (``rtpick listen`` reports them).
"""

from __future__ import annotations

import errno
import logging
import os
import threading
from typing import Any

import zmq
import zmq.auth
from prometheus_client import CollectorRegistry, Counter, Gauge
from zmq.utils.monitor import recv_monitor_message

from rtpick.publish.messages import encode, event_message, pick_message, topic_for
from rtpick.types import Event, Pick

log = logging.getLogger(__name__)

KINDS = ("pick", "event", "status")


class PublishError(Exception):
    """A start-up problem of the publisher; the message names the config key."""


def endpoint_problem(endpoint: str) -> str | None:
    """What is wrong with a bind endpoint that libzmq would accept or misreport, or None."""
    transport, sep, address = endpoint.partition("://")
    if not sep or transport not in ("tcp", "ipc", "inproc") or not address:
        return f"{endpoint!r} is not 'tcp://HOST:PORT', 'ipc:///path' or 'inproc://name'"
    if transport == "tcp":
        host, colon, port = address.rpartition(":")
        if not colon or not host:
            return f"{endpoint!r} lacks ':PORT'"
        if port != "*" and not (port.isdigit() and 0 <= int(port) <= 65535):
            return f"port {port!r} of {endpoint!r} is not a number in 0-65535 (or '*')"
    return None


class Publisher:
    """PUB socket bound to ``endpoint``; thread-safe, never blocks on send.

    ``registry`` receives ``rtpick_messages_published_total`` and
    ``rtpick_messages_dropped_total`` (by ``kind``); without one they go to a
    private registry. ``published`` / ``dropped`` hold the same counts as plain dicts.
    """

    def __init__(
        self,
        endpoint: str,
        *,
        sndhwm: int = 10000,
        linger_s: float = 1.0,
        curve_secret_key_file: str | None = None,
        curve_authorized_keys_dir: str | None = None,
        registry: CollectorRegistry | None = None,
        context: zmq.Context | None = None,
    ) -> None:
        self.requested_endpoint = endpoint
        self.endpoint = endpoint  # the bound one after start() (port resolved for tcp://host:*)
        self.sndhwm = sndhwm
        self.linger_s = linger_s
        self.curve_secret_key_file = curve_secret_key_file
        self.curve_authorized_keys_dir = curve_authorized_keys_dir
        self._own_context = context is None
        self._context = context
        self._socket: zmq.Socket | None = None
        self._auth = None
        self._lock = threading.Lock()
        registry = registry if registry is not None else CollectorRegistry()
        self._m_published = Counter("rtpick_messages_published_total", "Messages sent on the ZeroMQ PUB socket.", ["kind"], registry=registry)
        self._m_dropped = Counter(
            "rtpick_messages_dropped_total",
            "Messages not delivered to at least one subscriber because its queue was full (send high-water mark).",
            ["kind"],
            registry=registry,
        )
        self._m_connections = Gauge("rtpick_publish_connections", "TCP connections of subscribers to the PUB socket.", registry=registry)
        self.connections = 0
        self._monitor: zmq.Socket | None = None
        self.published = dict.fromkeys(KINDS, 0)
        self._seq: dict[str, int] = {}  # topic -> last sequence number (subscribers detect their losses)
        self.dropped = dict.fromkeys(KINDS, 0)
        self._children = {kind: (self._m_published.labels(kind), self._m_dropped.labels(kind)) for kind in KINDS}

    @classmethod
    def from_config(cls, config: Any, *, registry: CollectorRegistry | None = None) -> Publisher:
        """From a :class:`rtpick.config.PublishConfig`."""
        return cls(
            config.endpoint,
            sndhwm=config.sndhwm,
            linger_s=config.linger_s,
            curve_secret_key_file=config.curve_secret_key_file,
            curve_authorized_keys_dir=config.curve_authorized_keys_dir,
            registry=registry,
        )

    # -- life cycle ---------------------------------------------------------------------------

    def start(self) -> Publisher:
        """Bind the socket; raise :class:`PublishError` naming the config key on any problem."""
        problem = endpoint_problem(self.requested_endpoint)
        if problem:
            raise PublishError(f"publish.endpoint: {problem}")
        curve_keys = self._load_curve_keys()
        if self._context is None:
            self._context = zmq.Context()
        socket = self._context.socket(zmq.PUB)
        try:
            socket.setsockopt(zmq.SNDHWM, self.sndhwm)
            socket.setsockopt(zmq.XPUB_NODROP, 1)  # a full queue makes send fail (counted) instead of silent loss
            socket.setsockopt(zmq.LINGER, int(self.linger_s * 1000))
            if curve_keys is not None:
                self._start_authenticator()
                socket.curve_publickey, socket.curve_secretkey = curve_keys
                socket.curve_server = True
            socket.bind(self.requested_endpoint)
        except zmq.ZMQError as exc:
            socket.close(linger=0)
            self._stop_context()
            hint = {
                errno.EADDRINUSE: " (another rtpick instance or program uses it; choose another port)",
                errno.ENODEV: " (HOST must be an address or interface of this machine, or '*' for all)",
                errno.EADDRNOTAVAIL: " (HOST must be an address of this machine, or '*' for all)",
            }.get(exc.errno, "")
            raise PublishError(f"publish.endpoint: cannot bind {self.requested_endpoint!r}: {exc.strerror}{hint}") from None
        self._socket = socket
        self._monitor = socket.get_monitor_socket(zmq.EVENT_ACCEPTED | zmq.EVENT_DISCONNECTED)
        self.endpoint = socket.getsockopt_string(zmq.LAST_ENDPOINT)
        log.info("publishing on %s (sndhwm=%d%s)", self.endpoint, self.sndhwm, ", CURVE" if curve_keys else "")
        return self

    def close(self) -> None:
        """Close the socket, letting queued messages go for at most ``linger_s``."""
        with self._lock:
            if self._socket is not None:
                if self._monitor is not None:
                    self._socket.disable_monitor()
                    self._monitor.close(linger=0)
                    self._monitor = None
                self._socket.close(linger=int(self.linger_s * 1000))
                self._socket = None
        self._stop_context()

    def __enter__(self) -> Publisher:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- sending ------------------------------------------------------------------------------

    def publish(self, message: dict[str, Any]) -> bool:
        """Send one message; False if a full subscriber queue dropped it (counted)."""
        kind = message["schema"].split(".", 1)[1].split("/", 1)[0]
        topic = topic_for(message)
        published, dropped = self._children[kind]
        with self._lock:
            socket = self._socket
            if socket is None:
                raise RuntimeError("Publisher.publish() before start() or after close()")
            seq = self._seq[topic] = self._seq.get(topic, 0) + 1
            frames = [topic.encode(), encode({**message, "seq": seq})]
            try:
                socket.send_multipart(frames, flags=zmq.NOBLOCK)
                delivered = True
            except zmq.Again:
                # Some subscriber is at its high-water mark: count the drop, then
                # deliver to those that have room (lossy send never fails).
                delivered = False
                socket.setsockopt(zmq.XPUB_NODROP, 0)
                try:
                    socket.send_multipart(frames, flags=zmq.NOBLOCK)
                finally:
                    socket.setsockopt(zmq.XPUB_NODROP, 1)
            self.published[kind] += 1
            published.inc()
            if not delivered:
                self.dropped[kind] += 1
                dropped.inc()
        return delivered

    def poll_connections(self) -> int:
        """Count subscriber connections from the socket's monitor events (call now and then, e.g. per heartbeat)."""
        with self._lock:
            monitor = self._monitor
            while monitor is not None and monitor.poll(0):
                event = recv_monitor_message(monitor)["event"]
                self.connections += 1 if event == zmq.EVENT_ACCEPTED else -1 if event == zmq.EVENT_DISCONNECTED else 0
            self.connections = max(self.connections, 0)
            self._m_connections.set(self.connections)
            return self.connections

    def publish_pick(self, pick: Pick) -> bool:
        return self.publish(pick_message(pick))

    def publish_event(self, event: Event) -> bool:
        return self.publish(event_message(event))

    # -- helpers ------------------------------------------------------------------------------

    def _load_curve_keys(self) -> tuple[bytes, bytes] | None:
        path = self.curve_secret_key_file
        if not path:
            return None
        if not zmq.has("curve"):
            raise PublishError("publish.curve_secret_key_file: this libzmq was built without CURVE support")
        if not os.path.isfile(path):
            raise PublishError(f"publish.curve_secret_key_file: no such file {path!r} (create one with `python -m zmq.auth` / zmq.auth.create_certificates)")
        try:
            public, secret = zmq.auth.load_certificate(path)
        except (OSError, ValueError) as exc:
            raise PublishError(f"publish.curve_secret_key_file: cannot read certificate {path!r}: {exc}") from None
        if not secret:
            raise PublishError(f"publish.curve_secret_key_file: {path!r} holds no secret key (give the '.key_secret' file)")
        keys_dir = self.curve_authorized_keys_dir
        if keys_dir and not os.path.isdir(keys_dir):
            raise PublishError(f"publish.curve_authorized_keys_dir: no such directory {keys_dir!r}")
        return public, secret

    def _start_authenticator(self) -> None:
        from zmq.auth.thread import ThreadAuthenticator

        self._auth = ThreadAuthenticator(self._context, log=logging.getLogger("rtpick.publish.auth"))
        self._auth.start()
        location = self.curve_authorized_keys_dir or zmq.auth.CURVE_ALLOW_ANY
        self._auth.configure_curve(domain="*", location=location)

    def _stop_context(self) -> None:
        if self._auth is not None:
            self._auth.stop()
            self._auth = None
        if self._own_context and self._context is not None:
            self._context.term()
            self._context = None
