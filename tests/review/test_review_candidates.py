"""Candidate generation with a tiny real InstructPix2Pix pipeline, and the candidate shard format."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import EulerAncestralDiscreteScheduler, StableDiffusionInstructPix2PixPipeline

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "model"))  # the model tests' tiny builders
from cli_text import words  # noqa: E402
from synthetic_edits import make_sample, write_synthetic_shards, write_synthetic_stage  # noqa: E402
from tiny_diffusion import tiny_text_encoder, tiny_tokenizer, tiny_unet, tiny_vae  # noqa: E402

from ieiw.model.candidate_shards import (  # noqa: E402
    CandidateIndex,
    iter_candidate_headers,
    iter_candidate_sets,
    write_candidate_sets,
)
from ieiw.model.candidates import candidate_settings, display_order, generate_candidates  # noqa: E402
from ieiw.model.inference import load_edit_pipeline  # noqa: E402
from ieiw.storage import manifest  # noqa: E402
from ieiw.storage.identity import model_identity  # noqa: E402
from ieiw.storage.shards import iter_samples  # noqa: E402
from ieiw.storage.stage_folder import read_record  # noqa: E402


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


def _candidates_cli():
    import typer
    from typer.testing import CliRunner

    from ieiw.flows.commands.review import register

    app = typer.Typer()
    register(app)
    runner = CliRunner()
    return lambda *args: runner.invoke(app, ["candidates", *[str(a) for a in args]])


SMALL = ["-n", "3", "--steps", "1", "--resolution", "32", "--batch-size", "2", "--text-guidance", "6,8",
         "--image-guidance", "1.2", "--device", "cpu"]


def test_candidates_command(tiny_ip2p, tmp_path):
    candidates = _candidates_cli()
    write_synthetic_shards(str(tmp_path / "src"), count=3, per_shard=2, seed=5)
    out = tmp_path / "c"
    result = candidates("--model", tiny_ip2p, "--shards", tmp_path / "src", "--out", out, "--limit", 2,
                        "--per-shard", 2, *SMALL)
    assert result.exit_code == 0, result.output
    sets = list(iter_candidate_sets(str(out)))
    assert len(sets) == 2 and all(len(s.candidates) == 3 for s in sets)
    assert {s.text_guidance for s in sets[0].header.settings} == {6.0, 8.0}
    # the checkpoint by content, never by where it lies
    assert {s.checkpoint for s in sets[0].header.settings} == {model_identity(str(tiny_ip2p))}
    for shard in manifest.committed_shards(str(out)):
        assert str(tiny_ip2p).encode() not in Path(shard).read_bytes()
    record = read_record(str(out))
    assert record["fingerprint"]["models"] == {"model": model_identity(str(tiny_ip2p))}

    same = candidates("--model", tiny_ip2p, "--shards", tmp_path / "src", "--out", out, "--limit", 2,
                      "--per-shard", 2, *SMALL)
    assert same.exit_code == 0 and "wrote 0 candidate sets" in same.output
    assert "2 already there" in same.output
    more = candidates("--model", tiny_ip2p, "--shards", tmp_path / "src", "--out", out, "--limit", 3,
                      "--per-shard", 2, *SMALL)
    assert more.exit_code == 0 and "wrote 1 candidate sets" in more.output, more.output
    keys = [s.key for s in iter_candidate_sets(str(out))]
    assert len(keys) == len(set(keys)) == 3
    changed = candidates("--model", tiny_ip2p, "--shards", tmp_path / "src", "--out", out, *SMALL[:2],
                         "--steps", 2, *SMALL[4:])
    assert changed.exit_code == 1 and "candidates.steps: 1 -> 2" in words(changed.output), changed.output
    assert [s.key for s in iter_candidate_sets(str(out))] == keys  # refused before any change
    rebuilt = candidates("--model", tiny_ip2p, "--shards", tmp_path / "src", "--out", out, "--limit", 1,
                         *SMALL[:2], "--steps", 2, *SMALL[4:], "--rebuild")
    assert rebuilt.exit_code == 0, rebuilt.output
    (only,) = list(iter_candidate_sets(str(out)))
    assert {s.steps for s in only.header.settings} == {2}

    bad = candidates("--model", tiny_ip2p, "--shards", tmp_path / "src", "--out", tmp_path / "d",
                     "--text-guidance", "high")
    assert bad.exit_code != 0 and "comma-separated numbers" in bad.output


def test_candidates_and_export_keys_do_not_depend_on_where_the_checkpoint_lies(tiny_ip2p, tmp_path):
    from ieiw.model.review.export import export_picks
    from ieiw.model.review.store import ReviewStore

    candidates = _candidates_cli()
    written = write_synthetic_stage(str(tmp_path / "src"), count=3, per_batch=2, seed=6, uncommitted=2)
    copied = tmp_path / "elsewhere" / "checkpoint"
    shutil.copytree(tiny_ip2p, copied)
    keys, headers, digests = [], [], []
    for i, model in enumerate((tiny_ip2p, copied)):
        out = tmp_path / f"cands{i}"
        result = candidates("--model", model, "--shards", tmp_path / "src", "--out", out, *SMALL)
        assert result.exit_code == 0, result.output
        # a shard of a killed batch in the candidates folder is not a candidate
        shutil.copy(next((out / "shards").glob("*.tar")), out / "shards" / "candidates-killed-0000.tar")
        index = CandidateIndex.build(str(out))
        assert sorted(index.headers) == sorted(written["committed"])  # only committed source shards
        headers.append({k: h.model_dump() for k, h in index.headers.items()})
        digests.append(read_record(str(out))["fingerprint"]["digest"])
        store = ReviewStore(f"sqlite:///{tmp_path / f'review{i}.sqlite'}")
        store.import_candidates(index.headers.values())
        person = store.reviewer_by_token(store.add_reviewer("alice"))
        store.assign(per_sample=1)
        for item in store.queue(person.id):
            ids = [c["id"] for c in store.sample_view(person.id, item["key"])["candidates"]]
            store.add_pick(person.id, item["key"], ids[1])
            store.finish(person.id, item["key"], "done")
        report = export_picks(store, index, str(tmp_path / f"aligned{i}"))
        store.close()
        assert report.kept == 3
        samples = list(iter_samples([str(tmp_path / f"aligned{i}")]))
        assert {s.meta.generator.model for s in samples} == {model_identity(str(tiny_ip2p))}
        keys.append(sorted(s.key for s in samples))
    assert headers[0] == headers[1] and digests[0] == digests[1]
    assert keys[0] == keys[1] and len(keys[0]) == 3
