"""The web page in a real browser (Debian's Chromium, driven by Playwright) against real `wanserve api` and
`wanserve worker` processes serving the default model: what a person types and clicks, and what they see.

One worker and two APIs on the same Redis serve the whole module: one API open, one with an API key.
Each test starts with no videos and a fresh browser context (its own local storage).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
from playwright.sync_api import Browser, Page, Request, Route, expect
from redis import Redis

from service.api.routes_web import CONTENT_SECURITY_POLICY
from tests.processes import Processes, answers, free_port, wait_until

pytestmark = pytest.mark.slow

KEY = "sk-test-1"
SHAPE = "a red square moving right"

# Installed before the page's own script: every value each progress bar takes (a MutationObserver with old
# values, so none is lost between two callbacks), every text of each item's status detail, and every
# Content-Security-Policy violation.
PROBE = """
window.__probe = {bars: [], details: [], violations: []};
document.addEventListener("securitypolicyviolation", (event) => {
  window.__probe.violations.push(`${event.violatedDirective} ${event.blockedURI}`);
});
new MutationObserver((records) => {
  for (const record of records) {
    const target = record.target;
    const item = target.closest && target.closest("li.video");
    if (!item) continue;
    if (record.type === "attributes" && target.tagName === "PROGRESS") {
      const now = target.getAttribute("value");
      window.__probe.bars.push({id: item.dataset.id, old: record.oldValue, now});
    } else if (record.type === "childList" && target.classList.contains("detail")) {
      window.__probe.details.push({id: item.dataset.id, text: target.textContent});
    }
  }
}).observe(document, {subtree: true, childList: true, attributes: true, attributeFilter: ["value"],
                      attributeOldValue: true});
"""

# The player has decoded frames and its clock runs; what it holds.
PLAYING = """() => {
  const v = document.getElementById("player-video");
  return v.readyState >= 2 && v.currentTime > 0;
}"""
PLAYER = """(() => {
  const v = document.getElementById("player-video");
  return {ready: v.readyState, duration: v.duration, src: v.currentSrc, loop: v.loop, width: v.videoWidth};
})()"""


@dataclass
class Stack:
    open: str
    """An API with no keys."""
    keyed: str
    """An API that needs ``Authorization: Bearer sk-test-1``."""


@dataclass
class Tab:
    page: Page
    requests: list[Request] = field(default_factory=list)

    @classmethod
    def of(cls, page: Page) -> Tab:
        """The page, with the probe installed and its requests recorded from the first one on."""
        tab = cls(page)
        page.add_init_script(PROBE)
        page.on("request", lambda request: tab.requests.append(request))
        return tab

    def paths(self, since: int = 0) -> list[str]:
        """The method and path (with query) of every request from the ``since``-th on."""
        return [f"{r.method} {_path(r.url)}" for r in self.requests[since:]]

    def bar_values(self, video_id: str) -> list[int]:
        """The values the item's progress bar took, in order, repeats removed."""
        records = [r for r in self.page.evaluate("window.__probe.bars") if r["id"] == video_id]
        values = [int(r["old"]) for r in records if r["old"] is not None] + [int(records[-1]["now"])]
        return [v for i, v in enumerate(values) if i == 0 or v != values[i - 1]]

    def details(self, video_id: str) -> list[str]:
        return [r["text"] for r in self.page.evaluate("window.__probe.details") if r["id"] == video_id]

    def assert_stayed_home(self, base: str) -> None:
        """Every request went to the page's own origin, and nothing broke its Content-Security-Policy."""
        origin = urlsplit(base)
        foreign = [
            r.url
            for r in self.requests
            if urlsplit(r.url).scheme not in ("blob", "data")
            and (urlsplit(r.url).scheme, urlsplit(r.url).netloc) != (origin.scheme, origin.netloc)
        ]
        assert foreign == []
        assert self.page.evaluate("window.__probe.violations") == []


def _path(url: str) -> str:
    parts = urlsplit(url)
    return parts.path + (f"?{parts.query}" if parts.query else "")


@pytest.fixture(scope="module")
def stack(redis_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    root = tmp_path_factory.mktemp("web")
    redis = Redis.from_url(redis_url)
    redis.flushdb()
    processes = Processes(root)
    # WANSERVE_MODEL empty: the default model (the shapes model), not the tests' random one.
    env = {"WANSERVE_REDIS_URL": redis_url, "WANSERVE_DATA_DIR": str(root / "data"), "WANSERVE_MODEL": ""}
    stack = Stack(open=f"http://127.0.0.1:{free_port()}", keyed=f"http://127.0.0.1:{free_port()}")
    try:
        apis = [
            processes.start("api", "--port", _port(stack.open), env=env),
            processes.start("api", "--port", _port(stack.keyed), env={**env, "WANSERVE_API_KEYS": KEY}),
        ]
        processes.start("worker", env=env)
        for api, base in zip(apis, (stack.open, stack.keyed), strict=True):
            wait_until(lambda: answers(f"{base}/readyz") or api.poll() is not None, 60, "the API")  # noqa: B023
            assert api.poll() is None, processes.log(api)
        wait_until(lambda: _idle_workers(stack.open) > 0, 120, "the worker to load the model")
        yield stack
    finally:
        processes.stop_all()
        redis.flushdb()


def _port(base: str) -> str:
    return base.rsplit(":", 1)[1]


def _idle_workers(base: str) -> int:
    model = httpx.get(f"{base}/v1/models").json()["data"][0]
    return int(model["workers"].get("idle", 0))


@pytest.fixture(autouse=True)
def no_videos(stack: Stack) -> None:
    """Every test starts with empty lists (a running video is stopped at its next step)."""
    for base, headers in ((stack.open, {}), (stack.keyed, {"Authorization": f"Bearer {KEY}"})):
        while videos := httpx.get(f"{base}/v1/videos?limit=100", headers=headers).json()["data"]:
            for video in videos:
                httpx.delete(f"{base}/v1/videos/{video['id']}", headers=headers)


@pytest.fixture
def tab(browser: Browser) -> Iterator[Tab]:
    context = browser.new_context(viewport={"width": 1200, "height": 900}, accept_downloads=True)
    context.set_default_timeout(15_000)
    page = context.new_page()
    opened = Tab.of(page)
    yield opened
    context.close()


def _is_create(response: Any) -> bool:
    return bool(response.request.method == "POST" and _path(response.url) == "/v1/videos")


def _create(page: Page, submit: str = "click") -> str:
    """Submit the form (a click on Generate, or Ctrl+Enter in the prompt); the new video's id."""
    with page.expect_response(_is_create) as created:
        if submit == "click":
            page.get_by_role("button", name="Generate").click()
        else:
            page.get_by_label("Prompt", exact=True).press(submit)
    assert created.value.status == 200, created.value.text()
    return str(created.value.json()["id"])


def _item(page: Page, video_id: str) -> Any:
    return page.locator(f'li.video[data-id="{video_id}"]')


def _listed(page: Page) -> list[str]:
    return [str(item.get_attribute("data-id")) for item in page.locator("li.video").all()]


def test_a_prompt_is_followed_through_its_events_to_a_playing_video(stack: Stack, tab: Tab) -> None:
    page = tab.page
    page.goto(stack.open)
    # The model's defaults fill the form.
    expect(page.get_by_label("Size")).to_have_value("64x64")
    expect(page.get_by_label("Frames", exact=True)).to_have_value("17")
    expect(page.get_by_label("Steps")).to_have_value("20")
    expect(page.locator("#model-line")).to_contain_text("wan2.1-tiny-shapes")

    page.get_by_label("Prompt", exact=True).fill(SHAPE)
    page.get_by_label("Steps").fill("8")
    created_at = len(tab.requests)
    video_id = _create(page, submit="Control+Enter")
    item = _item(page, video_id)
    expect(item).to_have_attribute("data-status", "completed", timeout=90_000)
    expect(item.locator(".status")).to_have_text("completed")

    # The bar moved with the denoising steps, to 100, and nothing but the event stream told the page so:
    # after the create it asked for no video object and no list, only the stream (and then the media).
    values = tab.bar_values(video_id)
    assert values[-1] == 100 and values == sorted(values), values
    assert len({v for v in values if 0 < v < 100}) >= 3, values
    after = tab.paths(created_at)
    assert f"GET /v1/videos/{video_id}/events" in after, after
    assert not [p for p in after if p == f"GET /v1/videos/{video_id}" or p.startswith("GET /v1/videos?")]
    # While it ran, its line said how far it was, at which stage, and how long it had left.
    details = tab.details(video_id)
    print(f"\nthe bar, from the events: {values}\nits line: {details}")
    assert any(
        re.search(r"\d+% · denoising · (about \d+ s left|almost done|estimating)", d) for d in details
    ), details

    # It plays in the player from a blob: URL (fetched with the page's headers), looping, 17 frames at 16 fps.
    page.wait_for_function(PLAYING, timeout=20_000)
    player = page.evaluate(PLAYER)
    assert player["ready"] >= 2 and player["src"].startswith("blob:"), player
    assert player["duration"] == pytest.approx(17 / 16, abs=0.02), player
    assert player["loop"] and player["width"] == 64, player
    expect(page.locator("#player-prompt")).to_have_text(SHAPE)
    expect(page.locator("#player-params")).to_contain_text("8")
    expect(page.locator("#player-stages")).to_contain_text("denoise")
    thumbnail_width = item.locator(".thumb img").evaluate("img => img.complete ? img.naturalWidth : 0")
    assert thumbnail_width == 64

    with page.expect_download() as download:
        item.get_by_role("button", name="Download").click()
    assert download.value.suggested_filename == f"{video_id}.mp4"
    assert Path(download.value.path()).read_bytes()[4:8] == b"ftyp"

    # "Again": the form takes the video's settings, with another seed.
    seed = httpx.get(f"{stack.open}/v1/videos/{video_id}").json()["seed"]
    item.get_by_role("button", name="Again").click()
    expect(page.get_by_label("Prompt", exact=True)).to_have_value(SHAPE)
    expect(page.get_by_label("Steps")).to_have_value("8")
    new_seed = page.get_by_label("Seed").input_value()
    assert new_seed and int(new_seed) != seed
    tab.assert_stayed_home(stack.open)


def test_cancel_ends_a_queued_and_a_running_video_cancelled(stack: Stack, tab: Tab) -> None:
    page = tab.page
    page.goto(stack.open)
    expect(page.get_by_label("Size")).to_have_value("64x64")
    page.get_by_label("Frames", exact=True).fill("33")
    page.get_by_label("Steps").fill("100")
    page.get_by_label("Prompt", exact=True).fill("a blue circle moving up")
    running = _create(page)
    page.get_by_label("Prompt", exact=True).fill("a green triangle moving left")
    waiting = _create(page)

    expect(_item(page, running)).to_have_attribute("data-status", "in_progress", timeout=60_000)
    expect(_item(page, waiting).locator(".detail")).to_have_text("#1 in the queue")
    _item(page, waiting).get_by_role("button", name="Cancel").click()
    expect(_item(page, waiting)).to_have_attribute("data-status", "cancelled")

    page.wait_for_function(
        f"() => document.querySelector('li.video[data-id=\"{running}\"] progress').value > 0", timeout=30_000
    )
    _item(page, running).get_by_role("button", name="Cancel").click()
    expect(_item(page, running)).to_have_attribute("data-status", "cancelled", timeout=30_000)
    for video_id in (running, waiting):
        expect(_item(page, video_id).locator(".status")).to_have_text("cancelled")
        expect(_item(page, video_id).get_by_role("button", name="Cancel")).to_be_hidden()
        expect(_item(page, video_id).get_by_role("button", name="Download")).to_be_hidden()
        assert httpx.get(f"{stack.open}/v1/videos/{video_id}").json()["status"] == "cancelled"
    assert tab.bar_values(running)[-1] < 100


def test_delete_leaves_the_list_and_the_list_persists_across_reloads(stack: Stack, tab: Tab) -> None:
    # Twelve videos, one step each, made by a script: more than a page (10), and more running or queued
    # than the page follows at once (4 streams), so some wait their turn.
    ids = [
        httpx.post(
            f"{stack.open}/v1/videos", json={"prompt": f"{SHAPE} {n}", "num_inference_steps": 1}
        ).json()["id"]
        for n in range(12)
    ]
    newest_first = ids[::-1]
    page = tab.page
    page.goto(stack.open)
    items = page.locator("li.video")
    expect(items).to_have_count(10)
    assert _listed(page) == newest_first[:10]
    page.get_by_role("button", name="Load more").click()
    expect(items).to_have_count(12)
    expect(page.get_by_role("button", name="Load more")).to_be_hidden()
    assert _listed(page) == newest_first

    gone = newest_first[1]
    _item(page, gone).get_by_role("button", name="Delete").click()
    expect(items).to_have_count(11)
    assert _listed(page) == [i for i in newest_first if i != gone]
    assert httpx.get(f"{stack.open}/v1/videos/{gone}").status_code == 404

    # Every one of them ends completed on the page, though only four were followed at a time.
    for video_id in newest_first[:10]:
        if video_id != gone:
            expect(_item(page, video_id)).to_have_attribute("data-status", "completed", timeout=90_000)

    page.reload()
    expect(items).to_have_count(10)
    page.get_by_role("button", name="Load more").click()
    expect(items).to_have_count(11)
    assert _listed(page) == [i for i in newest_first if i != gone]
    expect(_item(page, newest_first[0]).locator(".video-prompt")).to_have_text(f"{SHAPE} 11")


def test_the_apis_400_is_shown_next_to_its_field(stack: Stack, tab: Tab) -> None:
    page = tab.page
    page.goto(stack.open)
    # The server's limits are the form's.
    expect(page.get_by_label("Frames", exact=True)).to_have_attribute("max", "33")
    expect(page.get_by_label("Steps")).to_have_attribute("max", "100")
    expect(page.get_by_label("Prompt", exact=True)).to_have_attribute("maxlength", "2000")
    expect(page.get_by_label("Seed")).to_have_attribute("max", str(2**32 - 1))
    expect(page.get_by_label("Guidance")).to_have_attribute("max", "30")
    expect(page.get_by_label("Cache")).to_contain_text("balanced")

    page.get_by_label("Prompt", exact=True).fill(SHAPE)
    page.get_by_label("Frames", exact=True).fill("18")
    page.get_by_role("button", name="Generate").click()
    said = httpx.post(f"{stack.open}/v1/videos", json={"prompt": SHAPE, "num_frames": 18}).json()["error"]
    frames_error = page.locator("#num_frames-error")
    expect(frames_error).to_have_text(said["message"])
    assert "4k+1" in said["message"]
    expect(page.get_by_label("Frames", exact=True)).to_have_attribute("aria-invalid", "true")
    expect(page.get_by_label("Frames", exact=True)).to_be_focused()

    # Spaces pass the browser's `required`; the API refuses them, next to the prompt.
    page.get_by_label("Frames", exact=True).fill("17")
    expect(frames_error).to_be_hidden()
    page.get_by_label("Prompt", exact=True).fill("   ")
    page.get_by_role("button", name="Generate").click()
    expect(page.locator("#prompt-error")).to_contain_text("prompt must contain some visible text")
    expect(frames_error).to_be_hidden()
    expect(page.locator("li.video")).to_have_count(0)


def test_a_server_with_keys_asks_for_one_and_remembers_it(stack: Stack, tab: Tab) -> None:
    page = tab.page
    page.goto(stack.keyed)
    expect(page.locator("#key-message")).to_have_text(
        "This server needs an API key. Enter yours to see and make videos."
    )
    expect(page.locator("#list-message")).to_have_text("Enter an API key to see your videos.")
    expect(page.get_by_label("Size")).to_have_value("64x64")  # the model needs no key

    page.get_by_role("textbox", name="API key").fill("sk-wrong")
    page.get_by_role("button", name="Use this key").click()
    expect(page.locator("#key-message")).to_have_text(
        "This key was refused: Invalid API key. Check it and try again."
    )
    assert page.evaluate("localStorage.getItem('wanserve.apiKey')") is None

    keyed_from = len(tab.requests)
    page.get_by_role("textbox", name="API key").fill(KEY)
    page.get_by_role("textbox", name="API key").press("Enter")
    expect(page.locator("#key-panel")).to_be_hidden()
    expect(page.locator("#key-status-text")).to_have_text("API key …st-1")
    expect(page.locator("#list-message")).to_have_text("No videos yet: describe one and press Generate.")

    page.get_by_label("Prompt", exact=True).fill(SHAPE)
    page.get_by_label("Steps").fill("2")
    video_id = _create(page)
    expect(_item(page, video_id)).to_have_attribute("data-status", "completed", timeout=60_000)
    # Every call since, the event stream and the media included, carried the key.
    calls = [r for r in tab.requests[keyed_from:] if "/v1/videos" in r.url]
    assert {_path(r.url).split("?")[0].rsplit("/", 1)[-1] for r in calls} >= {"videos", "events", "content"}
    assert all(r.all_headers().get("authorization") == f"Bearer {KEY}" for r in calls)

    page.reload()
    expect(_item(page, video_id)).to_have_attribute("data-status", "completed")
    expect(page.locator("#key-panel")).to_be_hidden()
    assert page.evaluate("localStorage.getItem('wanserve.apiKey')") == KEY

    # A saved key the server no longer takes: the panel says so, and no one's videos show.
    page.evaluate("localStorage.setItem('wanserve.apiKey', 'sk-revoked')")
    page.reload()
    expect(page.locator("#key-message")).to_have_text(
        "The server refused the saved API key (Invalid API key.) Enter a valid key."
    )
    expect(page.locator("li.video")).to_have_count(0)


def test_a_dropped_stream_resumes_from_its_last_event(stack: Stack, tab: Tab) -> None:
    """The first stream is cut after its first event (the real server's bytes, truncated): the page asks
    again with Last-Event-ID and still sees the end."""
    page = tab.page
    served: list[str] = []

    def cut_after_the_first_event(route: Route) -> None:
        if served:
            route.continue_()
            return
        whole = route.fetch(timeout=60_000).text()  # the real stream, to its end
        retry, first = whole.split("\n\n")[:2]
        served.append(re.findall(r"^id: (.+)$", first, re.M)[0])
        route.fulfill(status=200, content_type="text/event-stream", body=f"{retry}\n\n{first}\n\n")

    page.route(re.compile(r"/v1/videos/[^/]+/events$"), cut_after_the_first_event)
    page.goto(stack.open)
    page.get_by_label("Prompt", exact=True).fill(SHAPE)
    page.get_by_label("Steps").fill("2")
    video_id = _create(page)
    expect(_item(page, video_id)).to_have_attribute("data-status", "completed", timeout=60_000)
    streams = [r for r in tab.requests if r.url.endswith(f"/v1/videos/{video_id}/events")]
    assert len(streams) == 2
    assert streams[0].all_headers().get("last-event-id") is None
    assert streams[1].all_headers().get("last-event-id") == served[0]


def test_the_page_stays_on_its_origin_and_fits_a_phone(stack: Stack, browser: Browser) -> None:
    context = browser.new_context(viewport={"width": 390, "height": 844}, is_mobile=True, has_touch=True)
    page = context.new_page()
    tab = Tab.of(page)
    try:
        response = page.goto(stack.open)
        assert response is not None
        assert response.headers["content-security-policy"] == CONTENT_SECURITY_POLICY
        assert response.headers["x-content-type-options"] == "nosniff"
        expect(page.get_by_label("Size")).to_have_value("64x64")
        assert page.evaluate("document.scrollingElement.scrollWidth") <= 390
        generate = page.get_by_role("button", name="Generate").bounding_box()
        assert generate is not None and generate["x"] + generate["width"] <= 390

        # Keyboard: Tab from the prompt moves to the next field and shows where the focus is.
        page.get_by_label("Prompt", exact=True).focus()
        page.keyboard.press("Tab")
        focused = page.evaluate(
            "(() => { const e = document.activeElement; return [e.id, getComputedStyle(e).outlineStyle]; })()"
        )
        assert focused == ["size", "solid"]
        tab.assert_stayed_home(stack.open)
        scripts = [r for r in tab.requests if r.resource_type in ("script", "stylesheet")]
        assert sorted(_path(r.url) for r in scripts) == ["/web/app.css", "/web/app.js"]
    finally:
        context.close()
