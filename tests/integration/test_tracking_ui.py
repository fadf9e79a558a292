"""TensorBoard's own web UI, started on 127.0.0.1 over event files the project's TensorBoard writer made for two
launches of one run (the second resumed from a checkpoint behind where the first had logged to), opened in
Debian's Chromium: the train/loss card draws one line through every logged step, once. (No Ray: the files are
written as rank 0 writes them; the Ray runs that write them are tests/integration/test_exact_resume.py's.)"""
import shutil

import pytest

from pipeline.tracking.plan import TrackingPlan
from pipeline.tracking.writers import Trackers

from .conftest import BIN, free_port, service

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def _launch(run_dir, steps, loss):
    t = Trackers.open(TrackingPlan(["tensorboard"], str(run_dir), "demo", "demo"), is_main=True)
    for s in steps:
        t.log({"epoch": 1 + s // 20, "step": s, "train/loss": loss(s), "train/lr": 1e-3}, s)
    t.close()


@pytest.mark.parametrize("steps", [(30, 18), (12, 4)], ids=["resumed-at-18-of-30", "resumed-at-4-of-12"])
def test_tensorboard_ui_draws_one_train_loss_line_through_every_step(tmp_path, steps):
    from playwright.sync_api import sync_playwright

    if CHROMIUM is None:
        pytest.fail("chromium is not installed: `make test` installs Debian's chromium (apt-get install chromium)")
    last, resumed = steps
    runs = tmp_path / "runs"
    _launch(runs / "demo", range(1, last - 5), lambda s: 5.0 / s)  # killed at last - 6
    _launch(runs / "demo", range(resumed + 1, last + 1), lambda s: 5.0 / s)
    port = free_port()
    with service([str(BIN / "tensorboard"), "--logdir", str(runs), "--host", "127.0.0.1", "--port", str(port)],
                 f"http://127.0.0.1:{port}/data/logdir", tmp_path / "tensorboard.log"), sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        errors = []
        page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
        # forceSVG: TensorBoard's SVG renderer, whose line is a path the test can read (WebGL draws pixels)
        page.goto(f"http://127.0.0.1:{port}/?forceSVG=true#timeseries", wait_until="networkidle")
        card = page.locator("card-view", has_text="train/loss").first
        card.wait_for(timeout=30_000)
        # the raw line and its smoothed twin: one point per logged step
        page.wait_for_function("""n => [...document.querySelectorAll('card-view')]
            .filter(c => c.textContent.includes('train/loss'))
            .some(c => [...c.querySelectorAll('svg path')]
                  .some(p => (p.getAttribute('d') || '').split(/[ML]/).length - 1 === n))""", arg=last,
                               timeout=30_000)
        table = card.inner_text()
        assert "demo/tensorboard" in table and f"\n{last}\n" in table.replace("\t", "\n"), table
        page.screenshot(path=str(tmp_path / "tensorboard.png"))
        browser.close()
    assert not errors, errors
