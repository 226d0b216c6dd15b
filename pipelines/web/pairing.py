"""The web-edits stage: crawled posts become (original, instruction, edit) samples or drops with reasons.

Per post: the request is cleaned into an instruction; every downloaded edit is checked against the
original (same scene, actually changed, similar shape); the survivors are ranked by comment score
and similarity and the best ``max_edits_per_post`` kept. Every other candidate is a counted drop.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np

from ieiw.pipelines.web.config import PairingConfig
from ieiw.pipelines.web.crawl import LICENSE, CrawledPost, Crawler, ListedPost, PostOutcome, post_drop
from ieiw.pipelines.web.images import load_rgb
from ieiw.pipelines.web.instruction import InstructionRewriter, make_instruction
from ieiw.pipelines.web.posts import EditCandidate, WebPost
from ieiw.pipelines.web.scene import SceneScores, same_scene, scene_scores
from ieiw.pipelines.web.state import DownloadRecord
from ieiw.storage.schema import Drop, GeneratorInfo, Provenance, Result, Sample, SampleMeta, Task, sample_key

GENERATOR = "web_edits"


CLEANED = "cleaned"  # the rule-based request cleaner (:func:`~ieiw.pipelines.web.instruction.clean_request`)


def instruction_method(rewriter: InstructionRewriter | None) -> str:
    """How instructions are written: the cleaner, or the named LLM rewriter on top of it."""
    return f"llm:{rewriter.name}" if rewriter is not None else CLEANED


def generator_info(settings: PairingConfig, rewriter: InstructionRewriter | None = None) -> GeneratorInfo:
    """The generator of every web-edit sample: the pairing settings and the instruction method."""
    return GeneratorInfo(
        name=GENERATOR,
        backend="ssim+orb",
        settings={**settings.model_dump(mode="json"), "instruction": instruction_method(rewriter)},
    )


def pair_key(post: WebPost, candidate_id: str, generator: GeneratorInfo) -> str:
    """Stable across runs: only the post and comment ids (not volatile scores or flair) enter the key."""
    return sample_key(
        Task.WEB_EDIT,
        Provenance(dataset=post.dataset, image_id=post.post_id, region_id=candidate_id),
        generator,
    )


@dataclass
class _Accepted:
    candidate: EditCandidate
    record: DownloadRecord
    target: np.ndarray
    scores: SceneScores

    def rank(self, weight: float) -> float:
        return math.log1p(max(self.candidate.score, 0)) + weight * self.scores.similarity


def web_edits_stage(
    posts: list[CrawledPost], settings: PairingConfig, rewriter: InstructionRewriter | None = None
) -> list[Result]:
    """Turn a batch of crawled posts into web_edit samples and drops."""
    generator = generator_info(settings, rewriter)
    results: list[Result] = []
    for crawled in posts:
        results.extend(_pair_post(crawled, settings, generator, rewriter))
    return results


def crawl_and_pair(
    posts: list[ListedPost],
    crawler: Crawler,
    settings: PairingConfig,
    rewriter: InstructionRewriter | None = None,
    run: str = "",
) -> tuple[list[Result], list[PostOutcome]]:
    """One batch of the listing: its downloads (concurrently, in the crawler's threads), then pairing;
    and what became of each post, for the lead's crawl state.

    Drops of whole posts and of links come first, then each crawled post's samples and drops; a
    deferred post gives nothing (it stays pending for the next run).
    """
    crawled = crawler.crawl_batch(posts, run)
    drops = [item for item in crawled.items if isinstance(item, Drop)]
    posts_crawled = [c for c in crawled.items if isinstance(c, CrawledPost)]
    return [*drops, *web_edits_stage(posts_crawled, settings, rewriter)], crawled.outcomes


def _pair_post(
    crawled: CrawledPost,
    settings: PairingConfig,
    generator: GeneratorInfo,
    rewriter: InstructionRewriter | None,
) -> list[Result]:
    post = crawled.post
    instruction = make_instruction(post.title, post.body, rewriter)
    if instruction is None:
        return [post_drop(post, "instruction_empty", post.title)]
    try:
        original = load_rgb(str(crawled.original.path), settings.max_side)
    except OSError as error:  # the cache file vanished or was damaged since the download
        return [post_drop(post, "original_unreadable", str(error))]
    results: list[Result] = []
    accepted: list[_Accepted] = []
    report: list[dict] = []
    follow_ups = [(c, r) for c, r in crawled.edits if c.follows]
    for candidate, record in crawled.edits:
        if candidate.follows:
            continue
        key = pair_key(post, candidate.candidate_id, generator)
        outcome = check_edit(original, record, settings)
        entry = {
            "comment": candidate.candidate_id,
            "author": candidate.author,
            "score": candidate.score,
            "url": candidate.url,
        }
        if isinstance(outcome, Rejected):
            reason, detail, scores = outcome.reason, outcome.detail, outcome.scores
            entry.update(outcome=reason, **(scores.as_dict() if scores else {}))
            results.append(
                Drop(
                    key=key,
                    reason=reason,
                    detail=detail[:500],
                    record_id=post.record_id,
                    task=str(Task.WEB_EDIT),
                    provenance=edit_provenance(post, candidate),
                    scores=scores.as_dict() if scores else {},
                )
            )
        else:
            accepted.append(_Accepted(candidate, record, outcome[0], outcome[1]))
            entry.update(outcome="same_scene", **outcome[1].as_dict())
        report.append(entry)
    accepted.sort(key=lambda a: (-a.rank(settings.similarity_weight), a.candidate.candidate_id))
    chosen = accepted[: settings.max_edits_per_post]
    for entry in report:
        entry["chosen"] = any(a.candidate.candidate_id == entry["comment"] for a in chosen)
    for position, item in enumerate(accepted):
        key = pair_key(post, item.candidate.candidate_id, generator)
        if position >= settings.max_edits_per_post:
            results.append(
                Drop(
                    key=key,
                    reason="edit_not_chosen",
                    detail=f"rank {position + 1} of {len(accepted)} same-scene edits",
                    record_id=post.record_id,
                    task=str(Task.WEB_EDIT),
                    provenance=edit_provenance(post, item.candidate),
                    scores=item.scores.as_dict(),
                )
            )
            continue
        scores = {
            **{f"scene_{k}": v for k, v in item.scores.as_dict().items()},
            "comment_score": float(item.candidate.score),
            "rank": round(item.rank(settings.similarity_weight), 4),
        }
        meta = SampleMeta(
            key=key,
            task=Task.WEB_EDIT,
            instruction=instruction.instruction,
            instruction_source=instruction.source,
            provenance=edit_provenance(post, item.candidate),
            generator=generator,
            record_id=post.record_id,
            scores=scores,
            extra={
                "candidates": report,
                "chosen": item.candidate.candidate_id,
                "chosen_rank": position + 1,
                "original_sha256": crawled.original.sha256,
                "edit_sha256": item.record.sha256,
                "request_title": post.title,
            },
        )
        results.append(Sample(meta=meta, source=original, target=item.target))
    if follow_ups:
        from ieiw.pipelines.web.sessions import follow_up_results  # it builds on this module

        made = {r.meta.provenance.region_id: r for r in results if isinstance(r, Sample)}
        results += follow_up_results(
            post, original, made, follow_ups, instruction, settings, generator, rewriter
        )
    return results


@dataclass
class Rejected:
    reason: str
    detail: str
    scores: SceneScores | None = None


def check_edit(
    original: np.ndarray, record: DownloadRecord, settings: PairingConfig
) -> tuple[np.ndarray, SceneScores] | Rejected:
    """(aligned edit, scores) if it is a usable edit, else why not."""
    if not record.ok:
        return Rejected(f"edit_{record.reason}", f"{record.url}: {record.detail}")
    try:
        edit = load_rgb(str(record.path), settings.max_side)
    except OSError as error:
        return Rejected("edit_unreadable", str(error))
    oh, ow = original.shape[:2]
    eh, ew = edit.shape[:2]
    change = abs((ew / eh) / (ow / oh) - 1.0)
    if change > settings.max_aspect_change:
        return Rejected("edit_aspect_mismatch", f"original {ow}x{oh}, edit {ew}x{eh}")
    aligned = cv2.resize(edit, (ow, oh), interpolation=cv2.INTER_AREA if ew > ow else cv2.INTER_CUBIC)
    scores = scene_scores(original, aligned)
    if not same_scene(scores, settings.ssim_min, settings.orb_inliers_min, settings.orb_inlier_fraction_min):
        return Rejected(
            "edit_not_same_scene", f"ssim {scores.ssim:.3f}, orb inliers {scores.orb_inliers}", scores
        )
    if scores.mean_abs_diff < settings.identical_max_change:
        return Rejected("edit_unchanged", f"mean change {scores.mean_abs_diff:.2f}", scores)
    return aligned, scores


def edit_provenance(post: WebPost, candidate: EditCandidate) -> Provenance:
    return Provenance(
        dataset=post.dataset,
        image_id=post.post_id,
        region_id=candidate.candidate_id,
        url=post.permalink,
        license=LICENSE,
        extra={
            "request_author": post.author,
            "edit_author": candidate.author,
            "post_score": post.score,
            "edit_score": candidate.score,
            "post_created_utc": post.created_utc,
            "edit_created_utc": candidate.created_utc,
            "flair": post.flair,
            "over_18": post.over_18,
            "request_title": post.title,
            "request_body": post.body[:4000],
            "original_url": post.original_url,
            "edit_url": candidate.url,
            "op_replied": candidate.op_replied,
        },
    )
