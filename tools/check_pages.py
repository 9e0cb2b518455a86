"""Open every page of the built book in headless Chromium and fail on what a reader would see broken.

Usage (from the repository root, after ``jupyter-book build . -W --keep-going``)::

    python tools/check_pages.py                      # check every page of _build/html
    python tools/check_pages.py --screenshot shots/  # ... and save a PNG of each page

A page fails when it has

* a missing image: an ``<img>`` that did not load (``naturalWidth == 0``);
* unrendered maths: ``$$`` or ``\\begin{`` left in a text node outside code, a ``.math`` element that
  MathJax did not typeset, or a MathJax error (``mjx-merror``);
* a console error: ``console.error``, an uncaught exception, or a resource that failed to load;
* an Open-in-Colab badge whose link differs from the page's Colab launch button (or no launch button).

How it works, with Python's standard library and Debian's ``chromium`` only: the pages are served from
127.0.0.1 by :mod:`http.server`; Chromium runs headless with networking locked down and is driven through the
DevTools protocol over a minimal WebSocket client written below. The book loads MathJax 3 from its CDN in a
reader's browser; this machine is offline, so the server hands out a local copy of MathJax 3 in its place
(found with ``--mathjax``, ``$GLARE_MATHJAX_DIR`` or the cache, else fetched once with
``npm pack mathjax@3.2.2``). Likewise, the chapters' Open-in-Colab badge is an absolute URL (a relative one is
broken in Colab); the server hands out the same image, ``book/_static/colab-badge.svg``, in its place.

Install Chromium with ``apt-get install -y chromium`` (Debian). Exit code 0 when every page passes, 1
otherwise, 2 on a setup problem (no build, no Chromium, no MathJax).
"""

from __future__ import annotations

import argparse
import base64
import functools
import http.server
import json
import os
import re
import shutil
import socket
import struct
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
import urllib.parse
from dataclasses import dataclass, field
from pathlib import Path

MATHJAX_VERSION = "3.2.2"
#: The MathJax URL prefix in the built pages (Sphinx's default ``mathjax_path``) and its local stand-in.
MATHJAX_CDN = re.compile(r"https://cdn\.jsdelivr\.net/npm/mathjax@3[^/]*/es5/")
LOCAL_MATHJAX = "/__mathjax__/"
#: The chapters' Open-in-Colab badge image (``tools/book_toc.py``'s ``COLAB_BADGE_IMAGE``) and its local copy.
COLAB_BADGE = "https://colab.research.google.com/assets/colab-badge.svg"
LOCAL_COLAB_BADGE = "/__colab_badge__.svg"
COLAB_BADGE_FILE = Path(__file__).resolve().parent.parent / "book" / "_static" / "colab-badge.svg"
CHROMIUM_FLAGS = [
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-extensions",
    "--disable-default-apps",
    "--mute-audio",
    "--hide-scrollbars",
]


class SetupError(RuntimeError):
    """Something needed to run the check is missing (exit code 2)."""


# ============================================================================================== MathJax
def find_mathjax(explicit: str | None) -> Path | None:
    """The folder with MathJax 3's ``tex-mml-chtml.js`` (its ``es5`` folder); fetched with npm if needed."""
    cache = Path(os.environ.get("GLARE_CACHE_DIR", Path.home() / ".cache" / "glare")) / "mathjax"
    if explicit:
        candidates = [explicit]
    else:
        candidates = [
            os.environ.get("GLARE_MATHJAX_DIR"),
            str(cache / "package" / "es5"),
            "node_modules/mathjax/es5",
        ]
    for cand in candidates:
        if cand:
            path = Path(cand)
            if (path / "es5" / "tex-mml-chtml.js").is_file():
                path = path / "es5"
            if (path / "tex-mml-chtml.js").is_file():
                return path
    if explicit:
        raise SetupError(f"--mathjax {explicit}: no tex-mml-chtml.js there (give MathJax 3's es5 folder)")
    npm = shutil.which("npm")
    if npm is None:
        return None
    cache.mkdir(parents=True, exist_ok=True)
    print(f"fetching MathJax {MATHJAX_VERSION} with npm into {cache} (once)")
    subprocess.run(
        [npm, "pack", f"mathjax@{MATHJAX_VERSION}", "--pack-destination", str(cache)],
        check=True,
        stdout=subprocess.DEVNULL,
    )
    with tarfile.open(cache / f"mathjax-{MATHJAX_VERSION}.tgz") as tar:
        members = [m for m in tar.getmembers() if m.name.startswith("package/es5/")]
        tar.extractall(cache, members=members, filter="data")
    return cache / "package" / "es5"


# ============================================================================================== server
class BookHandler(http.server.SimpleHTTPRequestHandler):
    """Serves the built book; swaps the Colab badge image and MathJax's CDN URL for local copies."""

    mathjax_dir: Path | None = None

    def log_message(self, format, *args):  # noqa: A002 - quiet server
        pass

    def do_GET(self):
        path = urllib.parse.urlparse(self.path).path
        if path.startswith(LOCAL_MATHJAX) and self.mathjax_dir is not None:
            target = (self.mathjax_dir / path[len(LOCAL_MATHJAX) :]).resolve()
            if self.mathjax_dir.resolve() in target.parents and target.is_file():
                return self._send(target.read_bytes(), "application/javascript")
            self.send_error(404)
            return None
        if path == LOCAL_COLAB_BADGE:
            return self._send(COLAB_BADGE_FILE.read_bytes(), "image/svg+xml")
        if path.endswith("/") or path.endswith(".html"):
            local = Path(self.translate_path(path))
            if local.is_dir():
                local = local / "index.html"
            if local.is_file():
                html = local.read_text(encoding="utf-8").replace(COLAB_BADGE, LOCAL_COLAB_BADGE)
                if self.mathjax_dir is not None:
                    html = MATHJAX_CDN.sub(LOCAL_MATHJAX, html)
                return self._send(html.encode("utf-8"), "text/html; charset=utf-8")
        return super().do_GET()

    def _send(self, body: bytes, ctype: str) -> None:
        self.send_response(200)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


def serve(root: Path, mathjax_dir: Path | None) -> tuple[http.server.ThreadingHTTPServer, str]:
    handler = type("Handler", (BookHandler,), {"mathjax_dir": mathjax_dir})
    server = http.server.ThreadingHTTPServer(
        ("127.0.0.1", 0), functools.partial(handler, directory=str(root))
    )
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, f"http://127.0.0.1:{server.server_address[1]}"


# ============================================================================================== WebSocket
class WebSocket:
    """The smallest WebSocket client the DevTools protocol needs (RFC 6455: text frames, client masking)."""

    def __init__(self, url: str, timeout: float = 60.0):
        parts = urllib.parse.urlparse(url)
        self.sock = socket.create_connection((parts.hostname, parts.port), timeout=timeout)
        key = base64.b64encode(os.urandom(16)).decode()
        request = (
            f"GET {parts.path} HTTP/1.1\r\nHost: {parts.hostname}:{parts.port}\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
        )
        self.sock.sendall(request.encode())
        response = b""
        while b"\r\n\r\n" not in response:
            chunk = self.sock.recv(4096)
            if not chunk:
                raise ConnectionError("DevTools closed the connection during the handshake")
            response += chunk
        header, self.buffer = response.split(b"\r\n\r\n", 1)
        if b" 101 " not in header.split(b"\r\n")[0]:
            raise ConnectionError(f"DevTools refused the WebSocket: {header[:200]!r}")

    def send(self, text: str) -> None:
        payload = text.encode()
        head = bytes([0x81])
        n = len(payload)
        if n < 126:
            head += bytes([0x80 | n])
        elif n < 1 << 16:
            head += bytes([0x80 | 126]) + struct.pack(">H", n)
        else:
            head += bytes([0x80 | 127]) + struct.pack(">Q", n)
        mask = os.urandom(4)
        masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
        self.sock.sendall(head + mask + masked)

    def _read(self, n: int) -> bytes:
        while len(self.buffer) < n:
            chunk = self.sock.recv(max(65536, n - len(self.buffer)))
            if not chunk:
                raise ConnectionError("DevTools closed the connection")
            self.buffer += chunk
        data, self.buffer = self.buffer[:n], self.buffer[n:]
        return data

    def recv(self) -> str:
        message = b""
        while True:
            b0, b1 = self._read(2)
            opcode, n = b0 & 0x0F, b1 & 0x7F
            if n == 126:
                n = struct.unpack(">H", self._read(2))[0]
            elif n == 127:
                n = struct.unpack(">Q", self._read(8))[0]
            payload = self._read(n)
            if opcode == 0x8:
                raise ConnectionError("DevTools closed the WebSocket")
            if opcode in (0x9, 0xA):  # ping / pong: not used by Chromium's DevTools server
                continue
            message += payload
            if b0 & 0x80:
                return message.decode("utf-8", errors="replace")

    def close(self) -> None:
        self.sock.close()


class DevTools:
    """Synchronous DevTools protocol calls on one page, collecting the events that report errors."""

    def __init__(self, ws_url: str):
        self.ws = WebSocket(ws_url)
        self.next_id = 0
        self.events: list[dict] = []

    def call(self, method: str, timeout: float = 60.0, **params) -> dict:
        self.next_id += 1
        my_id = self.next_id
        self.ws.send(json.dumps({"id": my_id, "method": method, "params": params}))
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            msg = json.loads(self.ws.recv())
            if msg.get("id") == my_id:
                if "error" in msg:
                    raise RuntimeError(f"{method}: {msg['error']}")
                return msg.get("result", {})
            if "method" in msg:
                self.events.append(msg)
        raise TimeoutError(f"{method}: no answer within {timeout} s")

    def wait_for(self, event: str, timeout: float = 60.0) -> None:
        for i, msg in enumerate(self.events):
            if msg.get("method") == event:
                del self.events[i]
                return
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            msg = json.loads(self.ws.recv())
            if msg.get("method") == event:
                return
            if "method" in msg:
                self.events.append(msg)
        raise TimeoutError(f"{event} did not arrive within {timeout} s")

    def evaluate(self, expression: str, timeout: float = 60.0):
        result = self.call(
            "Runtime.evaluate", timeout=timeout, expression=expression, awaitPromise=True, returnByValue=True
        )
        if "exceptionDetails" in result:
            raise RuntimeError(f"page script failed: {result['exceptionDetails'].get('text')}")
        return result["result"].get("value")


# ============================================================================================== Chromium
def start_chromium(binary: str, profile: Path) -> tuple[subprocess.Popen, int]:
    """Start headless Chromium with remote debugging on a free port; returns (process, port)."""
    args = [binary, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", "--remote-debugging-port=0", "about:blank"]
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    port_file = profile / "DevToolsActivePort"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if port_file.is_file() and port_file.read_text().strip():
            return proc, int(port_file.read_text().split()[0])
        if proc.poll() is not None:
            err = proc.stderr.read().decode(errors="replace")[-2000:] if proc.stderr else ""
            raise SetupError(f"{binary} exited with code {proc.returncode}:\n{err}")
        time.sleep(0.1)
    proc.kill()
    raise SetupError(f"{binary} did not open its DevTools port within 30 s")


def page_ws_url(port: int) -> str:
    import urllib.request

    with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=10) as resp:
        targets = json.load(resp)
    for target in targets:
        if target.get("type") == "page":
            return target["webSocketDebuggerUrl"]
    raise SetupError("Chromium has no page target")


# ============================================================================================== checks
#: Runs in the page after load: missing images, unrendered maths, MathJax errors.
PAGE_PROBE = r"""
(async () => {
  if (window.MathJax && MathJax.startup && MathJax.startup.promise) {
    await Promise.race([MathJax.startup.promise, new Promise(r => setTimeout(r, 20000))]);
  }
  const problems = [];
  for (const img of document.images) {
    if (!img.complete || img.naturalWidth === 0) {
      problems.push("missing image: " + (img.currentSrc || img.src));
    }
  }
  const root = document.querySelector("main") || document.body || document.documentElement;
  const walker = document.createTreeWalker(root, NodeFilter.SHOW_TEXT);
  const skip = "PRE, CODE, SCRIPT, STYLE, TEXTAREA, KBD, SAMP, MJX-CONTAINER, .highlight, .output";
  let node;
  while ((node = walker.nextNode())) {
    const text = node.nodeValue;
    if ((text.includes("$$") || text.includes("\\begin{")) && !node.parentElement.closest(skip)) {
      problems.push("unrendered maths: " + text.trim().slice(0, 80));
    }
  }
  const mathNodes = document.querySelectorAll("span.math, div.math");
  let untypeset = 0;
  for (const el of mathNodes) if (!el.querySelector("mjx-container")) untypeset += 1;
  if (untypeset) {
    problems.push(untypeset + " of " + mathNodes.length + " maths elements not typeset by MathJax"
                  + (window.MathJax && MathJax.version ? "" : " (MathJax did not load)"));
  }
  const badge = document.querySelector('img[alt="Open in Colab"]');
  if (badge) {
    const launch = document.querySelector('.dropdown-launch-buttons a[href*="colab.research.google.com"]');
    const link = badge.closest("a");
    if (!launch) problems.push("an Open-in-Colab badge but no Colab launch button");
    else if (!link || link.href !== launch.href) {
      problems.push("the Colab badge (" + (link ? link.href : "no link") + ") and the launch button ("
                    + launch.href + ") open different notebooks");
    }
  }
  const errors = document.querySelectorAll("mjx-merror, [data-mjx-error]");
  for (const el of errors) {
    problems.push("MathJax error: " + (el.getAttribute("data-mjx-error") || el.textContent));
  }
  return {problems, maths: mathNodes.length, images: document.images.length,
          height: Math.min(document.documentElement.scrollHeight, 6000)};
})()
"""


@dataclass
class PageResult:
    page: str
    problems: list[str] = field(default_factory=list)
    maths: int = 0
    images: int = 0


def console_problems(events: list[dict]) -> list[str]:
    """Console errors, uncaught exceptions and failed loads among the collected DevTools events."""
    problems = []
    for ev in events:
        method, params = ev.get("method"), ev.get("params", {})
        if method == "Runtime.consoleAPICalled" and params.get("type") in ("error", "assert"):
            args = " ".join(str(a.get("value", a.get("description", ""))) for a in params.get("args", []))
            problems.append(f"console error: {args[:200]}")
        elif method == "Runtime.exceptionThrown":
            details = params.get("exceptionDetails", {})
            text = details.get("exception", {}).get("description") or details.get("text", "")
            problems.append(f"uncaught exception: {text[:200]}")
        elif method == "Log.entryAdded" and params.get("entry", {}).get("level") == "error":
            entry = params["entry"]
            if entry.get("url", "").endswith("/favicon.ico"):
                continue  # the browser's own guess for a page that names no icon, not a page's request
            problems.append(
                f"console error ({entry.get('source')}): {entry.get('text', '')[:160]} {entry.get('url', '')}"
            )
    return problems


def check_page(tools: DevTools, url: str, page: str, shots: Path | None, timeout: float) -> PageResult:
    tools.events.clear()
    tools.call("Page.navigate", url=url)
    tools.wait_for("Page.loadEventFired", timeout=timeout)
    report = tools.evaluate(PAGE_PROBE, timeout=timeout)
    time.sleep(0.2)  # let late console messages arrive
    tools.call("Runtime.evaluate", expression="1")
    result = PageResult(page, list(report["problems"]), report["maths"], report["images"])
    result.problems += console_problems(tools.events)
    if shots is not None:
        height = int(report["height"])
        tools.call(
            "Emulation.setDeviceMetricsOverride", width=1280, height=height, deviceScaleFactor=1, mobile=False
        )
        shot = tools.call("Page.captureScreenshot", format="png", timeout=timeout)
        tools.call(
            "Emulation.setDeviceMetricsOverride", width=1280, height=900, deviceScaleFactor=1, mobile=False
        )
        name = page.replace("/", "__").removesuffix(".html") + ".png"
        (shots / name).write_bytes(base64.b64decode(shot["data"]))
    return result


REDIRECT = re.compile(r'<meta\s+http-equiv="refresh"\s+content="\d+;\s*url=([^"]+)"', re.IGNORECASE)


def redirect_target(html: Path, page: str) -> str | None:
    """The target of a redirect-only page (Jupyter Book's top-level ``index.html``), else None."""
    match = REDIRECT.search((html / page).read_text(encoding="utf-8", errors="replace")[:2000])
    return match.group(1) if match else None


def list_pages(html: Path) -> list[str]:
    """Every built HTML page except Sphinx's own folders (_static, _sources, _images)."""
    pages = []
    for path in sorted(html.rglob("*.html")):
        rel = path.relative_to(html).as_posix()
        if rel.split("/")[0] in ("_static", "_sources", "_images", "_panels_static"):
            continue
        pages.append(rel)
    return pages


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--html", default="_build/html", help="the built book (default: _build/html)")
    parser.add_argument("--screenshot", metavar="DIR", default=None, help="save a PNG of every page here")
    parser.add_argument("--mathjax", default=None, help="MathJax 3 es5 folder (default: cache, else npm)")
    parser.add_argument("--chromium", default=None, help="Chromium binary (default: chromium on PATH)")
    parser.add_argument("--timeout", type=float, default=60.0, help="seconds per page")
    parser.add_argument("pages", nargs="*", help="pages to check, relative to --html (default: all)")
    args = parser.parse_args(argv)

    html = Path(args.html)
    try:
        if not (html / "index.html").is_file():
            raise SetupError(f"{html}/index.html not found: build the book first (jupyter-book build . -W)")
        binary = args.chromium or shutil.which("chromium") or shutil.which("chromium-browser")
        if not binary:
            raise SetupError("chromium not found: install it with `apt-get install -y chromium` (Debian)")
        mathjax = find_mathjax(args.mathjax)
        if mathjax is None:
            print("warning: no local MathJax and no npm: pages with maths will fail offline", file=sys.stderr)
    except (SetupError, subprocess.CalledProcessError) as err:
        print(f"check_pages: {err}", file=sys.stderr)
        return 2

    pages = args.pages or list_pages(html)
    shots = Path(args.screenshot) if args.screenshot else None
    if shots is not None:
        shots.mkdir(parents=True, exist_ok=True)
    server, base_url = serve(html, mathjax)
    failures = 0
    with tempfile.TemporaryDirectory(prefix="check-pages-") as profile:
        try:
            proc, port = start_chromium(binary, Path(profile))
        except SetupError as err:
            print(f"check_pages: {err}", file=sys.stderr)
            server.shutdown()
            return 2
        try:
            tools = DevTools(page_ws_url(port))
            for domain in ("Page", "Runtime", "Log"):
                tools.call(f"{domain}.enable")
            tools.call(
                "Emulation.setDeviceMetricsOverride",
                width=1280,
                height=900,
                deviceScaleFactor=1,
                mobile=False,
            )
            for page in pages:
                target = redirect_target(html, page)
                if target is not None:
                    exists = (html / page).parent.joinpath(urllib.parse.urlparse(target).path).is_file()
                    print(f"{'ok  ' if exists else 'FAIL'} {page} (redirect to {target})")
                    failures += not exists
                    continue
                try:
                    res = check_page(tools, f"{base_url}/{page}", page, shots, args.timeout)
                except (TimeoutError, RuntimeError) as err:
                    res = PageResult(page, [f"could not check the page: {err}"])
                status = "ok  " if not res.problems else "FAIL"
                print(f"{status} {page} ({res.images} images, {res.maths} maths elements)")
                for problem in res.problems:
                    print(f"       {problem}")
                failures += bool(res.problems)
            tools.ws.close()
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
            server.shutdown()
    print(f"{len(pages) - failures} passed, {failures} failed")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
