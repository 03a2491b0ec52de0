"""The chat page in headless Chromium (Debian's `chromium`, driven by Playwright; no browser download).

Needs `pip install playwright` and `apt-get install -y chromium`; skipped when either is missing.
Set NANOCHAT_SCREENSHOT=docs/chat_page.png to (re)write the screenshot in docs/serving.md.
"""

import os
import shutil
from pathlib import Path

import pytest

from nanochat_hf.engine import Engine
from nanochat_hf.modeling import pop_cache

playwright = pytest.importorskip("playwright.sync_api")
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="no chromium executable (apt-get install -y chromium)")
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def story_engine(tokenizer, delay: float = 0.02) -> Engine:
    """Scripted model: 'Let me compute it: <python>7*6</python><output>42</output> The answer is 42!'

    It predicts by position since the prompt (learned at prefill), so any question gets this answer;
    the calculator output it "predicts" is overridden by the engine's forced tokens.
    """
    import time

    import torch
    from test_engine import ScriptedLM

    sp = tokenizer.convert_tokens_to_ids
    enc = lambda s: tokenizer.encode(s, add_special_tokens=False)  # noqa: E731
    answer = [*enc("Let me compute it:"), sp("<|python_start|>"), *enc("7*6"), sp("<|python_end|>"),
              sp("<|output_start|>"), *enc("42"), sp("<|output_end|>"),
              *enc(" The answer is 42!"), sp("<|assistant_end|>")]

    class StoryLM(ScriptedLM):
        def forward(self, input_ids, position_ids=None, cache=None, **kw):
            cache = pop_cache(cache, kw)
            time.sleep(delay)  # a little delay per step so the stream is visibly a stream
            b, t = input_ids.shape
            for layer in range(2):
                cache.update(torch.zeros(b, 1, t, 4), torch.zeros(b, 1, t, 4), layer)
            last = int(position_ids[0, -1])
            if t > 1:
                self.start = last  # the prompt's last position
            step = min(last - self.start, len(answer) - 1)
            logits = torch.full((b, 1, self.vocab), -10.0)
            logits[:, :, answer[step]] = 10.0
            return type("Out", (), {"logits": logits})()

    return Engine(StoryLM({}, len(tokenizer)), tokenizer)


@pytest.fixture(scope="module")
def page_url(tiny_tokenizer):
    from test_serve import live_server

    with live_server(story_engine(tiny_tokenizer)) as base:
        yield base


@pytest.fixture(scope="module")
def slow_page_url(tiny_tokenizer):
    """The same story at 0.3 s a token (~6 s in all): still streaming when a loaded machine's browser clicks Stop."""
    from test_serve import live_server

    with live_server(story_engine(tiny_tokenizer, delay=0.3)) as base:
        yield base


@pytest.fixture(scope="module")
def browser():
    with playwright.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=FLAGS, headless=True)
        yield b
        b.close()


def test_chat_page_streams_answer_with_tool_call(page_url, browser, tmp_path):
    page = browser.new_page(viewport={"width": 900, "height": 640})
    outside = []
    page.on("request", lambda r: outside.append(r.url) if not r.url.startswith(page_url) else None)
    page.goto(page_url + "/")
    page.fill("#input", "What is 7 times 6?")
    page.keyboard.press("Enter")
    page.wait_for_selector("#stop:not([hidden])")  # streaming has started: the stop button shows
    page.wait_for_selector(".msg.assistant .actions button:has-text('Regenerate')", timeout=30_000)
    answer = page.inner_text(".msg.assistant .body")
    assert "Let me compute it:" in answer and "The answer is 42!" in answer
    assert page.inner_text(".tool.python") == "7*6" and page.inner_text(".tool.python_output") == "42"
    shot = Path(os.environ.get("NANOCHAT_SCREENSHOT") or tmp_path / "chat_page.png")
    shot.parent.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(shot))
    assert shot.stat().st_size > 5_000

    # regenerate replaces the last answer; edit puts the question back and drops what followed
    page.click("text=Regenerate")
    page.wait_for_selector(".msg.assistant .actions button:has-text('Regenerate')", timeout=30_000)
    assert page.locator(".msg").count() == 2
    page.click("text=Edit")
    assert page.input_value("#input") == "What is 7 times 6?" and page.locator(".msg").count() == 0
    page.keyboard.press("Enter")
    page.wait_for_selector("text=The answer is 42!", timeout=30_000)
    page.click("#new")
    assert page.locator(".msg").count() == 0
    assert outside == []  # the page fetched nothing from outside this server
    page.close()


def test_stop_button_and_phone_width(slow_page_url, browser):
    page = browser.new_page(viewport={"width": 375, "height": 700})
    page.goto(slow_page_url + "/")
    page.fill("#input", "Hi")
    page.keyboard.press("Enter")
    page.wait_for_selector(".msg.assistant .body:not(:empty)")
    page.click("#stop")
    page.wait_for_selector("#stop", state="hidden", timeout=3_000)  # well before the story's end
    assert page.is_enabled("#send")
    assert "The answer is 42!" not in page.inner_text(".msg.assistant .body")  # the stream stopped
    overflow = page.evaluate("document.documentElement.scrollWidth - window.innerWidth")
    assert overflow <= 0, f"the page is {overflow}px wider than a phone screen"
    page.close()


KEY = "page-key-8e1d"


@pytest.fixture(scope="module")
def keyed_page_url(tiny_tokenizer):
    from test_serve import live_server

    from nanochat_hf.serve.app import Access

    with live_server(story_engine(tiny_tokenizer), access=Access.for_bind("127.0.0.1", api_key=KEY)) as base:
        yield base


def test_chat_page_asks_for_the_key_once_and_keeps_it_for_the_tab(keyed_page_url, browser):
    page = browser.new_page()
    asked = []
    page.on("dialog", lambda d: (asked.append(d.message), d.accept(KEY)))
    page.goto(keyed_page_url + "/")
    page.wait_for_function("document.getElementById('model').textContent === 'tiny'")  # /info answered with the key
    page.fill("#input", "What is 7 times 6?")
    page.keyboard.press("Enter")
    page.wait_for_selector("text=The answer is 42!", timeout=30_000)
    assert page.evaluate("sessionStorage.getItem('nanochat_hf_api_key')") == KEY
    page.reload()  # same tab: the key is kept
    page.wait_for_function("document.getElementById('model').textContent === 'tiny'")
    assert len(asked) == 1 and "API key" in asked[0]
    page.close()


def test_chat_page_asks_again_after_a_wrong_key(keyed_page_url, browser):
    page = browser.new_page()  # a new tab: nothing stored
    answers, asked = iter(["wrong", "", KEY]), []
    page.on("dialog", lambda d: (asked.append(d.message), d.accept(next(answers))))
    page.goto(keyed_page_url + "/")
    page.wait_for_function("sessionStorage.getItem('nanochat_hf_api_key') === 'wrong'")
    page.fill("#input", "Hi")
    page.keyboard.press("Enter")  # the stored key is wrong: asked again, cancelled, so the error shows
    page.wait_for_selector(".error:has-text('API key')", timeout=30_000)
    assert page.inner_text("#model") == ""
    page.fill("#input", "Hi")  # the question is still unanswered: asked again, the right key this time
    page.keyboard.press("Enter")
    page.wait_for_selector("text=The answer is 42!", timeout=30_000)
    assert len(asked) == 3 and "Wrong API key" in asked[1] and "Wrong API key" in asked[2]
    page.close()
