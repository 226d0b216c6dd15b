"""The review page in headless Chromium (Debian's package, driven by Playwright), on SQLite and PostgreSQL."""

from __future__ import annotations

import re
import shutil

import pytest
from playwright.sync_api import Page, expect, sync_playwright
from review_fixtures import write_candidate_shards

from ieiw.model.candidate_shards import CandidateIndex
from ieiw.model.review.app import create_app
from ieiw.model.review.serve import serving
from ieiw.model.review.store import ReviewStore

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
ARGS = ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--no-first-run"]
PICKED = re.compile(r"\bpicked\b")


@pytest.fixture(scope="module")
def browser():
    if not shutil.which(CHROMIUM):
        pytest.skip("Debian's chromium is not installed (apt-get install chromium)")
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        yield launched
        launched.close()


@pytest.fixture
def site(store, candidate_index):
    """The app on 127.0.0.1 with alice and bob sharing every sample: (base URL, tokens)."""
    tokens = {name: store.add_reviewer(name) for name in ("alice", "bob")}
    store.assign(per_sample=2)
    with serving(create_app(store, candidate_index)) as url:
        yield url, tokens


def sign_in(page: Page, url: str, token: str) -> None:
    page.goto(url)
    expect(page.locator("#signin")).to_be_visible()
    page.fill("#token", token)
    page.click("#signin button[type=submit]")
    expect(page.locator("#grid .card")).to_have_count(8)


def card(page: Page, number: int):
    return page.locator(f'#grid .card[data-position="{number - 1}"]')


def picked_positions(store: ReviewStore, token: str, key: str) -> list[int]:
    person = store.reviewer_by_token(token)
    view = store.sample_view(person.id, key)
    position = {c["id"]: c["position"] for c in view["candidates"]}
    return [position[i] for i in view["picks"]]


def current_key(page: Page) -> str:
    return page.evaluate("location.hash.slice(1)")


def test_sign_in_pick_undo_and_reload(browser, site, store, tmp_path):
    url, tokens = site
    context = browser.new_context(viewport={"width": 1200, "height": 900})
    page = context.new_page()
    sign_in(page, url, tokens["alice"])
    expect(page.locator("#who")).to_have_text("alice")
    expect(page.locator("#progress")).to_contain_text("reviewed 0 of 6")
    key = current_key(page)
    card(page, 1).click()
    expect(card(page, 1)).to_have_class(PICKED)
    card(page, 3).click()
    expect(card(page, 3)).to_have_class(PICKED)
    card(page, 6).click()  # a third pick is refused in the page and stores nothing
    expect(page.locator("#message")).to_contain_text("At most 2")
    assert picked_positions(store, tokens["alice"], key) == [0, 2]
    page.click("#undo")
    expect(card(page, 3)).not_to_have_class(PICKED)
    card(page, 5).click()
    expect(card(page, 5)).to_have_class(PICKED)
    expect(card(page, 5).locator(".badge")).to_have_text("2")
    page.screenshot(path=str(tmp_path / "picked.png"), full_page=True)
    page.reload()
    expect(page.locator("#grid .card")).to_have_count(8)
    expect(card(page, 1)).to_have_class(PICKED)
    expect(card(page, 5)).to_have_class(PICKED)
    expect(card(page, 3)).not_to_have_class(PICKED)
    assert current_key(page) == key
    assert picked_positions(store, tokens["alice"], key) == [0, 4]
    page.screenshot(path=str(tmp_path / "reloaded.png"), full_page=True)
    context.close()
    assert (tmp_path / "picked.png").stat().st_size > 10_000


def test_two_reviewers_on_the_same_sample(browser, site, store, tmp_path):
    url, tokens = site
    pages = {}
    for name in ("alice", "bob"):
        pages[name] = browser.new_context().new_page()  # separate contexts: separate cookies
        sign_in(pages[name], url, tokens[name])
    assert current_key(pages["alice"]) == current_key(pages["bob"])
    key = current_key(pages["alice"])
    card(pages["alice"], 2).click()
    card(pages["bob"], 2).click()
    card(pages["bob"], 7).click()
    expect(card(pages["alice"], 2)).to_have_class(PICKED)
    expect(card(pages["bob"], 7)).to_have_class(PICKED)
    pages["alice"].reload()
    expect(pages["alice"].locator("#grid .card")).to_have_count(8)
    expect(card(pages["alice"], 7)).not_to_have_class(PICKED)  # bob's pick is not shown to alice
    assert picked_positions(store, tokens["alice"], key) == [1]
    assert picked_positions(store, tokens["bob"], key) == [1, 6]
    assert store.counts()["picks"] == 3
    for page in pages.values():
        page.click("#done")
        expect(page.locator("#progress")).to_contain_text("reviewed 1 of 6")
    pages["alice"].click("#team summary")
    expect(pages["alice"].locator("#agreement")).to_contain_text("Agreement over 1 samples")
    expect(pages["alice"].locator("#agreement")).to_contain_text("mean Jaccard 0.50")
    expect(pages["alice"].locator("#team-table tbody tr")).to_have_count(2)
    pages["alice"].screenshot(path=str(tmp_path / "team.png"), full_page=True)
    for page in pages.values():
        page.context.close()


def test_keyboard_picks_undo_done_skip(browser, store, tmp_path):
    folder = tmp_path / "twelve"
    write_candidate_shards(str(folder), n_samples=3, n_candidates=12, per_shard=3, dataset="twelve")
    index = CandidateIndex.build(str(folder))
    store.import_candidates(index.headers.values())
    token = store.add_reviewer("kim")
    kim = store.reviewer_by_token(token)
    store.assign(per_sample=1, reviewers=["kim"])
    queue = [q["key"] for q in store.queue(kim.id)]
    twelve = [k for k in queue if k in index]
    with serving(create_app(store, index)) as url:
        context = browser.new_context(viewport={"width": 1300, "height": 1000})
        page = context.new_page()
        page.goto(f"{url}/#{twelve[0]}")
        page.fill("#token", token)
        page.press("#token", "Enter")
        expect(page.locator("#grid .card")).to_have_count(12)
        assert current_key(page) == twelve[0]
        page.locator("body").click(position={"x": 5, "y": 5})
        page.keyboard.press("3")  # 30 > 12: picks candidate 3 at once
        expect(card(page, 3)).to_have_class(PICKED)
        page.keyboard.press("1")
        page.keyboard.press("2")  # "1" then "2": candidate 12
        expect(card(page, 12)).to_have_class(PICKED)
        page.keyboard.press("u")
        expect(card(page, 12)).not_to_have_class(PICKED)
        page.keyboard.press("1")  # "1" alone: candidate 1 after a short pause
        expect(card(page, 1)).to_have_class(PICKED)
        page.keyboard.press("3")  # toggles candidate 3 off
        expect(card(page, 3)).not_to_have_class(PICKED)
        page.screenshot(path=str(tmp_path / "keyboard.png"), full_page=True)
        assert picked_positions(store, token, twelve[0]) == [0]
        page.keyboard.press("Enter")
        expect(page.locator("#instruction")).not_to_have_text(index.headers[twelve[0]].instruction)
        second = current_key(page)
        page.keyboard.press("s")
        expect(page.locator("#progress")).to_contain_text("reviewed 2 of")
        page.keyboard.press("ArrowLeft")
        page.keyboard.press("ArrowLeft")
        expect(page.locator("#state")).to_have_text("done")
        expect(card(page, 1)).to_have_class(PICKED)
        context.close()
    statuses = {q["key"]: q["status"] for q in store.queue(kim.id)}
    assert statuses[twelve[0]] == "done" and statuses[second] == "skipped"
    assert [p.position for p in store.picked_candidates() if p.sample_key == twelve[0]] == [0]
