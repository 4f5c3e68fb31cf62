"""asv's dashboard without network: vendored copies of what it loads from CDNs, and a headless
Chromium with every host but 127.0.0.1 blocked, to check and photograph it.

``asv publish`` writes an ``index.html`` whose ``<script>``/``<link>`` tags load jQuery, flot,
bootstrap and friends from code.jquery.com, cdnjs and jsDelivr; offline the page only shows
asv's "Can not determine continental origin of swallow" error. ``harness/dashboard_assets``
holds a copy of each of those files (with its package's licence), and
``dashboard_assets/manifest.json`` says where each came from and its sha256:

- ``localize(html_dir)`` copies the assets to ``html_dir/vendor/`` and points the published
  pages' CDN URLs at the copies (dropping ``integrity``/``crossorigin``: a file:// page is an
  opaque origin, where a subresource-integrity check always fails). Any other URL the pages
  would load from another host is an error naming it, so that an asv upgrade that adds a CDN
  is caught where it is published, not by a user offline. Links (``<a href>``) are not loads.
- ``vendor(assets_dir)`` refreshes the copies from their sources (the npm registry; GitHub for
  stupidtable 1.0.1, which npm does not have) and refuses a file whose sha256 differs from the
  manifest's. A file without a sha256 in the manifest (a new or bumped package: edit the
  manifest, set ``sha256`` to null) is pinned by that download.
- ``dump_dom(url)`` and ``screenshot(html_dir, out)`` drive ``chromium --headless`` with the
  network cut off (``offline_flags``): the browser tests and the dashboard's picture.

Every file is written atomically (``harness.atomic``).
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import http.server
import io
import json
import os
import re
import shutil
import socket
import subprocess
import tarfile
import tempfile
import threading
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

from harness import atomic
from harness.errors import UsageError

ASSETS = Path(__file__).parent / "dashboard_assets"
#: the published pages reach the assets under this folder of the html directory
VENDOR_DIR = "vendor"
#: how to get the browser that the browser tests and ``screenshot`` drive (Debian's package)
CHROMIUM = "chromium"
CHROMIUM_INSTALL = "apt-get install chromium"

# a tag, and inside it an attribute that makes the browser fetch a URL on another host
# (absolute or protocol-relative); CSS url()/@import in inline styles load too
_TAG = re.compile(r"<(?P<name>[A-Za-z][\w-]*)(?P<attrs>\s[^>]*)?>")
_LOADING_ATTR = re.compile(
    r"""(?P<lead>\b(?:src|href|srcset|poster|data)\s*=\s*)(?P<q>["']?)"""
    r"""(?P<url>(?:https?:)?//[^"'\s>]+)(?P=q)""", re.IGNORECASE)
_CSS_URL = re.compile(r"""(?:url\(\s*|@import\s+)["']?(?P<url>(?:https?:)?//[^"')\s;]+)""",
                      re.IGNORECASE)
# attributes that only make sense for a cross-origin CDN copy
_CDN_ATTR = re.compile(r"""\s+(?:integrity|crossorigin|referrerpolicy)"""
                       r"""(?:\s*=\s*(?:"[^"]*"|'[^']*'|[^\s>]+))?""", re.IGNORECASE)


# --------------------------------------------------------------------------- manifest


def load_manifest(assets_dir: str | os.PathLike = ASSETS) -> dict:
    """``manifest.json`` of an assets directory: ``{"packages": [{name, version, source,
    license, note, files: [{path, from, cdn, sha256, bytes}]}]}``. ``path`` is under the assets
    directory, ``from`` inside the source tarball (below its top folder), ``cdn`` the URL
    asv's pages load the file from (null for licences)."""
    path = Path(assets_dir) / "manifest.json"
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise UsageError(f"cannot read the dashboard assets' manifest {str(path)!r}: "
                         f"{exc}") from None


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def cdn_map(manifest: dict) -> dict[str, str]:
    """CDN URL -> the file's path under the assets directory."""
    return {f["cdn"]: f["path"] for pkg in manifest["packages"] for f in pkg["files"]
            if f.get("cdn")}


def _download(url: str, timeout: float = 60.0) -> bytes:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return response.read()
    except (urllib.error.URLError, OSError) as exc:
        raise UsageError(f"cannot download {url}: {exc}") from None


def _members(tarball: bytes) -> dict[str, bytes]:
    """Regular files of a .tar.gz by their path below its top folder (npm's ``package/``,
    GitHub's ``<repo>-<tag>/``)."""
    out = {}
    with tarfile.open(fileobj=io.BytesIO(tarball), mode="r:gz") as tar:
        for member in tar.getmembers():
            if member.isfile() and "/" in member.name:
                out[member.name.split("/", 1)[1]] = tar.extractfile(member).read()
    return out


def vendor(assets_dir: str | os.PathLike = ASSETS, *,
           download: Callable[[str], bytes] = _download) -> list[Path]:
    """Download every package of the manifest, check each file against its sha256 and write
    the files and the manifest (sha256 and size filled in). Nothing is written when a file is
    missing from its tarball or differs from a sha256 the manifest already holds. Returns the
    files written. Needs the network; the tests hand it a fake registry (``download``)."""
    assets_dir = Path(assets_dir)
    manifest = load_manifest(assets_dir)
    contents: dict[str, bytes] = {}
    problems = []
    for pkg in manifest["packages"]:
        members = _members(download(pkg["source"]))
        for f in pkg["files"]:
            data = members.get(f["from"])
            if data is None:
                problems.append(f"{pkg['source']} has no {f['from']!r}")
            elif f.get("sha256") and _sha256(data) != f["sha256"]:
                problems.append(f"{f['from']!r} of {pkg['source']} has sha256 {_sha256(data)}, "
                                f"the manifest pins {f['sha256']}")
            else:
                contents[f["path"]] = data
                f["sha256"], f["bytes"] = _sha256(data), len(data)
    if problems:
        raise UsageError("dashboard assets not refreshed: " + "; ".join(problems))
    written = [atomic.write_bytes(assets_dir / path, data) for path, data in contents.items()]
    atomic.write_text(assets_dir / "manifest.json", json.dumps(manifest, indent=2) + "\n")
    return written


# --------------------------------------------------------------------------- localize


def external_urls(page: str) -> list[str]:
    """URLs on other hosts that ``page`` (HTML) would load: src/href/srcset/poster/data of every
    tag but ``<a>`` (a link is followed, not loaded), and CSS url()/@import."""
    found = [m.group("url") for tag in _TAG.finditer(page) if tag.group("name").lower() != "a"
             for m in _LOADING_ATTR.finditer(tag.group("attrs") or "")]
    return found + [m.group("url") for m in _CSS_URL.finditer(page)]


def _localize_page(page: str, urls: dict[str, str], prefix: str) -> str:
    """``page`` with each tag that loads a URL of ``urls`` pointed at ``prefix + urls[url]``
    and stripped of its CDN-only attributes."""
    def tag(match: re.Match) -> str:
        attrs = match.group("attrs") or ""
        if match.group("name").lower() == "a":
            return match.group(0)
        if not any(m.group("url") in urls for m in _LOADING_ATTR.finditer(attrs)):
            return match.group(0)
        attrs = _LOADING_ATTR.sub(
            lambda m: (f"{m.group('lead')}{m.group('q')}{prefix}{urls[m.group('url')]}"
                       f"{m.group('q')}") if m.group("url") in urls else m.group(0), attrs)
        return f"<{match.group('name')}{_CDN_ATTR.sub('', attrs)}>"

    return _TAG.sub(tag, page)


def localize(html_dir: str | os.PathLike, assets_dir: str | os.PathLike = ASSETS) -> dict:
    """Make the pages ``asv publish`` wrote under ``html_dir`` load nothing from the network:
    copy the vendored assets (checked against the manifest) to ``html_dir/vendor/`` and point
    every CDN URL of every ``*.html`` there at its copy. Idempotent. Raises ``UsageError``,
    before writing anything, naming each URL on another host that no vendored file replaces.
    Returns ``{"pages": rewritten pages, "assets": copied files}`` (both empty on a re-run)."""
    html_dir, assets_dir = Path(html_dir), Path(assets_dir)
    if not (html_dir / "index.html").is_file():
        raise UsageError(f"{str(html_dir)!r} holds no index.html; give the html_dir that "
                         "`asv publish` wrote (asv.conf.json: results/html)")
    manifest = load_manifest(assets_dir)
    urls = cdn_map(manifest)
    pages, unknown = {}, []
    for path in sorted(html_dir.rglob("*.html")):
        if VENDOR_DIR in path.relative_to(html_dir).parts:
            continue  # the vendored packages' own files are not published pages
        prefix = Path(os.path.relpath(html_dir / VENDOR_DIR, path.parent)).as_posix() + "/"
        page = path.read_text(encoding="utf-8")
        new = _localize_page(page, urls, prefix)
        unknown += [f"{url} (in {path.relative_to(html_dir)})" for url in external_urls(new)]
        if new != page:
            pages[path] = new
    if unknown:
        raise UsageError("the dashboard loads from the network what harness/dashboard_assets "
                         "does not vendor: " + ", ".join(unknown) + "; add it to "
                         "dashboard_assets/manifest.json and run `python -m harness dashboard "
                         "vendor`")
    copied = []
    for f in [f for pkg in manifest["packages"] for f in pkg["files"]]:
        src, dest = assets_dir / f["path"], html_dir / VENDOR_DIR / f["path"]
        data = src.read_bytes()
        if _sha256(data) != f["sha256"]:
            raise UsageError(f"vendored {str(src)!r} does not match its sha256 in the manifest; "
                             "restore it (git checkout) or refresh with `python -m harness "
                             "dashboard vendor`")
        if not dest.is_file() or dest.read_bytes() != data:
            copied.append(atomic.copy(src, dest))
    if not (html_dir / VENDOR_DIR / "manifest.json").is_file() or copied:
        atomic.copy(assets_dir / "manifest.json", html_dir / VENDOR_DIR / "manifest.json")
    for path, page in pages.items():
        atomic.write_text(path, page)
    return {"pages": list(pages), "assets": copied}


# --------------------------------------------------------------------------- headless chromium


def chromium() -> str | None:
    """The Chromium binary on PATH, or None."""
    return shutil.which(CHROMIUM)


@contextlib.contextmanager
def serve(directory: str | os.PathLike, log: list | None = None) -> Iterator[str]:
    """Serve ``directory`` over HTTP on 127.0.0.1 (a free port) from a thread while the block
    runs; yields its base URL (``http://127.0.0.1:PORT/``). Each request's (path, status) is
    appended to ``log`` when given (what a page really fetched), never printed."""
    class Handler(http.server.SimpleHTTPRequestHandler):
        def log_request(self, code="-", size="-"):  # noqa: D102 -- http.server API
            if log is not None:
                log.append((self.path, int(code)))

        def log_message(self, *args):  # noqa: D102 -- http.server API: nothing on stderr
            pass

    handler = functools.partial(Handler, directory=str(directory))
    with http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler) as server:
        thread = threading.Thread(target=server.serve_forever, daemon=True)
        thread.start()
        try:
            yield f"http://127.0.0.1:{server.server_address[1]}/"
        finally:
            server.shutdown()
            thread.join()


@contextlib.contextmanager
def offline_flags() -> Iterator[list[str]]:
    """Chromium flags that leave it 127.0.0.1 and nothing else, valid while the block runs.

    Every request goes to a proxy at a 127.0.0.1 port that refuses connections (a socket bound
    but never listening, held for the block: no other process can take the port), except
    loopback, which Chromium never proxies; and every host name but 127.0.0.1 resolves to
    nothing, for what does not go through the proxy."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as refuser:
        refuser.bind(("127.0.0.1", 0))
        yield [f"--proxy-server=http://127.0.0.1:{refuser.getsockname()[1]}",
               "--host-resolver-rules=MAP * ~NOTFOUND , EXCLUDE 127.0.0.1"]


def _run_chromium(args: Sequence[str], *, offline: bool, timeout: float) -> str:
    """Run headless Chromium with ``args`` in a throw-away profile; its stdout."""
    binary = chromium()
    if binary is None:
        raise UsageError(f"no '{CHROMIUM}' on PATH; install it: {CHROMIUM_INSTALL}")
    with tempfile.TemporaryDirectory(prefix="rlgauge-chromium-") as profile, \
            offline_flags() as blocking:
        cmd = [binary, "--headless", "--disable-gpu", "--no-first-run",
               "--no-default-browser-check", "--disable-extensions", "--disable-sync",
               "--disable-background-networking", "--disable-component-update",
               "--hide-scrollbars", "--mute-audio", f"--user-data-dir={profile}",
               *(blocking if offline else []), *args]
        if os.geteuid() == 0:
            cmd.insert(1, "--no-sandbox")  # Chromium refuses to run as root with its sandbox
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout,
                              check=False)
    if proc.returncode != 0:
        last = (proc.stderr.strip() or "no output").splitlines()[-1]
        raise RuntimeError(f"chromium exited with {proc.returncode}: {last}")
    return proc.stdout


def dump_dom(url: str, *, budget_ms: int = 5000, window: tuple[int, int] = (1400, 1000),
             offline: bool = True, file_access: bool = False, timeout: float = 60.0) -> str:
    """The DOM of ``url`` after ``budget_ms`` of virtual time (scripts run, timers fire, idle
    network waits skipped) in headless Chromium, offline unless told otherwise.
    ``file_access`` lets a file:// page read other files (asv's pages fetch index.json)."""
    return _run_chromium([f"--window-size={window[0]},{window[1]}",
                          f"--virtual-time-budget={budget_ms}", "--dump-dom",
                          *(["--allow-file-access-from-files"] if file_access else []), url],
                         offline=offline, timeout=timeout)


def screenshot(html_dir: str | os.PathLike, out: str | os.PathLike, *, page: str = "index.html",
               window: tuple[int, int] = (1400, 1000), budget_ms: int = 10000,
               timeout: float = 120.0) -> Path:
    """A PNG of ``html_dir/page`` as headless Chromium shows it served from 127.0.0.1 with
    every other host blocked; ``html_dir`` must be localized. Written atomically to ``out``."""
    html_dir, out = Path(html_dir), Path(out)
    index = html_dir / "index.html"
    if not index.is_file():
        raise UsageError(f"{str(html_dir)!r} holds no index.html")
    remote = external_urls(index.read_text(encoding="utf-8"))
    if remote:
        raise UsageError(f"{str(index)!r} still loads {remote[0]}; run `python -m harness "
                         f"dashboard localize {html_dir}` first")
    with tempfile.TemporaryDirectory(prefix="rlgauge-shot-") as tmp, serve(html_dir) as base:
        png = Path(tmp) / "shot.png"
        _run_chromium([f"--window-size={window[0]},{window[1]}",
                       f"--virtual-time-budget={budget_ms}", f"--screenshot={png}",
                       base + page], offline=True, timeout=timeout)
        if not png.is_file():
            raise RuntimeError(f"chromium wrote no screenshot of {base + page}")
        return atomic.copy(png, out)
