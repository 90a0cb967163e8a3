"""The ``ltt serve`` web app: Starlette routes (the page, its static modules, the WebSocket) on uvicorn.

``GET /`` is the serve page (``ltt/widget/static/serve.html``), which loads the widget's own ES
module (``graph.js``) and the WebSocket kernel (``socket_kernel.js``) from ``/static/``;
``/ws`` is one page's connection to its :class:`ltt.serve.session.Session`.

Safe by default: a token is required whenever one is set, and always on a non-loopback bind
(query ``?token=``, the cookie the page gets from its first visit, or ``Authorization: token
...``), compared in constant time; on a loopback bind without a token only loopback host names
are answered (no DNS rebinding), and a WebSocket whose ``Origin`` is another site is refused.

>>> app = create_app(ServeConfig(models=["gpt2"]))        # doctest: +SKIP
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import json
import secrets
import sys
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from starlette.applications import Starlette
from starlette.requests import HTTPConnection, Request
from starlette.responses import FileResponse, HTMLResponse, PlainTextResponse, Response
from starlette.routing import Route, WebSocketRoute
from starlette.websockets import WebSocket, WebSocketDisconnect

from ltt.checks import is_int
from ltt.serve.jobs import Worker
from ltt.serve.models import ModelCache, ModelRegistry
from ltt.serve.session import Session
from ltt.widget import STATIC

__all__ = ["ServeConfig", "ServeState", "create_app", "is_loopback"]

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
        for p in config.prompts:
            if p not in self.prompts:
                self.prompts.append(p)
        self.sessions: set[Session] = set()
        self.worker = Worker()

    def limits(self) -> dict[str, int]:
        c = self.config
        return {"max_tokens": c.max_tokens, "max_chars": self.max_chars, "max_connections": c.max_connections,
                "max_models": c.max_models, "max_prompts": c.max_prompts}

    def add_prompt(self, prompt: str) -> None:
        """Add a prompt to the shared list (bounded) and tell every page."""
        if prompt in self.prompts:
            return
        if len(self.prompts) >= self.config.max_prompts:
            raise ValueError(f"the prompt list is full ({self.config.max_prompts} prompts, --max-prompts)")
        self.prompts.append(prompt)
        for s in list(self.sessions):
            s.send({"method": "prompts", "prompts": list(self.prompts)})

    def cookie_name(self) -> str:
        return f"ltt_token_{self.config.port}"

    def refusal(self, conn: HTTPConnection) -> str | None:
        """Why a request or WebSocket is refused, or None when it may go on."""
        host = (conn.headers.get("host") or "").rsplit(":", 1)[0].strip("[]").lower()
        if self.token is None:
            if host not in LOOPBACK_NAMES and host != self.config.host.lower():
                return f"host {host!r} is not a loopback name (this server only answers on loopback)"
        else:
            auth = conn.headers.get("authorization", "")
            given = [conn.query_params.get("token"), conn.cookies.get(self.cookie_name()),
                     auth.split(" ", 1)[1].strip() if " " in auth else None]
            if not any(g is not None and secrets.compare_digest(g.encode(), self.token.encode()) for g in given):
                return "a valid token is required (open the URL ltt serve printed, with its ?token=...)"
        origin = conn.headers.get("origin")
        if conn.scope["type"] == "websocket" and origin is not None:
            if urlsplit(origin).netloc.lower() != (conn.headers.get("host") or "").lower():
                return f"origin {origin!r} is not this server's page"
        return None


def create_app(config: ServeConfig) -> Starlette:
    """The Starlette app serving ``config`` (models, limits, token); ``app.state.serve`` holds
    its :class:`ServeState`.

    >>> app = create_app(ServeConfig(models=["/path/to/model"], port=8765))   # doctest: +SKIP
    """
    state = ServeState(config)

    def refused(request: Request) -> Response | None:
        why = state.refusal(request)
        return PlainTextResponse(f"403 refused: {why}\n", status_code=403) if why else None

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
        return FileResponse(STATIC / name, media_type=STATIC_FILES[name], headers={"Cache-Control": "no-store"})

    async def socket(ws: WebSocket) -> None:
        why = state.refusal(ws)
        if why is not None:
            await ws.close(code=1008, reason=why[:120])
            return
        await ws.accept()
        if len(state.sessions) >= config.max_connections:
            await ws.send_text(json.dumps({"method": "error", "message":
                               f"this server already has {config.max_connections} connections (--max-connections)"}))
            await ws.close(code=1013)
            return
        loop = asyncio.get_running_loop()
        outbox: asyncio.Queue = asyncio.Queue()

        def send(msg: dict) -> None:  # from any thread; a big graph is encoded in the worker, not the loop
            text = encode(msg)
            with contextlib.suppress(RuntimeError):  # the loop is closed: the page is gone
                loop.call_soon_threadsafe(outbox.put_nowait, text)

        session = Session(state, send)
        state.sessions.add(session)
        pump = asyncio.create_task(_pump(ws, outbox))
        try:
            send(session.hello())
            while True:
                msg = await ws.receive()
                if msg["type"] == "websocket.disconnect":
                    break
                session.handle(msg.get("text") if msg.get("text") is not None else msg.get("bytes"))
        except WebSocketDisconnect:
            pass
        finally:
            state.sessions.discard(session)
            session.close()
            pump.cancel()

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette):
        yield
        state.worker.stop()

    app = Starlette(routes=[
        Route("/", page),
        Route("/static/{name}", static),
        WebSocketRoute("/ws", socket),
    ], lifespan=lifespan)
    app.state.serve = state
    return app


def encode(msg: dict) -> str:
    """A message as JSON text; one that cannot be encoded (NaN, a foreign type) becomes an error
    message saying so.

    >>> encode({"method": "error", "message": "x"})
    '{"method": "error", "message": "x"}'
    """
    try:
        return json.dumps(msg, allow_nan=False)
    except (TypeError, ValueError) as exc:
        return json.dumps({"method": "error", "message": f"the server could not encode its answer: {exc}"})


async def _pump(ws: WebSocket, outbox: asyncio.Queue) -> None:
    """Send the session's messages in order."""
    while True:
        text = await outbox.get()
        try:
            await ws.send_text(text)
        except Exception:  # the page closed mid-send
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
    lines.append(
        f"  limits: prompts up to {c.max_tokens} tokens ({state.max_chars} characters), "
        f"{c.max_connections} connections, {c.max_models} models loaded at once (least recently used "
        "evicted); only the models above can be loaded")
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
        app, host=config.host, port=config.port, log_level="warning", ws=ws,
        ws_max_size=1 << 20, timeout_graceful_shutdown=3, lifespan="on"))
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
