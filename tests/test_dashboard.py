"""The asv dashboard offline (``harness.dashboard``), without a browser: the vendored assets are
what the manifest says and what the CDNs serve, ``localize`` rewrites every CDN URL of a real
``asv publish`` and refuses one it cannot replace, ``vendor`` refuses a changed download, and
the command line answers bad input with one line and exit 2. What a browser makes of the
result: ``test_dashboard_browser.py``."""

from __future__ import annotations

import base64
import hashlib
import io
import json
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
from helpers import published_asv_dashboard

from harness import dashboard
from harness.errors import UsageError

#: asv's own page template: what ``asv publish`` copies to the html_dir
ASV_TEMPLATE = Path(pytest.importorskip("asv").__file__).parent / "www" / "index.html"
#: vendored files that are not the CDN's bytes: npm's flot 0.8.3 ships no minified files, so
#: these are the unminified sources of the files cdnjs minified
NOT_CDN_BYTES = {"flot-0.8.3/jquery.flot.js", "flot-0.8.3/jquery.flot.time.js",
                 "flot-0.8.3/jquery.flot.selection.js", "flot-0.8.3/jquery.flot.categories.js"}


def rlgauge(*args, timeout=60):
    return subprocess.run([sys.executable, "-m", "harness", *args], capture_output=True,
                          text=True, timeout=timeout)


@pytest.fixture(scope="module")
def published(tmp_path_factory):
    """A dashboard as ``asv publish`` wrote it (CDN URLs), built once per module."""
    return published_asv_dashboard(tmp_path_factory.mktemp("asv"))


@pytest.fixture
def html_dir(published, tmp_path):
    """A fresh copy of the published dashboard for one test to change."""
    return Path(shutil.copytree(published, tmp_path / "html"))


def test_dashboard_assets_are_exactly_the_manifest():
    manifest = dashboard.load_manifest()
    files = [f for pkg in manifest["packages"] for f in pkg["files"]]
    on_disk = {p.relative_to(dashboard.ASSETS).as_posix()
               for p in dashboard.ASSETS.rglob("*") if p.is_file()}
    assert on_disk == {f["path"] for f in files} | {"manifest.json"}  # nothing unlisted
    for f in files:
        data = (dashboard.ASSETS / f["path"]).read_bytes()
        assert hashlib.sha256(data).hexdigest() == f["sha256"], f["path"]
        assert len(data) == f["bytes"], f["path"]
    for pkg in manifest["packages"]:  # each package ships its licence text (or declaration)
        assert pkg["license"] == "MIT"
        assert any(Path(f["path"]).name in {"LICENSE", "LICENSE.txt", "package.json"}
                   for f in pkg["files"]), pkg["name"]


def test_dashboard_assets_cover_asv_and_are_the_cdn_bytes():
    """Every URL the installed asv's page loads from another host has a vendored copy, and
    each copy is the very file the CDN serves: its hash is the page's own integrity value
    (subresource integrity, sha256/384/512 in base64), flot's unminified sources aside."""
    page = ASV_TEMPLATE.read_text()
    urls = dashboard.cdn_map(dashboard.load_manifest())
    assert set(dashboard.external_urls(page)) == set(urls)
    for url, path in urls.items():
        tag = next(t for t in page.split("<") if url in t)
        integrity = tag.split('integrity="', 1)[1].split('"', 1)[0]
        algorithm, digest = integrity.split("-", 1)
        data = (dashboard.ASSETS / path).read_bytes()
        same = base64.b64encode(hashlib.new(algorithm, data).digest()).decode() == digest
        assert same == (path not in NOT_CDN_BYTES), path


def test_dashboard_localize_rewrites_every_cdn_url_and_is_idempotent(html_dir):
    before = (html_dir / "index.html").read_text()
    assert len(dashboard.external_urls(before)) == 10  # asv 0.6's ten CDN files
    done = dashboard.localize(html_dir)
    page = (html_dir / "index.html").read_text()
    assert done["pages"] == [html_dir / "index.html"]  # error.html loads nothing remote
    assert dashboard.external_urls(page) == []
    assert "integrity=" not in page and "crossorigin" not in page
    # the link to asv's homepage is followed, not loaded: it stays
    assert '<a href="https://github.com/airspeed-velocity/asv/"' in page
    for path in dashboard.cdn_map(dashboard.load_manifest()).values():
        assert f'"vendor/{path}"' in page
        assert (html_dir / "vendor" / path).read_bytes() == (dashboard.ASSETS / path).read_bytes()
    # the fonts bootstrap's CSS loads from ../fonts/ sit where it looks for them
    assert (html_dir / "vendor/bootstrap-3.1.1/fonts/glyphicons-halflings-regular.woff").is_file()
    mtimes = {p: p.stat().st_mtime_ns for p in html_dir.rglob("*") if p.is_file()}
    assert dashboard.localize(html_dir) == {"pages": [], "assets": []}
    assert {p: p.stat().st_mtime_ns for p in html_dir.rglob("*") if p.is_file()} == mtimes


def test_dashboard_localize_names_a_url_it_cannot_replace_and_writes_nothing(html_dir):
    index = html_dir / "index.html"
    added = '<script src="https://cdn.example.invalid/new-dep-2.0.min.js"></script>\n'
    index.write_text(index.read_text().replace("</head>", added + "</head>"))
    (html_dir / "sub").mkdir()
    (html_dir / "sub" / "page.html").write_text(
        "<html><style>@import url('//fonts.example.invalid/f.css');</style></html>")
    with pytest.raises(UsageError) as exc:
        dashboard.localize(html_dir)
    message = str(exc.value)
    assert "https://cdn.example.invalid/new-dep-2.0.min.js (in index.html)" in message
    assert "//fonts.example.invalid/f.css (in sub/page.html)" in message
    assert "code.jquery.com" not in message  # the known ones are not the problem
    assert not (html_dir / "vendor").exists()
    assert "https://code.jquery.com/jquery-3.3.1.min.js" in index.read_text()


def test_dashboard_localize_refuses_a_corrupted_vendored_file(html_dir, tmp_path):
    assets = Path(shutil.copytree(dashboard.ASSETS, tmp_path / "assets"))
    (assets / "jquery-3.3.1" / "jquery.min.js").write_text("alert('not jquery')")
    with pytest.raises(UsageError, match=r"jquery\.min\.js.* does not match its sha256"):
        dashboard.localize(html_dir, assets)


def _tarball(files: dict[str, bytes], top: str = "package") -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w:gz") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(f"{top}/{name}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return out.getvalue()


def test_dashboard_vendor_pins_a_new_file_and_refuses_a_changed_one(tmp_path):
    """``vendor`` against a fake registry: the first download of a file is pinned in the
    manifest; a later download with other bytes is refused and nothing is written."""
    manifest = {"packages": [{"name": "demo", "version": "1.0.0", "license": "MIT",
                              "source": "https://registry.example.invalid/demo-1.0.0.tgz",
                              "files": [{"path": "demo-1.0.0/demo.js", "from": "dist/demo.js",
                                         "cdn": "https://cdn.example.invalid/demo.js",
                                         "sha256": None, "bytes": None}]}]}
    (tmp_path / "manifest.json").write_text(json.dumps(manifest))
    served = {"dist/demo.js": b"var demo = 1;"}
    written = dashboard.vendor(tmp_path, download=lambda url: _tarball(served))
    assert written == [tmp_path / "demo-1.0.0" / "demo.js"]
    pinned = dashboard.load_manifest(tmp_path)["packages"][0]["files"][0]
    assert pinned["sha256"] == hashlib.sha256(b"var demo = 1;").hexdigest()
    assert pinned["bytes"] == 13

    served["dist/demo.js"] = b"var demo = 2;"  # same version, other bytes: refused
    with pytest.raises(UsageError, match=r"'dist/demo.js' of https://registry.example.invalid/"
                                         r"demo-1.0.0.tgz has sha256 .* the manifest pins"):
        dashboard.vendor(tmp_path, download=lambda url: _tarball(served))
    assert (tmp_path / "demo-1.0.0" / "demo.js").read_bytes() == b"var demo = 1;"

    with pytest.raises(UsageError, match=r"has no 'dist/demo.js'"):
        dashboard.vendor(tmp_path, download=lambda url: _tarball({"other.js": b""}))


def test_dashboard_cli_localizes_and_answers_bad_input_in_one_line(html_dir, tmp_path):
    proc = rlgauge("dashboard", "localize", str(html_dir))
    assert proc.returncode == 0, proc.stderr
    files = sum(len(pkg["files"]) for pkg in dashboard.load_manifest()["packages"])
    assert f"1 page(s) pointed at {html_dir / 'vendor'}, {files} asset(s) copied" in proc.stdout
    assert dashboard.external_urls((html_dir / "index.html").read_text()) == []
    cases = [
        (("dashboard", "localize", str(tmp_path / "nowhere")), "holds no index.html"),
        (("dashboard", "screenshot", str(html_dir), str(tmp_path / "x.png"), "--window",
          "big"), "--window must be WIDTHxHEIGHT"),
        (("dashboard", "publish"), "invalid choice: 'publish'"),
        (("dashboard",), "required: ACTION"),
    ]
    for args, message in cases:
        proc = rlgauge(*args)
        assert proc.returncode == 2, (args, proc.stderr)
        assert len(proc.stderr.strip().splitlines()) == 1 and message in proc.stderr, args
        assert proc.stdout == ""


def test_dashboard_screenshot_refuses_a_dashboard_that_is_not_localized(html_dir, tmp_path):
    with pytest.raises(UsageError, match=r"still loads https://code\.jquery\.com/.* localize"):
        dashboard.screenshot(html_dir, tmp_path / "shot.png")
    assert not (tmp_path / "shot.png").exists()
