"""Candidate generation with a tiny real InstructPix2Pix pipeline, and the candidate shard format."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import EulerAncestralDiscreteScheduler, StableDiffusionInstructPix2PixPipeline

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "model"))  # the model tests' tiny builders
from synthetic_edits import make_sample, write_synthetic_shards  # noqa: E402
from tiny_diffusion import tiny_text_encoder, tiny_tokenizer, tiny_unet, tiny_vae  # noqa: E402

from ieiw.model.candidates import (  # noqa: E402
    CandidateIndex,
    candidate_settings,
    display_order,
    generate_candidates,
    iter_candidate_headers,
    iter_candidate_sets,
    write_candidate_sets,
)
from ieiw.model.inference import load_edit_pipeline  # noqa: E402


class CountingPipeline:
    """The real pipeline, with a record of each call's batch size (to see that calls are batched)."""

    def __init__(self, pipe) -> None:
        self.pipe = pipe
        self.batches: list[int] = []

    def __getattr__(self, name):
        return getattr(self.pipe, name)

    def __call__(self, prompt, **kwargs):
        self.batches.append(len(prompt))
        return self.pipe(prompt, **kwargs)


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Toy convolutions run far faster on one thread than on threads that wait on a busy machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def tiny_ip2p(tmp_path_factory) -> Path:
    """A tiny InstructPix2Pix checkpoint (8-channel UNet), saved with ``save_pretrained``."""
    folder = tmp_path_factory.mktemp("tiny-ip2p")
    torch.manual_seed(0)
    tokenizer = tiny_tokenizer(folder / "vocab")
    pipe = StableDiffusionInstructPix2PixPipeline(
        vae=tiny_vae(), text_encoder=tiny_text_encoder(len(tokenizer)), tokenizer=tokenizer,
        unet=tiny_unet(in_channels=8), scheduler=EulerAncestralDiscreteScheduler(
            beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear"),
        safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    )
    pipe.save_pretrained(folder / "model")
    return folder / "model"


@pytest.fixture(scope="module")
def pipe(tiny_ip2p):
    return load_edit_pipeline(str(tiny_ip2p), device="cpu")  # the production loader


def sources(count: int = 3):
    rng = np.random.default_rng(3)
    return [make_sample(rng, i, size=32) for i in range(count)]


def test_settings_vary_and_repeat():
    grid = {"text_guidance": (5.0, 7.5), "image_guidance": (1.0, 1.5, 2.0)}
    settings = candidate_settings("k1", 6, "ckpt", 5, **grid)
    assert [(s.text_guidance, s.image_guidance) for s in settings] == [
        (5.0, 1.0), (5.0, 1.5), (5.0, 2.0), (7.5, 1.0), (7.5, 1.5), (7.5, 2.0)]
    assert len({s.seed for s in settings}) == 6
    assert settings == candidate_settings("k1", 6, "ckpt", 5, **grid)
    assert {s.seed for s in candidate_settings("k2", 6, "ckpt", 5)}.isdisjoint({s.seed for s in settings})
    assert sorted(display_order("k1", 20)) == list(range(20)) and display_order("k1", 20) != list(range(20))
    with pytest.raises(ValueError):
        candidate_settings("k1", 0, "ckpt", 5)


def test_generate_batched_candidates_and_round_trip(pipe, tmp_path):
    counting = CountingPipeline(pipe)
    samples = sources(3)
    sets = list(generate_candidates(counting, samples, n=4, checkpoint="tiny-ip2p", steps=2, resolution=32,
                                    text_guidance=(5.0, 7.5), image_guidance=(1.0, 1.5), batch_size=2))
    # samples 0 and 1 share each call (batch of 2), sample 2 goes alone: 4 candidates each
    assert counting.batches == [2, 2, 2, 2, 1, 1, 1, 1]
    assert [s.key for s in sets] == [s.key for s in samples]
    for candidate_set, sample in zip(sets, samples):
        header = candidate_set.header
        assert header.instruction == sample.meta.instruction and header.source_meta == sample.meta
        assert [c.shape for c in candidate_set.candidates] == [(32, 32, 3)] * 4
        assert {(s.text_guidance, s.image_guidance) for s in header.settings} == {
            (5.0, 1.0), (5.0, 1.5), (7.5, 1.0), (7.5, 1.5)}
        assert all(s.checkpoint == "tiny-ip2p" and s.steps == 2 for s in header.settings)
        images = candidate_set.candidates
        assert all(not np.array_equal(images[0], other) for other in images[1:])  # seeds and scales vary
    # a candidate does not depend on its batch companions: generated alone it is the same image
    alone = next(generate_candidates(pipe, samples[1:2], n=4, checkpoint="tiny-ip2p", steps=2, resolution=32,
                                     text_guidance=(5.0, 7.5), image_guidance=(1.0, 1.5), batch_size=1))
    for together, single in zip(sets[1].candidates, alone.candidates):
        assert np.abs(together.astype(int) - single.astype(int)).max() <= 2

    shards = write_candidate_sets(sets, str(tmp_path / "cands"), max_sets=2)
    assert len(shards) == 2
    back = list(iter_candidate_sets(str(tmp_path / "cands")))
    assert [b.header for b in back] == [s.header for s in sets]
    for read, written in zip(back, sets):
        assert np.array_equal(read.source, written.source)
        assert all(np.array_equal(a, b) for a, b in zip(read.candidates, written.candidates))
    assert [h.key for h in iter_candidate_headers(shards)] == [s.key for s in sets]
    index = CandidateIndex.build(str(tmp_path / "cands"))
    assert len(index) == 3 and sets[2].key in index
    assert np.array_equal(index.image(sets[2].key, "cand_03.png"), sets[2].candidates[3])
    with pytest.raises(KeyError):
        index.read(sets[2].key, "cand_04.png")


def test_candidates_command(tiny_ip2p, tmp_path):
    import typer
    from typer.testing import CliRunner

    from ieiw.flows.commands.review import register

    write_synthetic_shards(str(tmp_path / "src"), count=3, per_shard=2, seed=5)
    app = typer.Typer()
    register(app)
    result = CliRunner().invoke(app, [
        "candidates", "--model", str(tiny_ip2p), "--shards", str(tmp_path / "src"),
        "--out", str(tmp_path / "c"),
        "-n", "3", "--limit", "2", "--steps", "1", "--resolution", "32", "--batch-size", "2",
        "--text-guidance", "6,8", "--image-guidance", "1.2", "--device", "cpu",
    ])
    assert result.exit_code == 0, result.output
    sets = list(iter_candidate_sets(str(tmp_path / "c")))
    assert len(sets) == 2 and all(len(s.candidates) == 3 for s in sets)
    assert {s.text_guidance for s in sets[0].header.settings} == {6.0, 8.0}
    assert {s.checkpoint for s in sets[0].header.settings} == {str(tiny_ip2p)}
    bad = CliRunner().invoke(app, ["candidates", "--model", str(tiny_ip2p), "--shards", str(tmp_path / "src"),
                                   "--out", str(tmp_path / "d"), "--text-guidance", "high"])
    assert bad.exit_code != 0 and "comma-separated numbers" in bad.output
