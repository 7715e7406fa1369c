"""The labelling page in a real browser: Debian's Chromium (/usr/bin/chromium, `make setup` installs it) driven by
Playwright, against `eedi serve`'s app under uvicorn on a free loopback port, on the shared run's real models.

Fills the form, sees the ranked list, accepts a suggestion, finds the label in the downloaded train.csv; and a
question holding <script> (and an onerror handler) is shown as text and never runs.

Set EEDI_SERVE_SCREENSHOT=docs/serve.png to also save a screenshot of the page with results (for the docs)."""

from __future__ import annotations

import io
import os
import shutil
import socket
import threading
import time
from pathlib import Path

import pandas as pd
import pytest
from serve_support import sample_items, shared_predictor

from eedi.serve.app import STATIC, create_app
from eedi.serve.labels import LabelStore

CHROMIUM = Path(os.environ.get("EEDI_CHROMIUM", "/usr/bin/chromium"))
# As the machine notes prescribe for Debian's Chromium as root on a closed network: no sandbox (root), no
# background connections (refused here, many at a time), no first-run or sync work.
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
KATEX_BUNDLED = (STATIC / "vendor" / "katex" / "katex.min.js").is_file()

pytestmark = pytest.mark.skipif(
    not CHROMIUM.is_file() or shutil.which(str(CHROMIUM)) is None,
    reason=f"{CHROMIUM} not installed: `make setup` installs Debian's chromium",
)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def server(reranked_sample: Path, tmp_path_factory):
    """uvicorn in a thread, serving the real predictor; labels in a temporary store (the shared run is read-only)."""
    import uvicorn

    predictor = shared_predictor(str(reranked_sample), True)
    store = LabelStore(tmp_path_factory.mktemp("labels") / "labels.sqlite", predictor.run)
    port = _free_port()
    instance = uvicorn.Server(
        uvicorn.Config(create_app(predictor, store), host="127.0.0.1", port=port, log_level="warning")
    )
    thread = threading.Thread(target=instance.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not instance.started:
        if time.monotonic() > deadline or not thread.is_alive():
            pytest.fail("uvicorn did not start within 30 s")
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}", store
    instance.should_exit = True
    thread.join(timeout=10)


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        # launch_persistent_context: a fresh, empty --user-data-dir of our own for every run.
        context = playwright.chromium.launch_persistent_context(
            str(tmp_path_factory.mktemp("chromium-profile")),
            executable_path=str(CHROMIUM),
            args=CHROMIUM_ARGS,
            headless=True,
            accept_downloads=True,
            viewport={"width": 1360, "height": 1000},
            # The page's Content-Security-Policy would block injected scripts too; bypassing it here shows that
            # textContent alone keeps them inert (and lets Playwright evaluate its own waits).
            bypass_csp=True,
        )
        yield context
        context.close()


@pytest.fixture
def page(browser, server):
    url, _ = server
    page = browser.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda err: errors.append(str(err)))
    page.on("console", lambda msg: errors.append(msg.text) if msg.type == "error" else None)
    page.goto(url + "/")
    page.wait_for_selector("body[data-ready='1']")
    page.wait_for_function("document.getElementById('health').textContent.startsWith('run ')")
    yield page
    page.close()
    assert errors == [], f"the page logged errors: {errors}"


def fill(page, item: dict, labeller: str = "Ana Tester") -> None:
    page.fill("#labeller", labeller)
    page.fill("#construct", item["construct_name"])
    page.fill("#subject", item["subject_name"])
    page.fill("#question", item["question_text"])
    for x in "abcd":
        page.fill(f"#answer-{x}", item[f"answer_{x}_text"])
    page.check(f"#correct-{item['correct_answer'].lower()}")
    page.check(f"#wrong-{item['wrong_answer'].lower()}")


def test_fill_rank_accept_and_find_the_label_in_the_export(page, server, reranked_sample: Path):
    _, store = server
    mapping = pd.read_parquet(reranked_sample / "misconceptions.parquet")
    names = dict(zip(mapping["MisconceptionId"].astype(int), mapping["MisconceptionName"]))
    item = sample_items(3)[2]
    fill(page, item)
    page.click("#suggest")
    page.wait_for_function("document.querySelectorAll('#results li').length === 25", timeout=120_000)
    rows = page.locator("#results li")
    shown = [int(rows.nth(i).get_attribute("data-misconception-id")) for i in range(25)]
    assert len(set(shown)) == 25 and set(shown) <= set(names)
    assert "retriever + reranker" in page.text_content("#results-meta")
    # Score bars: a retriever bar per result (the best retriever score fills it), a reranker bar per reranked one.
    assert page.locator("#results li .bar.score").count() == 25
    widths = [rows.nth(i).locator(".bar.score > span").get_attribute("style") for i in range(25)]
    assert "width: 100%;" in widths
    depth = shared_predictor(str(reranked_sample), True).config.reranker.depth
    assert page.locator("#results li .bar.reranker").count() == depth
    if KATEX_BUNDLED:  # the sample's questions are LaTeX: the preview shows KaTeX's rendering
        assert page.locator("#question-preview .katex").count() > 0

    chosen = rows.nth(1)
    chosen.locator("button.accept").click()
    page.wait_for_selector("#labels tbody tr")
    assert "accepted" in (chosen.get_attribute("class") or "")
    first_row = [c.strip() for c in page.locator("#labels tbody tr").first.locator("td").all_text_contents()]
    assert first_row[2] == "Ana Tester"
    assert first_row[5].startswith(str(shown[1]) + " ")
    assert first_row[6] == "2"  # the model's rank of the accepted misconception

    with page.expect_download() as download:
        page.click("#download")
    exported = pd.read_csv(io.StringIO(Path(download.value.path()).read_text()), dtype=str, keep_default_na=False)
    row = exported[exported["QuestionText"] == item["question_text"]]
    assert len(row) == 1
    assert row.iloc[0][f"Misconception{item['wrong_answer']}Id"] == str(shown[1])
    assert row.iloc[0]["CorrectAnswer"] == item["correct_answer"]
    stored = store.labels(1)[0]
    assert (stored["labeller"], stored["model_rank"], stored["misconception_id"]) == ("Ana Tester", 2, shown[1])

    if os.environ.get("EEDI_SERVE_SCREENSHOT"):
        page.locator("#results li").nth(1).scroll_into_view_if_needed()
        page.evaluate("window.scrollTo(0, 0)")
        page.screenshot(path=os.environ["EEDI_SERVE_SCREENSHOT"], full_page=True)


def test_script_in_a_question_is_text_and_never_runs(page, server):
    _, store = server
    hostile = (
        '<script>window.__pwned = 1</script><img src=x onerror="window.__pwned = 2"> '
        "What is \\( \\frac{1}{2} + \\frac{1}{4} \\)?"
    )
    item = {**sample_items(1)[0], "question_text": hostile, "answer_b_text": "<b onmouseover=alert(1)>bold</b>"}
    fill(page, item, labeller="<i>Eve</i>")
    preview = page.locator("#question-preview")
    assert "<script>window.__pwned = 1</script>" in preview.text_content()
    assert preview.locator("script, img").count() == 0
    if KATEX_BUNDLED:
        # the LaTeX still renders beside the literal markup
        assert preview.locator(".preview-question .katex").count() == 1
    page.click("#suggest")
    page.wait_for_function("document.querySelectorAll('#results li').length === 25", timeout=120_000)
    page.locator("#results li button.accept").first.click()
    page.wait_for_function("document.querySelector('#labels tbody tr td:nth-child(3)')?.textContent === '<i>Eve</i>'")
    labels = page.locator("#labels tbody")
    assert labels.locator("script, img, i, b").count() == 0
    assert "<script>" in labels.locator("tr").first.text_content()
    assert page.evaluate("window.__pwned") is None
    assert store.labels(1)[0]["question_text"] == hostile  # stored as typed, escaped only on the page


def test_page_works_without_katex_showing_latex_as_typed(browser, server):
    """KaTeX is fetched at set-up and git-ignored: without it the page must still rank and accept."""
    url, _ = server
    page = browser.new_page()
    page.route("**/static/vendor/katex/**", lambda route: route.fulfill(status=404, body="not bundled"))
    try:
        page.goto(url + "/")
        page.wait_for_selector("body[data-ready='1']")
        item = {**sample_items(1)[0], "question_text": r"Work out \( \frac{3}{4} - \frac{1}{8} \)"}
        fill(page, item)
        preview = page.locator("#question-preview .preview-question")
        assert preview.text_content() == item["question_text"] and preview.locator(".katex").count() == 0
        page.click("#suggest")
        page.wait_for_function("document.querySelectorAll('#results li').length === 25", timeout=120_000)
        assert page.evaluate("typeof window.renderMathInElement") == "undefined"
    finally:
        page.close()
