"""The review app in a real browser: Playwright drives Debian's headless Chromium against ``cpqa.py review``
run as a subprocess on a small build (``review_build``). Every action is checked on the page and in
the SQLite log; the server is killed with SIGKILL and started again.

``CPQA_SCREENSHOT=docs/review.png`` also saves a screenshot of the review page there (README's picture).
"""

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import soundfile as sf
from conftest import REPO
from review_build import XSS, cached_review_build

from build.commands.review.folder import open_build
from build.commands.review.store import Store

CHROMIUM = Path(
    "/usr/bin/chromium"
)  # Debian's package (setup.sh installs it); Playwright's download is not used


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """``cpqa.py review OUT`` in its own process, on a free local port."""

    def __init__(self, out: Path, log: Path, *extra: str):
        self.out, self.log, self.extra = out, log, extra
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc = None

    def start(self) -> "Server":
        command = [
            sys.executable,
            str(REPO / "cpqa.py"),
            "review",
            str(self.out),
            "--port",
            str(self.port),
            *self.extra,
        ]
        self.proc = subprocess.Popen(command, cwd=REPO, stdout=self.log.open("a"), stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"cpqa.py review exited with {self.proc.returncode}: {self.log.read_text()[-2000:]}"
                )
            try:
                with urllib.request.urlopen(self.url + "/", timeout=5) as response:
                    if response.status == 200:
                        return self
            except OSError:
                time.sleep(0.5)
        raise RuntimeError(f"cpqa.py review did not answer in 240 s: {self.log.read_text()[-2000:]}")

    def kill9(self) -> None:
        os.kill(self.proc.pid, signal.SIGKILL)
        assert self.proc.wait(timeout=30) == -signal.SIGKILL

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=30)


@pytest.fixture(scope="module")
def out(tmp_path_factory):
    copy = tmp_path_factory.mktemp("review-app") / "out"
    shutil.copytree(cached_review_build(tmp_path_factory), copy)
    return copy


@pytest.fixture(scope="module")
def server(out, tmp_path_factory):
    running = Server(out, tmp_path_factory.mktemp("logs") / "server.log").start()
    yield running
    running.stop()


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    assert CHROMIUM.exists(), f"{CHROMIUM} is missing: run setup.sh (it installs Debian's chromium)"
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(
            executable_path=str(CHROMIUM), args=["--no-sandbox", "--autoplay-policy=no-user-gesture-required"]
        )
        yield chromium
        chromium.close()


@pytest.fixture
def page(browser):
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    page = context.new_page()
    page.dialogs = []
    page.on("dialog", lambda dialog: (page.dialogs.append(dialog.message), dialog.dismiss()))
    yield page
    context.close()


def open_clip(page, server, annotator, clip):
    page.goto(f"{server.url}/?annotator={annotator}&clip={clip}")
    page.wait_for_selector(f"#cpqa-progress:has-text('{annotator}')", timeout=60_000)
    page.wait_for_selector(f".cpqa-clip[data-segment='{clip}']")


def next_id(out) -> int:
    return len(Store(out).actions()) + 1


def saved(page, number):
    page.wait_for_selector(f"#cpqa-status:has-text('Saved #{number}:')", timeout=30_000)


def choose(page, dropdown, option):
    page.click(f"#{dropdown} input")
    page.click(f"#{dropdown} li[aria-label='{option}']")


def fill(page, box, text):
    page.fill(f"#{box} textarea", text)


def test_the_player_loads_the_clip_and_a_word_click_plays_from_that_word(page, server, out):
    build = open_build(out)
    clip = build.clip("ami-0000")
    open_clip(page, server, "listener", "ami-0000")
    page.wait_for_function("document.getElementById('cpqa-audio').readyState >= 1", timeout=30_000)
    duration = page.evaluate("document.getElementById('cpqa-audio').duration")
    assert duration == pytest.approx(sf.info(str(build.audio_path(clip))).frames / 16000, abs=1e-6)
    assert duration == pytest.approx(clip.duration, abs=1 / 16000)  # 32.0 s: the clip's duration column
    word = page.locator(".cpqa-word", has_text="<script>x</script>")  # the word shows as text
    assert word.get_attribute("title") == "emotion: sad · gender: male · 15.02–15.31 s"
    word.click()
    page.wait_for_function(
        "(() => { const a = document.getElementById('cpqa-audio'); "
        "return !a.paused && a.currentTime >= 15.02; })()"
    )
    assert page.evaluate("document.getElementById('cpqa-audio').currentTime") < 17
    assert page.locator(".cpqa-word:not([data-start])").inner_text() == "uh"  # untimed: plays nothing


def test_every_action_is_on_disk_and_survives_a_reload_and_kill_9(page, server, out, browser):
    open_clip(page, server, "alice", "ami-0000")
    n = next_id(out)
    page.click("#cpqa-accept")  # pair 1 is selected: the first undecided
    saved(page, n)
    fill(page, "cpqa-question", "Is it a man or a woman speaking?")  # pair 2 is selected now
    page.click("#cpqa-edit")
    saved(page, n + 1)
    page.click("#cpqa-reject")  # pair 3 selected; no reason yet: refused, nothing written
    page.wait_for_selector("#cpqa-status .cpqa-error:has-text('a reject needs a reason')")
    page.click("#cpqa-reason label:has-text('duplicate')")
    page.click("#cpqa-reject")
    saved(page, n + 2)
    fill(page, "cpqa-h-question", "Does she sound bored?")
    fill(page, "cpqa-h-answer", "No, pleased.")
    page.click("#cpqa-h-add")
    saved(page, n + 3)
    page.click("#cpqa-check label:has-text('no')")
    choose(page, "cpqa-heard-emotion", "sad")
    choose(page, "cpqa-heard-gender", "female")
    page.click("#cpqa-check-save")
    saved(page, n + 4)
    actions = [a for a in Store(out).actions() if a.annotator == "alice"]
    assert [(a.kind, a.target, a.verdict, a.reason, a.question, a.emotion, a.gender) for a in actions] == [
        ("pair", "ami-0000-q00", "accept", None, None, None, None),
        ("pair", "ami-0000-q01", "edit", None, "Is it a man or a woman speaking?", None, None),
        ("pair", "ami-0000-q02", "reject", "duplicate", None, None, None),
        ("human", None, None, None, "Does she sound bored?", None, None),
        ("label", None, "no", None, None, "sad", "female"),
    ]
    page.reload()
    page.wait_for_selector("#cpqa-progress:has-text('alice')", timeout=60_000)
    shows_every_action(page)
    screenshot(page)
    server.kill9()
    server.start()
    again = browser.new_page()
    open_clip(again, server, "alice", "ami-0000")
    shows_every_action(again)
    assert len([a for a in Store(out).actions() if a.annotator == "alice"]) == 5


def shows_every_action(page):
    pairs = page.inner_text("#cpqa-pairs")
    assert re.findall(r"you: ([a-z]+(?: \([a-z ]+\))?)", pairs) == [
        "accepted",
        "edited",
        "rejected (duplicate)",
    ]
    assert "edited to: Q: Is it a man or a woman speaking? A: A woman. [speaker]" in pairs
    assert page.inner_text("#cpqa-human-list") == "Q: Does she sound bored?\nA: No, pleased. [emotion]"
    assert page.inner_text("#cpqa-label-status") == "no: I hear sad, female"


def screenshot(page):
    target = os.environ.get("CPQA_SCREENSHOT")
    if target:
        path = REPO / target
        path.parent.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(path))
        assert path.stat().st_size < 300_000


def test_two_annotators_at_once_are_both_recorded(browser, server, out):
    pages = []
    for name in ("carol", "dan"):
        page = browser.new_context(viewport={"width": 1280, "height": 900}).new_page()
        open_clip(page, server, name, "rav-0000")
        pages.append(page)
    pages[0].click("#cpqa-accept", no_wait_after=True)
    pages[1].click("#cpqa-reason label:has-text('wrong answer')")
    pages[1].click("#cpqa-reject", no_wait_after=True)
    for page in pages:
        page.wait_for_selector("#cpqa-status:has-text('Saved #')", timeout=30_000)
    mine = {
        (a.annotator, a.target, a.verdict) for a in Store(out).actions() if a.annotator in ("carol", "dan")
    }
    assert mine == {("carol", "rav-0000-q00", "accept"), ("dan", "rav-0000-q00", "reject")}
    pages[0].reload()
    pages[0].wait_for_selector("#cpqa-pairs:has-text('others: 1')", timeout=60_000)
    for page in pages:
        page.context.close()


def test_hostile_text_is_shown_as_text_and_runs_nothing(page, server, out):
    open_clip(page, server, "eve", "ami-0001")
    first = page.locator("#cpqa-pairs .cpqa-q").first
    assert first.inner_text() == f"Q: {XSS}"
    assert (
        page.locator("#cpqa-pairs img").count() == 0
        and page.locator("#cpqa-pairs b", has_text="tags").count() == 0
    )
    assert page.input_value("#cpqa-question textarea") == XSS
    n = next_id(out)
    fill(page, "cpqa-h-question", XSS)
    fill(page, "cpqa-h-answer", "<svg onload=alert(3)>")
    page.click("#cpqa-h-add")
    saved(page, n)
    assert page.inner_text("#cpqa-human-list") == f"Q: {XSS}\nA: <svg onload=alert(3)> [emotion]"
    page.wait_for_timeout(500)
    assert page.dialogs == [] and page.locator("#cpqa-human-list svg").count() == 0


def test_keys_accept_choose_a_reason_and_reject(page, server, out):
    open_clip(page, server, "frank", "ami-0001")
    n = next_id(out)
    page.locator("body").press("a")
    saved(page, n)
    page.locator("body").press("3")
    page.locator("body").press("r")
    saved(page, n + 1)
    mine = [(a.target, a.verdict, a.reason) for a in Store(out).actions() if a.annotator == "frank"]
    assert mine == [("ami-0001-q00", "accept", None), ("ami-0001-q01", "reject", "presupposes a transcript")]
    page.locator("body").press("p")  # the previous clip
    page.wait_for_selector(".cpqa-clip[data-segment='ami-0000']")
    page.locator("body").press("n")  # the next clip of frank's queue: ami-0001 still lacks his label check
    page.wait_for_selector(".cpqa-clip[data-segment='ami-0001']")


@pytest.mark.parametrize(
    "options, message",
    [
        (
            ["--host", "0.0.0.0"],
            "cpqa review: --host 0.0.0.0 would open the review to the network: give --auth FILE "
            "(user:password lines) or --auth env:NAME, or keep the default 127.0.0.1 "
            "(--debug shows the traceback)",
        ),
        (
            ["--share"],
            "cpqa review: --share makes the review reachable by anyone with the link: give --auth FILE "
            "(user:password lines) or --auth env:NAME (--debug shows the traceback)",
        ),
    ],
)
def test_a_non_local_host_or_a_share_link_without_auth_is_refused(tmp_path, options, message):
    result = subprocess.run(
        [sys.executable, str(REPO / "cpqa.py"), "review", str(tmp_path), *options],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert (result.returncode, result.stdout, result.stderr) == (2, "", message + "\n")


def test_with_auth_the_logged_in_user_is_the_annotator(browser, out, tmp_path):
    auth = tmp_path / "users.txt"
    auth.write_text("# annotators\nalice:s3cret\n\nbob:pass:with:colons\n")
    server = Server(out, tmp_path / "auth.log", "--auth", str(auth)).start()
    try:
        page = browser.new_context().new_page()
        page.goto(f"{server.url}/?annotator=mallory&clip=ami-0001")  # a name in the URL changes nothing
        page.fill("input[type=text]", "bob")
        page.fill("input[type=password]", "pass:with:colons")
        page.click("button:has-text('Login')")
        page.wait_for_selector("#cpqa-progress:has-text('bob')", timeout=60_000)
        assert page.input_value("#cpqa-name textarea") == "bob"
        n = next_id(out)
        page.click("#cpqa-accept")
        saved(page, n)
        assert [(a.annotator, a.target) for a in Store(out).actions()[n - 1 :]] == [("bob", "ami-0001-q00")]
        audio = open_build(out).audio_path(open_build(out).clips[0])
        with pytest.raises(urllib.error.HTTPError) as refused:  # no login, no audio
            urllib.request.urlopen(f"{server.url}/gradio_api/file={audio}")
        assert refused.value.code in (401, 403)
    finally:
        server.stop()
