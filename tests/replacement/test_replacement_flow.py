"""The object database and the replacement pairs end to end: fixtures with tiny models, and the demo
photos with the classical backends through the `ieiw replacement` command."""

from __future__ import annotations

import re

import pytest
import yaml
from cli_text import words
from replacement_build import run
from replacement_fixtures import write_openimages, write_sa1b
from replacement_llm_server import ChatServer

from ieiw.flows.cli import main
from ieiw.flows.config import RunnerConfig
from ieiw.pipelines.replacement.config import ReplacementConfig
from ieiw.pipelines.sources.demo import DEMO_IMAGES, materialize_demo_images
from ieiw.storage import manifest
from ieiw.storage.identity import model_identity
from ieiw.storage.layout import OBJECT_DATABASE
from ieiw.storage.runner import LOADS, forget_models
from ieiw.storage.shards import ShardSpec, iter_samples
from ieiw.storage.stage_folder import read_record

pytestmark = pytest.mark.usefixtures("prefect_server")


def _llm_answer(body: dict) -> str:
    user = body["messages"][-1]["content"]
    before = re.search(r"Object before: (.*)", user).group(1)
    after = re.search(r"Object after: (.*)", user).group(1)
    return f"Replace the {before} with a {after}."


def test_replacement_flow_with_tiny_models(tmp_path, clip_config, sam_config, paint_by_example_dir, blip_dir):
    forget_models()
    sa1b_dir = write_sa1b(str(tmp_path / "sa1b"), n_images=4, size=128)
    oi = write_openimages(str(tmp_path / "oi"), n_images=3, size=128)
    (tmp_path / "photos").mkdir()
    write_sa1b(str(tmp_path / "photos"), n_images=1, size=128, broken=False)
    for path in (tmp_path / "photos").glob("*.json"):
        path.unlink()  # a folder of images without masks: SAM proposes
    with ChatServer(default=_llm_answer) as server:
        config = ReplacementConfig.model_validate(
            {
                "sources": [
                    {"kind": "sa1b", "folders": [sa1b_dir]},
                    {"kind": "openimages", **oi},
                    {"kind": "images", "images": str(tmp_path / "photos"), "dataset": "photos"},
                ],
                "proposer": {"backend": "sam", "sam": sam_config.model_dump()},
                "embedder": clip_config.model_dump(),
                "database": {"objects_per_image": 4, "batch_size": 3, "index": {"kind": "flat"}},
                "retrieval": {"similarity_ceiling": 0.99999},
                "paint": {
                    "backend": "paint_by_example",
                    "model": str(paint_by_example_dir),
                    "device": "cpu",
                    "resolution": 32,
                    "steps": 2,
                    "batch_size": 4,
                },
                "caption": {
                    "backend": "blip",
                    "model": str(blip_dir),
                    "device": "cpu",
                    "max_new_tokens": 5,
                    "num_beams": 1,
                },
                "instructions": {
                    "backend": "llm",
                    "llm": {
                        "model": "tiny-llm",
                        "base_url": server.base_url,
                        "cache_dir": str(tmp_path / "llm-cache"),
                        "timeout": 5,
                    },
                },
                "regions_per_image": 2,
                "batch_size": 4,
            }
        )
        output = str(tmp_path / "build")
        runner = RunnerConfig(max_workers=2, retries=0)
        summaries = run(config, output, ShardSpec(max_samples=50), runner)

        database = summaries[OBJECT_DATABASE]
        assert (
            database.extra["objects"] == database.rows == 4 * 2 + 3 * 2 and database.extra["index"] == "flat"
        )
        assert database.dropped == {"bad_annotation": 1}  # the truncated annotation file
        assert database.counts["images"] == 8 and database.counts["objects"] == 14
        assert database.counts["touches_border"] == 4 and database.counts["fragmented"] == 4
        assert database.batches == 3  # 9 records in batches of 3
        recorded = read_record(f"{output}/object_database")["runs"][-1]
        assert (
            recorded["extra"]["objects"] == 14
            and recorded["extra"]["index_key"] == database.extra["index_key"]
        )
        summary = summaries["replacement"]
        assert summary.kept == 4 * 2 + 3 * 2
        assert summary.dropped == {"bad_annotation": 1, "no_semantic_region": 1}  # SAM's random regions

        samples = list(iter_samples([f"{output}/replacement/shards"]))
        assert len(samples) == 14
        for sample in samples:
            meta = sample.meta
            assert meta.task == "replace" and meta.instruction_source == "llm:tiny-llm"
            # models by content, never by where they lie on this machine
            assert meta.generator.backend == "paint_by_example"
            assert meta.generator.model == model_identity(str(paint_by_example_dir))
            assert meta.generator.model.startswith("sha256-tree:")
            assert meta.generator.settings["caption"]["model"] == model_identity(str(blip_dir))
            assert str(tmp_path) not in meta.generator.model_dump_json()
            reference = meta.provenance.extra["reference"]
            assert reference["image_id"] != meta.provenance.image_id
            assert meta.extra["similarity"] < 0.99999
            assert (
                meta.instruction
                == f"replace the {meta.extra['source_object']} with a {meta.extra['target_object']}"
            )
            assert meta.extra["source_caption"] and meta.pretrain_caption == meta.extra["target_caption"]
            assert sample.mask is not None and sample.source.shape == sample.target.shape
        openimages_samples = [s for s in samples if s.meta.provenance.dataset == "openimages"]
        assert {s.meta.extra["source_label_source"] for s in openimages_samples} == {"annotation"}
        assert {s.meta.extra["source_object"] for s in openimages_samples} <= {
            "cat",
            "dog",
            "car",
            "coffee cup",
        }
        frame = manifest.read_manifest(f"{output}/replacement")
        assert len(frame) == 16 and frame["kept"].sum() == 14
        # every model loaded once in this process (threads share it), for both stages' batches
        assert all(count == 1 for count in LOADS.values()), LOADS
        kinds = {key.split(":", 1)[0] for key in LOADS}
        assert kinds == {
            "clip",
            "labeler",
            "proposer",
            "objects",
            "painter",
            "captioner",
            "llm",
            "sample-settings",
        }
        requests = len(server.requests)

        again = run(config, output, ShardSpec(max_samples=50), runner)
        assert again[OBJECT_DATABASE].skipped and again["replacement"].skipped
        assert again["replacement"].kept == 0 and again["replacement"].records_committed_before == 9
        assert len(server.requests) == requests and all(count == 1 for count in LOADS.values())


def _ieiw(capsys, *args: str) -> tuple[int, str]:
    """``ieiw ARGS`` in this process, as a user runs it: its exit status and what it printed."""
    with pytest.raises(SystemExit) as exited:
        main(list(args))
    printed = capsys.readouterr()
    return exited.value.code or 0, words(printed.out + printed.err)


def test_replacement_demo_photos_with_classical_backends_through_the_cli(tmp_path, clip_config, capsys):
    forget_models()
    images = tmp_path / "demo-images"
    materialize_demo_images(str(images))
    config_path = tmp_path / "replacement.yaml"
    config_path.write_text(
        yaml.safe_dump(
            {
                "name": "demo",
                "output": "out",
                "shards": {"max_samples": 100},
                "runner": {"task_runner": "threads", "max_workers": 2, "retries": 0},
                "replacement": {
                    "sources": [{"kind": "images", "images": "demo-images", "dataset": "demo"}],
                    "proposer": {"backend": "felzenszwalb"},
                    "selection": {"min_predicted_iou": 0.0, "min_stability": 0.0},
                    "embedder": clip_config.model_dump(),
                    "labels": {
                        "vocabulary": ["person", "cup", "cat", "rocket", "motorcycle", "helmet", "plate"]
                    },
                    "retrieval": {"similarity_ceiling": 0.99999},
                    "paint": {"backend": "seamless_clone"},
                    "regions_per_image": 2,
                    "batch_size": 2,
                },
            }
        )
    )
    status, printed = _ieiw(capsys, "replacement", str(config_path), "--database-only")
    assert status == 0, printed
    assert "object_database: " in printed and " rows from " in printed and "replacement: " not in printed
    status, printed = _ieiw(capsys, "replacement", str(config_path))
    assert status == 0, printed
    assert "object_database: complete" in printed and "replacement: kept" in printed

    frame = manifest.read_manifest(str(tmp_path / "out/replacement"))
    samples = list(iter_samples([str(tmp_path / "out/replacement/shards")]))
    assert len(samples) == frame["kept"].sum() >= len(DEMO_IMAGES)
    for sample in samples:
        meta = sample.meta
        assert meta.generator.backend == "seamless_clone" and meta.generator.model is None
        assert meta.generator.settings["regions"]["backend"] == "felzenszwalb"
        assert re.fullmatch(r"fz-[0-9a-f]{16}", meta.provenance.region_id)
        assert meta.generator.settings["caption"]["backend"] == "class_names"
        assert meta.instruction_source.startswith("template:replace#")
        assert meta.extra["source_caption"].startswith("a photo with ")
        assert meta.extra["target_object"] in meta.instruction
        assert meta.provenance.extra["reference"]["image_id"] != meta.provenance.image_id
        changed = (sample.source != sample.target).any(axis=2)
        assert changed.any() and not changed[sample.mask == 0].any()

    # a changed proposer setting stops the command in one line, naming it and the option that rebuilds
    raw = yaml.safe_load(config_path.read_text())
    raw["replacement"]["proposer"]["felzenszwalb_scale"] = 300.0
    config_path.write_text(yaml.safe_dump(raw))
    status, printed = _ieiw(capsys, "replacement", str(config_path))
    assert status == 2, printed
    assert "object_database.proposer.felzenszwalb_scale: 400.0 -> 300.0" in printed
    assert "--rebuild-database" in printed and "Traceback" not in printed
    status, printed = _ieiw(capsys, "replacement", str(config_path), "--rebuild-database")
    assert status == 0, printed
    for sample in iter_samples([str(tmp_path / "out/replacement/shards")]):
        assert sample.meta.generator.settings["regions"]["felzenszwalb_scale"] == 300.0
