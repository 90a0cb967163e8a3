"""``ltt serve`` under load and attack, on loopback only (127.0.0.1, never any other address).

Starts the real ``ltt serve`` twice on free loopback ports (one without a token, one with
``--token`` so the token path is exercised without binding anything but 127.0.0.1) and drives:

* ``tabs``: pages that each trace their own prompt; each must get its own graph back (no job
  of one tab reaches another);
* ``flood``: every tab sends a burst of re-prunes, malformed messages and prompt additions;
  messages per second the server answers;
* ``re-prune under load``: one tab's threshold change -> its graph, p50/p99, while the others flood;
* ``silent``: raw sockets that finish the WebSocket handshake and then never read, while the
  prompt list grows (broadcasts); the server's RSS stays bounded and their slots come back;
* ``churn``: pages that connect, queue a trace and disconnect at once;
* ``frames``: an oversized frame (closed 1009), binary and non-JSON frames (an error each);
* ``headers``: non-loopback Host (403), cross-site Origin (refused), slow request headers
  (disconnected after the header deadline);
* ``tokens``: wrong tokens from one address: 403 until the rate limit, then 429.

Every loop is bounded in count and time. Prints one line per check and the figures.

    python benchmarks/bench_serve_load.py                       # the embedded SmolLM2-135M
    python benchmarks/bench_serve_load.py --model DIR --tabs 6 --flood 100
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import socket
import statistics
import subprocess
import sys
import time
import urllib.error
import urllib.request

from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.sync.client import connect

HOST = "127.0.0.1"  # the only address this benchmark ever contacts
PROMPTS = ["The capital of France is", "When Mary and John went to the store, John gave a drink to",
           "The keys to the cabinet", "def fibonacci(n):", "The Eiffel Tower is in", "One, two, three,",
           "The cat sat on the", "In 1969 the first man on the moon was"]
RESULTS: list[tuple[str, bool, str]] = []


def check(name: str, ok: bool, detail: str = "") -> None:
    RESULTS.append((name, bool(ok), detail))
    print(f"  {'ok  ' if ok else 'FAIL'} {name}{': ' + detail if detail else ''}", flush=True)


def _port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def rss(pid: int) -> tuple[int, int]:
    """(VmRSS, VmHWM) of a process in bytes."""
    out = {}
    with open(f"/proc/{pid}/status") as fh:
        for line in fh:
            if line.startswith(("VmRSS:", "VmHWM:")):
                out[line.split(":")[0]] = int(line.split()[1]) * 1024
    return out["VmRSS"], out["VmHWM"]


class Server:
    def __init__(self, args: list[str]):
        self.port = _port()
        exe = os.path.join(os.path.dirname(sys.executable), "ltt")
        self.proc = subprocess.Popen([exe, "serve", "--host", HOST, "--port", str(self.port), *args],
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                     env=dict(os.environ, LTT_QUIET="1"))
        self.lines = []
        deadline = time.monotonic() + 120
        for line in self.proc.stdout:
            self.lines.append(line.rstrip())
            if line.startswith("  Ctrl-C") or time.monotonic() > deadline:
                break
        self.url = f"ws://{HOST}:{self.port}/ws"

    def stop(self) -> int:
        self.proc.send_signal(2)
        try:
            return self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return -9


def until(ws, pred, timeout=300.0):
    """Messages until pred(msg); returns (msg, seconds)."""
    t0 = time.perf_counter()
    while True:
        left = timeout - (time.perf_counter() - t0)
        if left <= 0:
            raise TimeoutError("no answer")
        msg = json.loads(ws.recv(timeout=left))
        if pred(msg):
            return msg, time.perf_counter() - t0


def job_done(msg):
    return msg["method"] == "job" and msg["job"]["state"] in ("done", "failed")


def silent_socket(port: int) -> socket.socket:
    """A WebSocket handshake on a raw socket that then never reads (a small receive buffer)."""
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    s.connect((HOST, port))
    key = base64.b64encode(os.urandom(16)).decode()
    s.sendall((f"GET /ws HTTP/1.1\r\nHost: {HOST}:{port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
               f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n").encode())
    s.settimeout(10)
    s.recv(1024)  # the 101 answer (and maybe the start of hello); never read again
    return s


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=None, help="a model directory (default: the embedded one)")
    ap.add_argument("--tabs", type=int, default=6)
    ap.add_argument("--flood", type=int, default=60, help="messages each tab sends in the flood")
    ap.add_argument("--silent", type=int, default=4)
    ap.add_argument("--broadcasts", type=int, default=300, help="prompts added while silent pages sit")
    ap.add_argument("--max-memory", default="256M")
    args = ap.parse_args()
    model_args = ["--model", args.model] if args.model else []
    cap = args.tabs + args.silent + 2
    srv = Server(model_args + ["--max-connections", str(cap), "--max-memory", args.max_memory])
    print("\n".join(srv.lines))
    figures = {}
    try:
        base_rss = rss(srv.proc.pid)[0]
        tabs = [connect(srv.url, max_size=None, max_queue=None, ping_interval=None, open_timeout=30) for _ in range(args.tabs)]
        hello = [json.loads(t.recv(timeout=30)) for t in tabs][0]
        model = hello["models"][0]["id"]
        # -- tabs: each its own prompt, queued at once ------------------------------------------
        for i, t in enumerate(tabs):
            t.send(json.dumps({"method": "open", "model": model, "prompt": PROMPTS[i % len(PROMPTS)]}))
        own = 0
        for i, t in enumerate(tabs):
            st, _ = until(t, lambda m: m["method"] == "state")
            own += st["views"]["main"]["prompts"] == [PROMPTS[i % len(PROMPTS)]]
            until(t, job_done)
        check("each tab gets its own graph", own == len(tabs), f"{own}/{len(tabs)}")
        # -- flood, with one tab measuring re-prunes -----------------------------------------------
        t0 = time.perf_counter()
        sent = 0
        for t in tabs[1:]:
            for k in range(args.flood):
                kind = k % 4
                if kind == 0:
                    t.send(json.dumps({"method": "update", "state": {"threshold": 0.02 + 0.001 * (k % 50)}}))
                elif kind == 1:
                    t.send("{not json")
                elif kind == 2:
                    t.send(json.dumps({"method": "add_prompt", "prompt": f"flood prompt {sent}"}))
                else:
                    t.send(json.dumps({"method": "explode"}))
                sent += 1
        lat = []
        for k in range(20):
            tabs[0].send(json.dumps({"method": "update", "state": {"threshold": 0.03 + 0.002 * k}}))
            _, took = until(tabs[0], lambda m: m["method"] == "update" and "graph" in m.get("state", {}))
            until(tabs[0], job_done)
            lat.append(took)
        # drain the flood tabs until their queues are empty (their last update job done)
        for t in tabs[1:]:
            t.send(json.dumps({"method": "update", "state": {"threshold": 0.05}}))
            until(t, lambda m: m["method"] == "update" and m.get("state", {}).get("threshold") == 0.05)
            until(t, job_done)
        took = time.perf_counter() - t0
        figures["messages/s"] = (sent + 40) / took
        lat.sort()
        figures["re-prune p50"] = statistics.median(lat)
        figures["re-prune p99"] = lat[min(len(lat) - 1, int(0.99 * len(lat)))]
        check("flood answered", True, f"{sent} messages from {len(tabs) - 1} tabs in {took:.1f} s")
        # -- silent pages while the list grows ------------------------------------------------------
        silent = [silent_socket(srv.port) for _ in range(args.silent)]
        opened = time.monotonic()
        time.sleep(1)
        before = rss(srv.proc.pid)[0]
        for k in range(args.broadcasts):
            tabs[0].send(json.dumps({"method": "add_prompt", "prompt": f"broadcast {k} " + "x" * 4000}))
        until(tabs[0], lambda m: m["method"] == "prompts" and any(p.startswith(f"broadcast {args.broadcasts - 1} ")
                                                                  for p in m.get("add", [])), 60)
        during = rss(srv.proc.pid)[0]
        figures["RSS growth with silent pages"] = during - before
        check("silent pages cost bounded memory", during - before < 64 << 20,
              f"RSS {before >> 20} -> {during >> 20} MiB after {args.broadcasts} broadcasts to {args.silent} silent pages")
        # the silent pages answer no ping (every 20 s, 20 s to answer) and take no message: the
        # server closes them (keepalive, or 1013 when a send waits over 30 s) and frees their
        # slots, while their sockets are still open on this side
        time.sleep(max(0.0, opened + 2 * 20 + 8 - time.monotonic()))
        extra = [connect(srv.url, open_timeout=30) for _ in range(cap - len(tabs))]
        got = [json.loads(c.recv(timeout=30))["method"] for c in extra]
        check("silent pages' slots freed by the server", got.count("hello") == len(extra),
              f"{got.count('hello')}/{len(extra)} new pages admitted with {len(silent)} silent sockets still open")
        for c in extra:
            c.close()
        for s in silent:
            s.close()
        # -- churn: connect, queue, leave ------------------------------------------------------------
        for k in range(20):
            with connect(srv.url, open_timeout=30) as c:
                c.recv(timeout=30)
                c.send(json.dumps({"method": "open", "model": model, "prompt": PROMPTS[k % len(PROMPTS)]}))
        time.sleep(2)
        extra = [connect(srv.url, open_timeout=30) for _ in range(cap - len(tabs))]
        got = [json.loads(c.recv(timeout=30))["method"] for c in extra]
        check("slots come back after churned pages leave", got.count("hello") == len(extra),
              f"{got.count('hello')}/{len(extra)} new pages admitted")
        figures["connections held"] = len(tabs) + got.count("hello")
        for c in extra:
            c.close()
        # -- frames -----------------------------------------------------------------------------------
        with connect(srv.url, max_size=None, open_timeout=30) as c:
            c.recv(timeout=30)
            c.send(b"\x00\x01")
            m, _ = until(c, lambda m: m["method"] == "error", 30)
            check("binary frame refused with a reason", "binary" in m["message"])
            c.send("{" * 1000)
            m, _ = until(c, lambda m: m["method"] == "error", 30)
            check("malformed JSON refused with a reason", "not JSON" in m["message"])
            c.send("x" * (2 << 20))
            try:
                while True:
                    c.recv(timeout=30)
            except ConnectionClosed as exc:
                check("oversized frame closes that page only", exc.rcvd is not None and exc.rcvd.code == 1009,
                      f"code {exc.rcvd.code if exc.rcvd else None}")
        # -- headers ----------------------------------------------------------------------------------
        req = urllib.request.Request(f"http://{HOST}:{srv.port}/", headers={"Host": "rebound.example"})
        try:
            urllib.request.urlopen(req, timeout=10)
            check("non-loopback Host refused", False)
        except urllib.error.HTTPError as exc:
            check("non-loopback Host refused", exc.code == 403, f"HTTP {exc.code}")
        try:
            connect(srv.url, origin="http://evil.example", open_timeout=10).close()
            check("cross-site Origin refused", False)
        except InvalidStatus as exc:
            check("cross-site Origin refused", exc.response.status_code == 403)
        s = socket.create_connection((HOST, srv.port))
        s.sendall(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n")
        t0 = time.monotonic()
        s.settimeout(30)
        try:
            closed = s.recv(100) == b""
        except (socket.timeout, ConnectionError):
            closed = False
        figures["slow header cut after"] = time.monotonic() - t0
        check("slow request headers cut", closed and figures["slow header cut after"] < 20,
              f"after {figures['slow header cut after']:.1f} s")
        s.close()
        ok_alive = tabs[0]
        ok_alive.send(json.dumps({"method": "update", "state": {"threshold": 0.04}}))
        until(ok_alive, job_done, 60)
        check("server alive and first tab still served", srv.proc.poll() is None)
        figures["peak RSS"] = rss(srv.proc.pid)[1]
        figures["RSS at start"] = base_rss
        for t in tabs:
            t.close()
    finally:
        rc = srv.stop()
    check("clean stop", rc == 0, f"exit {rc}")
    # -- tokens (a loopback server with --token: the token path without another address) ------------
    tok = Server(model_args + ["--token", "the-right-token-1234"])
    try:
        codes = []
        for k in range(15):
            try:
                urllib.request.urlopen(f"http://{HOST}:{tok.port}/?token=guess{k:04d}xx", timeout=10)
                codes.append(200)
            except urllib.error.HTTPError as exc:
                codes.append(exc.code)
        try:
            urllib.request.urlopen(f"http://{HOST}:{tok.port}/?token=the-right-token-1234", timeout=10)
            after = 200
        except urllib.error.HTTPError as exc:
            after = exc.code
        check("token guesses rate-limited", codes[:10] == [403] * 10 and set(codes[10:]) == {429} and after == 429,
              f"codes {codes}, then the right token: {after}")
    finally:
        tok.stop()
    print("figures:")
    for k, v in figures.items():
        if "RSS" in k:
            print(f"  {k}: {v / 2**20:.0f} MiB")
        elif "p50" in k or "p99" in k or "after" in k:
            print(f"  {k}: {v * 1000:.0f} ms" if v < 10 else f"  {k}: {v:.1f} s")
        else:
            print(f"  {k}: {v:.0f}")
    failed = [n for n, ok, _ in RESULTS if not ok]
    print(f"{len(RESULTS)} cases, {len(failed)} failing" + (f": {', '.join(failed)}" if failed else ""))
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
