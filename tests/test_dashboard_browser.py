"""The asv dashboard and the matrix's report.html, opened in headless Chromium with every host
but 127.0.0.1 blocked (``harness.dashboard.offline_flags``): what renders, read from the DOM
after the pages' scripts ran, not from HTTP status codes.

A page counts as working when the DOM holds what its scripts draw: asv's benchmark grid (one
flot ``canvas.flot-base`` per benchmark), its benchmark list (sorted by stupidtable), a
benchmark's graph (flot's legend and axis labels), bootstrap's tooltips and styles; the
report's tables and decoded images. Two controls show that these tests can fail: the same
dashboard before ``localize`` shows asv's swallow error under the same blocking, and a script
on a non-loopback address of this machine loads without the blocking and not with it.

Marker ``browser``; skipped where there is no ``chromium`` (``apt-get install chromium``;
``.ci/run`` installs it). Each test takes 1-4 s.
"""

from __future__ import annotations

import html
import json
import re
import shutil
import socket
from pathlib import Path

import pandas as pd
import pytest
from helpers import TINY_ASV_BENCHMARKS, published_asv_dashboard

from harness import dashboard, report, results

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(dashboard.chromium() is None,
                       reason=f"needs headless Chromium: {dashboard.CHROMIUM_INSTALL}"),
]

#: what asv's error.html says when a script of index.html failed to load
SWALLOW = "Can not determine continental origin of swallow"
#: appended to a page under test: after load, writes what only a rendered page knows (image
#: sizes once decoded, computed styles) into the DOM for --dump-dom to carry out
PROBE = """<script>window.addEventListener("load", function () {
  var out = document.createElement("pre"); out.id = "rlgauge-probe";
  out.textContent = JSON.stringify({
    images: Array.from(document.images).map(function (i) {
      return [i.getAttribute("alt"), i.naturalWidth, i.naturalHeight]; }),
    navPosition: document.getElementById("nav") &&
                 getComputedStyle(document.getElementById("nav")).position});
  document.body.appendChild(out); });</script>"""


def _with_probe(page: Path) -> None:
    page.write_text(page.read_text().replace("</body>", PROBE + "</body>"))


def _probe(dom: str) -> dict:
    return json.loads(html.unescape(
        re.search(r'<pre id="rlgauge-probe">(.*?)</pre>', dom, re.S).group(1)))


@pytest.fixture(scope="module")
def published(tmp_path_factory):
    """A dashboard as ``asv publish`` wrote it (CDN URLs), built once per module."""
    return published_asv_dashboard(tmp_path_factory.mktemp("asv"))


@pytest.fixture
def localized(published, tmp_path):
    """A localized copy of the published dashboard, with the probe script on its page."""
    html_dir = Path(shutil.copytree(published, tmp_path / "html"))
    dashboard.localize(html_dir)
    _with_probe(html_dir / "index.html")
    return html_dir


def _names(dom: str) -> list[str]:
    return re.findall(r'<div class="benchmark-text"[^>]*>([^<]*)</div>', dom)


def _grid_rendered(dom: str) -> None:
    """asv's benchmark grid: every benchmark's name, and the sparkline flot drew for each."""
    assert SWALLOW not in dom
    assert sorted(_names(dom)) == sorted(n.split(".", 1)[1] for n in TINY_ASV_BENCHMARKS)
    assert dom.count('<canvas class="flot-base"') == len(TINY_ASV_BENCHMARKS)


@pytest.mark.parametrize("view", ["", "#/summarylist", "#tiny.Sort.time_sort"],
                         ids=["grid", "list", "graph"])
def test_browser_dashboard_renders_offline_over_http(localized, view):
    log = []
    with dashboard.serve(localized, log) as base:
        dom = dashboard.dump_dom(base + "index.html" + view)
    assert SWALLOW not in dom
    # bootstrap's JavaScript turned titles into tooltips, its CSS fixed the navigation bar
    assert "data-original-title=" in dom
    assert _probe(dom)["navPosition"] == "fixed"
    # the page fetched each vendored script and stylesheet, and nothing failed
    page = (localized / "index.html").read_text()
    wanted = {"/" + p for p in re.findall(r'(?:src|href)="(vendor/[^"]+)"', page)}
    assert len(wanted) == 10 and wanted <= {path for path, status in log if status == 200}
    assert [(path, status) for path, status in log if status >= 400] == []
    if view == "":
        _grid_rendered(dom)
    elif view == "#/summarylist":
        # one row per parameter point: Sort at 10 and at 1000, and Sum
        assert dom.count('<td class="value"') == 3
        assert re.search(r'<th data-sort="string" class="[^"]*sorting-asc', dom)  # stupidtable
    else:
        assert dom.count('<canvas class="flot-base"') >= 1
        legend = re.findall(r'<td class="legendLabel">([^<]*)</td>', dom)
        assert legend == ["size-10", "size-1000"]
        assert dom.count("flot-tick-label") >= 4  # flot wrote the axes' labels


def test_browser_dashboard_renders_offline_from_file(localized):
    """From file:// the vendored scripts load as they are; asv's page then fetches index.json,
    which Chromium allows a file:// page only with --allow-file-access-from-files (asv's own
    limit, online or not: serve the directory to skip it)."""
    url = (localized / "index.html").as_uri()
    assert SWALLOW not in dashboard.dump_dom(url)
    dom = dashboard.dump_dom(url, file_access=True)
    _grid_rendered(dom)
    assert _probe(dom)["navPosition"] == "fixed"


def test_browser_dashboard_before_localize_shows_the_swallow_error(published, tmp_path):
    """Negative control: the page as ``asv publish`` wrote it, under the same blocking, fails
    the way a user offline sees it."""
    html_dir = Path(shutil.copytree(published, tmp_path / "html"))
    with dashboard.serve(html_dir) as base:
        dom = dashboard.dump_dom(base + "index.html")
    assert SWALLOW in dom
    assert _names(dom) == [] and "flot-base" not in dom


def _non_loopback_ipv4() -> str | None:
    """This machine's address on its default route, or None (no route, or only loopback)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.connect(("192.0.2.1", 9))  # TEST-NET-1: a UDP connect sends nothing
        except OSError:
            return None
        address = s.getsockname()[0]
    return None if address.startswith("127.") else address


def test_browser_blocking_stops_a_host_other_than_loopback(tmp_path):
    """The blocking, not a missing internet, is what stops the CDNs: a script served by this
    machine on its non-loopback address loads without ``offline_flags`` and not with them."""
    import functools
    import http.server
    import threading

    address = _non_loopback_ipv4()
    if address is None:
        pytest.skip("no non-loopback IPv4 address to serve the probe script from")
    remote = tmp_path / "remote"
    remote.mkdir()
    (remote / "probe.js").write_text('document.title = "remote script ran";')
    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args):
            pass

    handler = functools.partial(Quiet, directory=str(remote))
    with http.server.ThreadingHTTPServer((address, 0), handler) as server:
        threading.Thread(target=server.serve_forever, daemon=True).start()
        page = tmp_path / "local"
        page.mkdir()
        (page / "index.html").write_text(
            f'<html><head><title>blocked</title><script src="http://{address}:'
            f'{server.server_address[1]}/probe.js"></script></head><body></body></html>')
        try:
            with dashboard.serve(page) as base:
                reached = dashboard.dump_dom(base + "index.html", offline=False)
                blocked = dashboard.dump_dom(base + "index.html")
        finally:
            server.shutdown()
    assert "<title>remote script ran</title>" in reached
    assert "<title>blocked</title>" in blocked


def _report_frame() -> pd.DataFrame:
    """Two algorithms x two seeds on one task, with learning curves: every table and both
    plots of the report."""
    frames = []
    for algorithm, fps in (("ppo", 1000.0), ("dqn", 400.0)):
        for seed in (0, 1):
            rows = [{"metric": "train_fps", "value": fps + seed, "unit": "frames/s"},
                    {"metric": "collect_fps", "value": 2 * fps, "unit": "frames/s"},
                    {"metric": "env_time_s", "value": 6.0},
                    {"metric": "policy_time_s", "value": 1.0},
                    {"metric": "update_time_s", "value": 3.0},
                    {"metric": "final_return", "value": 400.0 + seed}]
            rows += [{"metric": "episode_return", "value": f / 10, "frames": f}
                     for f in (1000, 2000, 3000, 4000)]
            frames.append(results.make_records(rows, algorithm=algorithm, backend="gymnasium",
                                               task="cartpole", device="cpu", num_envs=8,
                                               seed=seed))
    return pd.concat(frames, ignore_index=True)


def test_browser_report_html_renders_offline(tmp_path):
    frame = _report_frame()
    written = report.write_report(frame, tmp_path)
    page = written["html"]
    assert dashboard.external_urls(page.read_text()) == []
    _with_probe(page)
    dom = dashboard.dump_dom(page.as_uri())
    tables = report.report_tables(frame)
    assert dom.count("<table") == len(tables) and len(tables) >= 3
    for name in tables:
        assert f"<h2>{html.escape(name, quote=False)}</h2>" in dom
    images = _probe(dom)["images"]
    # each plot decoded to the size matplotlib drew it at
    assert sorted(alt for alt, _, _ in images) == sorted(p.stem for p in written["plots"])
    assert len(images) == 2 and all(w > 300 and h > 200 for _, w, h in images)
