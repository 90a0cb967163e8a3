"""The ``ltt serve`` web app: Starlette routes (the page, its static modules, the WebSocket) on uvicorn.

``GET /`` is the serve page (``ltt/widget/static/serve.html``), which loads the widget's own ES
module (``graph.js``, joined in memory by :mod:`ltt.widget.bundle`) and the WebSocket kernel
(``socket_kernel.js``) from ``/static/``;
``/ws`` is one page's connection to its :class:`ltt.serve.session.Session`.

Safe by default: a token is required whenever one is set, and always on a non-loopback bind
(query ``?token=``, the cookie the page gets from its first visit, or ``Authorization: token
...``), compared in constant time; on a loopback bind without a token only loopback host names
are answered (no DNS rebinding), and a WebSocket whose ``Origin`` is another site is refused.
Wrong tokens are rate-limited per client address (:data:`TOKEN_FAILURES` in
:data:`TOKEN_WINDOW_S` seconds, then 429 until the window passes).

Limits (stated at startup): each page's outgoing messages wait in a byte-bounded, coalescing
:class:`ltt.serve.outbox.Outbox`; a page too far behind, or one whose socket takes more than
:data:`SEND_TIMEOUT_S` to accept a message, is closed with code 1013 and its slot freed at once.
The WebSocket is pinged every :data:`PING_S` seconds (no pong in :data:`PING_S`: closed); when
the server is full, a page silent for :data:`IDLE_WHEN_FULL_S` yields its slot (code 1001); an
HTTP client that takes more than :data:`HEADER_TIMEOUT_S` to send its request headers is
disconnected. Every kept trace counts in one byte budget (``--max-memory``).

>>> app = create_app(ServeConfig(models=["gpt2"]))        # doctest: +SKIP
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import json
import secrets
import sys
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from starlette.applications import Starlette
from starlette.requests import HTTPConnection, Request
from starlette.responses import FileResponse, HTMLResponse, PlainTextResponse, Response
from starlette.routing import Route, WebSocketRoute
from starlette.websockets import WebSocket, WebSocketDisconnect

from ltt.checks import is_int
from ltt.serve.budget import TraceBudget, default_max_memory, mib
from ltt.serve.jobs import Worker
from ltt.serve.outbox import CLOSE_BEHIND, Outbox
from ltt.serve.models import ModelCache, ModelRegistry
from ltt.serve.session import Session
from ltt.widget import STATIC, bundle

__all__ = ["ServeConfig", "ServeState", "create_app", "is_loopback"]

TOKEN_FAILURES = 10  # wrong tokens one client address may send per window
TOKEN_WINDOW_S = 60.0
SEND_TIMEOUT_S = 30.0  # a page that takes longer to accept one message is behind
QUEUE_BYTES = 64 << 20  # per page: messages waiting beyond this close it (one bigger message may go)
PING_S = 20.0
IDLE_WHEN_FULL_S = 120.0
HEADER_TIMEOUT_S = 10.0
#: The prompt list when ``--prompts`` gives none.
DEMO_PROMPTS = (
    "When Mary and John went to the store, John gave a drink to",
    "The capital of France is",
    "The Eiffel Tower is located in the city of",
    "def fibonacci(n):",
    "The keys to the cabinet",
)
STATIC_FILES = {"graph.js": "text/javascript", "graph.css": "text/css", "socket_kernel.js": "text/javascript"}
LOOPBACK_NAMES = {"localhost", "127.0.0.1", "::1"}
# The page loads only its own files and talks only to its own server; no other site may frame it.
PAGE_HEADERS = {
    "Cache-Control": "no-store",
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Content-Security-Policy": "default-src 'self'; script-src 'self' 'unsafe-inline'; style-src 'self' 'unsafe-inline'; "
                               "connect-src 'self'; img-src 'self' data:; frame-ancestors 'none'; base-uri 'none'",
}


def is_loopback(host: str) -> bool:
    """Whether binding ``host`` keeps the server on this machine (``localhost``, 127.0.0.0/8,
    ``::1``); any other name or address counts as reachable from elsewhere.

    >>> is_loopback("127.0.0.1"), is_loopback("0.0.0.0"), is_loopback("localhost")
    (True, False, True)
    """
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


@dataclass
class ServeConfig:
    """What ``ltt serve`` was started with (the command-line options)."""

    models: list[str] = field(default_factory=list)
    models_dirs: list[str] = field(default_factory=list)
    prompts: list[str] = field(default_factory=list)
    host: str = "127.0.0.1"
    port: int = 8765
    token: str | None = None
    max_tokens: int = 512
    max_connections: int = 8
    max_models: int = 2
    max_prompts: int = 1000
    embedded: bool = True
    max_memory: int | None = None  # bytes of kept traces, all pages together; None: half of available
    queue_bytes: int = QUEUE_BYTES

    def validate(self) -> None:
        """Raise ValueError naming the option and value that cannot be served."""
        for name in ("max_tokens", "max_connections", "max_models", "max_prompts"):
            v = getattr(self, name)
            if not is_int(v) or v < 1:
                raise ValueError(f"--{name.replace('_', '-')} must be a positive integer, got {v!r}")
        if not is_int(self.port) or not 0 <= self.port <= 65535:
            raise ValueError(f"--port must be in [0, 65535], got {self.port!r}")
        if not self.host:
            raise ValueError("--host is empty: give an address to bind, e.g. 127.0.0.1")
        if self.max_memory is not None and (isinstance(self.max_memory, bool) or not isinstance(self.max_memory, int)
                                            or self.max_memory < 1 << 20):
            raise ValueError(f"--max-memory must be at least 1 MiB, got {self.max_memory!r} bytes")
        if self.token is not None and len(self.token) < 8:
            raise ValueError(f"--token must be at least 8 characters long, got {len(self.token)}")


class ServeState:
    """Everything the connections share: the allowed models, the model cache, the one worker,
    the prompt list, the open sessions, the token."""

    def __init__(self, config: ServeConfig):
        config.validate()
        self.config = config
        self.registry = ModelRegistry(config.models, config.models_dirs, embedded=config.embedded)
        self.cache = ModelCache(self.registry, config.max_models, config.max_tokens)
        self.loopback = is_loopback(config.host)
        self.token = config.token
        if self.token is None and not self.loopback:
            self.token = secrets.token_urlsafe(24)
        self.max_chars = max(1000, 16 * config.max_tokens)
        self.prompts: list[str] = []
        for p in config.prompts or DEMO_PROMPTS:
            if p not in self.prompts:
                self.prompts.append(p)
        self.sessions: set[Session] = set()
        self.budget = TraceBudget(config.max_memory or default_max_memory())
        self._failures: dict[str, deque] = {}  # client address -> times of its wrong tokens
        self._fail_lock = threading.Lock()
        self.worker = Worker()

    def limits(self) -> dict[str, int]:
        c = self.config
        return {"max_tokens": c.max_tokens, "max_chars": self.max_chars, "max_connections": c.max_connections,
                "max_models": c.max_models, "max_prompts": c.max_prompts, "max_memory": self.budget.max_bytes}

    def add_prompt(self, prompt: str) -> None:
        """Add a prompt to the shared list (bounded) and tell every page."""
        if prompt in self.prompts:
            return
        if len(self.prompts) >= self.config.max_prompts:
            raise ValueError(f"the prompt list is full ({self.config.max_prompts} prompts, --max-prompts)")
        self.prompts.append(prompt)
        delta = {"method": "prompts", "start": len(self.prompts) - 1, "add": [prompt]}
        for s in list(self.sessions):  # the change only, not the whole list
            s.send(delta)

    def cookie_name(self) -> str:
        return f"ltt_token_{self.config.port}"

    def refusal(self, conn: HTTPConnection) -> str | None:
        """Why a request or WebSocket is refused, or None when it may go on."""
        refused = self.refusal_status(conn)
        return None if refused is None else refused[1]

    def refusal_status(self, conn: HTTPConnection) -> tuple[int, str] | None:
        """(HTTP status, why) of a refused request or WebSocket, or None when it may go on."""
        host = (conn.headers.get("host") or "").rsplit(":", 1)[0].strip("[]").lower()
        if self.token is None:
            if host not in LOOPBACK_NAMES and host != self.config.host.lower():
                return 403, f"host {host!r} is not a loopback name (this server only answers on loopback)"
        else:
            client = conn.client.host if conn.client else "?"
            wait = self._blocked_for(client)
            if wait > 0:
                return 429, f"too many wrong tokens from {client}: try again in {wait:.0f} s"
            auth = conn.headers.get("authorization", "")
            given = [conn.query_params.get("token"), conn.cookies.get(self.cookie_name()),
                     auth.split(" ", 1)[1].strip() if " " in auth else None]
            want = self.token.encode()
            # every candidate compared in constant time, none skipped when an earlier one matches
            ok = [g is not None and secrets.compare_digest(g.encode(), want) for g in given]
            if not any(ok):
                if any(g is not None for g in given):
                    self._failed(client)
                return 403, "a valid token is required (open the URL ltt serve printed, with its ?token=...)"
        origin = conn.headers.get("origin")
        if conn.scope["type"] == "websocket" and origin is not None:
            if urlsplit(origin).netloc.lower() != (conn.headers.get("host") or "").lower():
                return 403, f"origin {origin!r} is not this server's page"
        return None

    def _failed(self, client: str) -> None:
        now = time.monotonic()
        with self._fail_lock:
            if len(self._failures) > 10_000:  # bounded: forget addresses whose window passed
                for k in [k for k, q in self._failures.items() if not q or now - q[-1] > TOKEN_WINDOW_S]:
                    del self._failures[k]
            q = self._failures.setdefault(client, deque(maxlen=TOKEN_FAILURES))
            q.append(now)

    def _blocked_for(self, client: str) -> float:
        """Seconds ``client`` must still wait (it sent TOKEN_FAILURES wrong tokens in the window)."""
        with self._fail_lock:
            q = self._failures.get(client)
            if q is None or len(q) < TOKEN_FAILURES:
                return 0.0
            return max(0.0, TOKEN_WINDOW_S - (time.monotonic() - q[0]))

    def make_room(self) -> bool:
        """When full, ask the longest-silent page (silent over IDLE_WHEN_FULL_S) to leave; True
        when one was asked."""
        now = time.monotonic()
        idle = [s for s in self.sessions if now - s.last_seen > IDLE_WHEN_FULL_S and getattr(s, "kick", None)]
        if not idle:
            return False
        oldest = min(idle, key=lambda s: s.last_seen)
        oldest.kick(1001, f"idle for {now - oldest.last_seen:.0f} s while the server was full")
        return True


def create_app(config: ServeConfig) -> Starlette:
    """The Starlette app serving ``config`` (models, limits, token); ``app.state.serve`` holds
    its :class:`ServeState`.

    >>> app = create_app(ServeConfig(models=["/path/to/model"], port=8765))   # doctest: +SKIP
    """
    state = ServeState(config)

    def refused(request: Request) -> Response | None:
        no = state.refusal_status(request)
        if no is None:
            return None
        return PlainTextResponse(f"{no[0]} refused: {no[1]}\n", status_code=no[0])

    async def page(request: Request) -> Response:
        no = refused(request)
        if no is not None:
            return no
        resp = HTMLResponse((STATIC / "serve.html").read_text(encoding="utf-8"), headers=PAGE_HEADERS)
        if state.token is not None:
            resp.set_cookie(state.cookie_name(), state.token, httponly=True, samesite="strict")
        return resp

    async def static(request: Request) -> Response:
        no = refused(request)
        if no is not None:
            return no
        name = request.path_params["name"]
        if name not in STATIC_FILES:  # a fixed list: no path from the request reaches the disk
            return PlainTextResponse("404 not found\n", status_code=404)
        if name == "graph.js":  # the page's modules, joined in memory (ltt/widget/bundle.py)
            return Response(bundle.script(), media_type=STATIC_FILES[name], headers={"Cache-Control": "no-store"})
        return FileResponse(STATIC / name, media_type=STATIC_FILES[name], headers={"Cache-Control": "no-store"})

    async def favicon(request: Request) -> Response:
        no = refused(request)
        if no is not None:
            return no
        return Response(FAVICON, media_type="image/svg+xml", headers={"Cache-Control": "max-age=86400"})

    async def socket(ws: WebSocket) -> None:
        no = state.refusal_status(ws)
        if no is not None:
            await ws.close(code=1008, reason=no[1][:120])
            return
        await ws.accept()
        if len(state.sessions) >= config.max_connections and state.make_room():
            await asyncio.sleep(0.05)  # the idle page's loop frees its slot
        if len(state.sessions) >= config.max_connections:
            await ws.send_text(json.dumps({"method": "error", "message":
                               f"this server already has {config.max_connections} connections (--max-connections)"}))
            await ws.close(code=1013)
            return
        loop = asyncio.get_running_loop()
        outbox = Outbox(config.queue_bytes, loop)
        stop = asyncio.Event()
        ending: list = []  # (code, reason) the server closes with

        def kick(code: int, reason: str) -> None:  # from the loop: end this page's connection
            if not ending:
                ending.append((code, reason))
            stop.set()

        session = Session(state, outbox.put)
        session.kick = kick
        state.sessions.add(session)
        pump = asyncio.create_task(_pump(ws, outbox, kick))
        stopper = asyncio.create_task(stop.wait())
        try:
            session.send(session.hello())
            while True:
                recv = asyncio.ensure_future(ws.receive())
                done, _ = await asyncio.wait({recv, stopper}, return_when=asyncio.FIRST_COMPLETED)
                if recv not in done:
                    recv.cancel()
                    break
                msg = recv.result()
                if msg["type"] == "websocket.disconnect":
                    break
                session.handle(msg.get("text") if msg.get("text") is not None else msg.get("bytes"))
        except WebSocketDisconnect:
            pass
        finally:
            state.sessions.discard(session)  # the slot is free now, whatever the socket does
            session.close()
            outbox.clear()
            pump.cancel()
            stopper.cancel()
            if ending:
                with contextlib.suppress(Exception):  # a page that reads nothing cannot take the close
                    await asyncio.wait_for(ws.close(code=ending[0][0], reason=ending[0][1][:120]), 2.0)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette):
        yield
        state.worker.stop()

    app = Starlette(routes=[
        Route("/", page),
        Route("/static/{name}", static),
        Route("/favicon.ico", favicon),
        WebSocketRoute("/ws", socket),
    ], lifespan=lifespan)
    app.state.serve = state
    return app


# The page's icon: a small graph of three nodes (served at /favicon.ico, as browsers ask).
FAVICON = (b'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 16 16"><rect width="16" height="16" rx="3" '
           b'fill="#1f4e79"/><path d="M4 12L8 4L12 12M4 12H12" stroke="#fff" stroke-width="1.5" fill="none"/>'
           b'<circle cx="4" cy="12" r="2" fill="#f5b041"/><circle cx="8" cy="4" r="2" fill="#f5b041"/>'
           b'<circle cx="12" cy="12" r="2" fill="#f5b041"/></svg>')


async def _pump(ws: WebSocket, outbox: Outbox, kick) -> None:
    """Send the page's messages in order; a page too far behind (the outbox overflowed) or too
    slow to take one message (SEND_TIMEOUT_S) is closed with CLOSE_BEHIND."""
    while True:
        text = await outbox.get()
        if text is None:
            kick(CLOSE_BEHIND, outbox.overflowed)
            return
        try:
            await asyncio.wait_for(ws.send_text(text), SEND_TIMEOUT_S)
        except asyncio.TimeoutError:
            kick(CLOSE_BEHIND, f"this page took over {SEND_TIMEOUT_S:.0f} s to take one message")
            return
        except Exception:  # the page closed mid-send
            kick(1000, "closed")
            return


def startup_lines(state: ServeState, port: int) -> list[str]:
    """What ``ltt serve`` prints once it listens: the URL to open and the limits.

    >>> startup_lines(app.state.serve, 8765)[0]               # doctest: +SKIP
    'ltt serve: open http://127.0.0.1:8765/'
    """
    c = state.config
    host = c.host
    shown = "127.0.0.1" if host in ("0.0.0.0", "::", "") else host
    if ":" in shown:
        shown = f"[{shown}]"
    url = f"http://{shown}:{port}/" + (f"?token={state.token}" if state.token else "")
    lines = [f"ltt serve: open {url}"]
    if not state.loopback:
        lines.append(f"  listening on {host}:{port}, reachable from other machines: the token is required")
    lines.append("  models: " + ", ".join(e.id for e in state.registry.entries))
    lines.extend(f"  not offered: {why}" for why in state.registry.skipped)
    lines.append(
        f"  limits: prompts up to {c.max_tokens} tokens ({state.max_chars} characters), "
        f"{c.max_connections} connections, {c.max_models} models loaded at once (least recently used "
        "evicted); only the models above can be loaded")
    lines.append(
        f"  memory: kept traces of all pages share {mib(state.budget.max_bytes)} (--max-memory; least recently "
        f"used dropped), {mib(c.queue_bytes)} of waiting messages a page; a page behind or silent is closed "
        f"(code {CLOSE_BEHIND} after {SEND_TIMEOUT_S:.0f} s on one message; pings every {PING_S:.0f} s; "
        f"idle {IDLE_WHEN_FULL_S:.0f} s yields a full server's slot)")
    lines.append("  Ctrl-C stops the server")
    return lines


def run(config: ServeConfig) -> int:
    """Serve until Ctrl-C; 0 on a clean stop. Prints the URL once the socket is bound.

    >>> run(ServeConfig(models=["/path/to/model"], port=8765))   # doctest: +SKIP
    0
    """
    import uvicorn

    app = create_app(config)
    state: ServeState = app.state.serve

    class _Server(uvicorn.Server):
        async def startup(self, sockets=None):  # print the URL only once the port is bound
            await super().startup(sockets=sockets)
            if self.started:
                port = config.port
                for server in getattr(self, "servers", []):
                    for sock in server.sockets or []:
                        port = sock.getsockname()[1]
                print("\n".join(startup_lines(state, port)), flush=True)

    from uvicorn.config import WS_PROTOCOLS

    ws = "websockets-sansio" if "websockets-sansio" in WS_PROTOCOLS else "websockets"
    server = _Server(uvicorn.Config(
        app, host=config.host, port=config.port, log_level="warning", ws=ws, http=header_timeout_protocol(),
        ws_max_size=1 << 20, ws_ping_interval=PING_S, ws_ping_timeout=PING_S, timeout_keep_alive=5,
        timeout_graceful_shutdown=3, lifespan="on"))
    try:
        server.run()
    except KeyboardInterrupt:  # uvicorn re-raises the captured Ctrl-C once it has shut down
        pass
    finally:
        state.worker.stop()
    if not server.started:
        print(f"ltt: error: could not serve on {config.host}:{config.port}", file=sys.stderr)
        return 1
    print("ltt serve: stopped", flush=True)
    return 0


def header_timeout_protocol():
    """uvicorn's h11 protocol with a deadline on request headers: a client that has not sent a
    whole request head HEADER_TIMEOUT_S after connecting (or after its last response) is
    disconnected (slow-header clients hold no socket for long)."""
    from uvicorn.protocols.http.h11_impl import H11Protocol

    class HeaderTimeoutH11(H11Protocol):
        _head_timer = None

        def _arm(self) -> None:
            self._disarm()
            self._head_timer = self.loop.call_later(HEADER_TIMEOUT_S, self._head_timeout)

        def _disarm(self) -> None:
            if self._head_timer is not None:
                self._head_timer.cancel()
                self._head_timer = None

        def _head_timeout(self) -> None:
            self._head_timer = None
            if self.cycle is None or self.cycle.response_complete:
                self.transport.close()

        def connection_made(self, transport) -> None:
            super().connection_made(transport)
            self._arm()

        def connection_lost(self, exc) -> None:
            self._disarm()
            super().connection_lost(exc)

        def handle_events(self) -> None:
            cycle = self.cycle
            super().handle_events()
            if self.cycle is not cycle:  # a request head arrived
                self._disarm()

        def handle_websocket_upgrade(self, event) -> None:
            self._disarm()
            super().handle_websocket_upgrade(event)

        def on_response_complete(self) -> None:
            super().on_response_complete()
            if not self.transport.is_closing():
                self._arm()

    return HeaderTimeoutH11
