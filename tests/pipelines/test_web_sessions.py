"""Web-edit threads that say they are sessions: the requester answers an edit asking for more, someone edits
the edit; turn 1, turn 2 (from turn 1's image) and the whole session become samples."""

from __future__ import annotations

import numpy as np
from PIL import Image

from ieiw.pipelines.web.config import PairingConfig
from ieiw.pipelines.web.crawl import CrawledPost
from ieiw.pipelines.web.pairing import web_edits_stage
from ieiw.pipelines.web.posts import EditCandidate, WebPost
from ieiw.pipelines.web.reddit_things import candidates_from_comments
from ieiw.pipelines.web.state import DownloadRecord
from ieiw.storage.schema import Drop, Sample


def _comment(comment_id: str, author: str, body: str, replies: list[dict] | None = None) -> dict:
    children = [{"kind": "t1", "data": r} for r in replies or []]
    return {
        "id": comment_id,
        "author": author,
        "body": body,
        "score": 3,
        "created_utc": 1.7e9,
        "replies": {"kind": "Listing", "data": {"children": children}} if children else "",
    }


def test_a_follow_up_edit_under_the_requesters_new_request_is_a_candidate():
    follow_up = _comment("b1", "editor2", "Done: https://i.redd.it/second.png")
    by_op = _comment("b2", "op", "Again https://i.redd.it/mine.png")
    asks = _comment("r1", "op", "Thanks! Could you also remove the car on the left?", [follow_up, by_op])
    thanks = _comment(
        "r2", "op", "Perfect, thank you!", [_comment("b3", "editor3", "https://i.redd.it/x.png")]
    )
    comments = [
        _comment("a1", "editor1", "Here https://i.redd.it/first.png", [asks]),
        _comment("a2", "editor4", "https://i.redd.it/other.png", [thanks]),
    ]
    found = {c.candidate_id: c for c in candidates_from_comments(comments, "op", ["AutoModerator"])}
    assert set(found) == {
        "a1",
        "a2",
        "a1>b1",
    }  # "Perfect" asks for nothing; the requester's own image is none
    follow = found["a1>b1"]
    assert follow.follows == "a1" and "remove the car" in follow.request and follow.url.endswith("second.png")
    assert found["a1"].follows == "" and found["a1"].op_replied


def _textured(seed: int, size: int = 128) -> np.ndarray:
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 255, size=(16, 16, 3), dtype=np.uint8)
    return np.asarray(Image.fromarray(small).resize((size, size), Image.Resampling.BICUBIC))


def _record(path, image: np.ndarray) -> DownloadRecord:
    Image.fromarray(image).save(path)
    return DownloadRecord(
        url=f"https://i.redd.it/{path.name}",
        ok=True,
        path=str(path),
        sha256=path.name,
        width=image.shape[1],
        height=image.shape[0],
    )


def test_a_thread_session_gives_both_turns_and_the_whole(tmp_path):
    original = _textured(0)
    first = original.copy()
    first[20:60, 20:60] = (250, 20, 20)  # turn 1: a red patch
    second = first.copy()
    second[70:110, 70:110] = (20, 20, 250)  # turn 2, on turn 1's image: a blue patch
    post = WebPost(
        post_id="p1",
        dataset="reddit:r/PhotoshopRequest",
        title="Please add a red square",
        body="",
        original_url="https://i.redd.it/orig.png",
        permalink="https://reddit.com/p1",
        author="op",
    )
    a = EditCandidate(candidate_id="a1", url="https://i.redd.it/a.png", author="editor1", score=5)
    b = EditCandidate(
        candidate_id="a1>b1",
        url="https://i.redd.it/b.png",
        author="editor2",
        follows="a1",
        request="Could you also add a blue square?",
    )
    orphan = EditCandidate(
        candidate_id="zz>b9", url="https://i.redd.it/c.png", follows="zz", request="Can you remove the tree?"
    )
    crawled = CrawledPost(
        post,
        _record(tmp_path / "orig.png", original),
        [
            (a, _record(tmp_path / "a.png", first)),
            (b, _record(tmp_path / "b.png", second)),
            (orphan, _record(tmp_path / "c.png", second)),
        ],
    )
    results = web_edits_stage([crawled], PairingConfig())
    samples = {s.meta.turn: s for s in results if isinstance(s, Sample)}
    assert set(samples) == {0, 1, 2}
    one, two, whole = samples[1], samples[2], samples[0]
    assert one.meta.session_id == two.meta.session_id == whole.meta.session_id != ""
    np.testing.assert_array_equal(one.source, original)
    np.testing.assert_array_equal(two.source, one.target)  # turn 2 starts from turn 1's result
    np.testing.assert_array_equal(whole.source, original)
    np.testing.assert_array_equal(whole.target, two.target)
    assert one.meta.instruction == "Add a red square." and two.meta.instruction == "Also add a blue square."
    assert whole.meta.instruction == "Add a red square, then also add a blue square."
    assert two.meta.extra["follows"] == "a1" and len({s.key for s in samples.values()}) == 3
    drops = [r for r in results if isinstance(r, Drop)]
    assert [d.reason for d in drops] == ["followup_of_unused_edit"]
    # without the follow-up, the post's own pair is what it always was
    alone = web_edits_stage([CrawledPost(post, crawled.original, crawled.edits[:1])], PairingConfig())
    assert [r.key for r in alone] == [one.key] and alone[0].meta.session_id == ""
