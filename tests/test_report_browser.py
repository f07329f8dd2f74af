"""report.html as a reader sees it: opened in headless Chromium (Debian's `chromium`, installed by
.ci/run when missing; skipped with a message without it). A probe script added to a copy of the page
reports, once the page has loaded, how many images it has and how many failed to render, its
tables and headings; Chromium's console must stay free of errors."""
from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from wmbench.cli import main

BROWSERS = ("chromium", "chromium-browser", "google-chrome")
PROBE = """<script>
window.addEventListener("load", function () {
  var imgs = Array.from(document.images);
  var broken = imgs.filter(function (i) { return !(i.complete && i.naturalWidth > 0); }).length;
  var heads = Array.from(document.querySelectorAll("h1,h2,h3")).map(function (h) { return h.textContent.trim(); });
  var out = document.createElement("pre"); out.id = "wmbench-probe";
  out.textContent = JSON.stringify({images: imgs.length, broken: broken,
                                    tables: document.querySelectorAll("table").length, headings: heads});
  document.body.appendChild(out);
});
</script>"""


def _browser() -> str:
    found = next((shutil.which(b) for b in BROWSERS if shutil.which(b)), None)
    if found is None:
        pytest.skip("no headless Chromium (apt-get install chromium): report.html not checked in a browser")
    return found


def _open(browser: str, page: Path, tmp: Path) -> tuple:
    probed = tmp / f"probe_{page.name}"
    text = page.read_text()
    probed.write_text(text.replace("</body>", PROBE + "</body>") if "</body>" in text else text + PROBE)
    run = subprocess.run([browser, "--headless", "--no-sandbox", "--disable-gpu", "--enable-logging=stderr",
                          "--v=0", "--virtual-time-budget=5000", f"--user-data-dir={tmp / 'profile'}",
                          "--dump-dom", probed.as_uri()], capture_output=True, text=True, timeout=120)
    found = re.search(r'<pre id="wmbench-probe">([^<]*)</pre>', run.stdout)
    assert found, f"the page did not finish loading in the browser: {run.stderr[-2000:]}"
    console = [line for line in run.stderr.splitlines() if "CONSOLE" in line or "Uncaught" in line]
    return json.loads(found.group(1).replace("&quot;", '"')), console


@pytest.fixture(scope="module")
def report_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("browser") / "run"
    assert main(["run", "--methods", "badnets", "--attacks", "none,knockoff", "--datasets", "synthetic",
                 "--profile", "smoke", "--executor", "serial", "--out", str(out), "--no-progress"]) == 0
    assert main(["report", str(out)]) == 0
    return out


def test_report_html_renders_every_table_and_figure(report_dir, tmp_path):
    browser = _browser()
    probe, console = _open(browser, report_dir / "report.html", tmp_path)
    pngs = sorted((report_dir / "figures").glob("*.png"))
    assert pngs and probe["images"] == len(pngs)  # every figure is on the page
    assert probe["broken"] == 0
    assert probe["tables"] >= 3
    for heading in ("Table 1", "Table 2", "Verdicts", "Figures"):
        assert any(h.startswith(heading) for h in probe["headings"]), (heading, probe["headings"])
    assert console == [], console
    shot = tmp_path / "report.png"
    subprocess.run([browser, "--headless", "--no-sandbox", "--disable-gpu", f"--user-data-dir={tmp_path / 'p2'}",
                    "--window-size=1280,2400", f"--screenshot={shot}", (report_dir / "report.html").as_uri()],
                   capture_output=True, timeout=120)
    assert shot.exists() and shot.stat().st_size > 10_000  # a rendered page, not a blank one


def test_the_probe_sees_a_broken_image_and_a_console_error(tmp_path):
    """The check can fail: a page with a missing image and a script error is caught."""
    browser = _browser()
    page = tmp_path / "bad.html"
    page.write_text('<html><body><h1>x</h1><img src="missing.png"><script>undefinedFunction();</script></body></html>')
    probe, console = _open(browser, page, tmp_path)
    assert probe["images"] == 1 and probe["broken"] == 1
    assert console, "the script error reached no console line"
