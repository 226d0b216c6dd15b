"""The removal flow end to end against a real (temporary) Prefect server."""

import glob

import webdataset as wds
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import ArtifactCollectionFilter, ArtifactCollectionFilterKey

from ieiw.flows.build import ieiw_build
from ieiw.flows.config import BuildConfig
from ieiw.storage import manifest, runner
from ieiw.storage.stage_folder import read_record


def _config(annotations, images, output, **removal):
    return BuildConfig.model_validate(
        {
            "name": "test",
            "output": str(output),
            "shards": {"max_samples": 5},
            "removal": {
                "source": {"annotations": [annotations], "images": images},
                "batch_size": 3,
                **removal,
            },
        }
    )


def test_build_writes_shards_manifest_gallery_and_artifacts(prefect_api, phrasecut, tmp_path):
    annotations, images = phrasecut
    runner.forget_models()
    result = ieiw_build(_config(annotations, images, tmp_path / "out"))
    summary = result["stages"]["removal"]
    assert summary["kept"] == 16 and summary["by_task"] == {"add": 8, "remove": 8}
    assert sum(runner.LOADS.values()) == 1  # the inpainter loaded once for all batches

    shards = sorted(glob.glob(str(tmp_path / "out/removal/shards/*.tar")))
    rows = list(wds.WebDataset(shards, shardshuffle=False).decode("rgb8"))
    assert len(rows) == 16 and {r["json"]["task"] for r in rows} == {"remove", "add"}
    assert all(r["src.png"].shape == r["tgt.png"].shape for r in rows)
    frame = manifest.read_manifest(str(tmp_path / "out/removal"))
    assert sorted(frame["key"]) == sorted(r["__key__"] for r in rows)

    card = open(result["data_card"]).read()
    assert (
        "| removal | remove | 8 | not filtered |" in card and "| removal | add | 8 | not filtered |" in card
    )
    assert "| phrasecut | CC BY 4.0" in card and "| removal | opencv | - | 16 |" in card and "```yaml" in card

    page = open(result["gallery"]).read()
    assert page.count('class="pair"') == 16 and "data:image/jpeg;base64" in page

    with get_client(sync_client=True) as client:
        keys = [
            "removal-counts",
            "removal-summary",
            "removal-progress",
            "removal-samples",
            "build-summary",
            "data-card",
        ]
        # the newest version of each key: other tests on this server publish the same keys
        found = client.read_latest_artifacts(
            artifact_filter=ArtifactCollectionFilter(key=ArtifactCollectionFilterKey(any_=keys))
        )
    assert {a.key for a in found} == set(keys)
    counts = next(a for a in found if a.key == "removal-counts")
    assert "kept" in str(counts.data) and "16" in str(counts.data)


def test_rerun_resumes_and_adds_nothing(prefect_api, phrasecut, tmp_path):
    annotations, images = phrasecut
    config = _config(annotations, images, tmp_path / "out")
    first = ieiw_build(config)["stages"]["removal"]
    second = ieiw_build(config)["stages"]["removal"]
    assert first["kept"] == 16 and second["kept"] == 0 and second["records_committed_before"] == 8
    frame = manifest.read_manifest(str(tmp_path / "out/removal"))
    assert len(frame) == 16 and frame["key"].is_unique


def test_bad_inputs_are_counted_not_fatal(prefect_api, phrasecut, tmp_path):
    import json

    annotations, images = phrasecut
    tasks = json.load(open(annotations))
    tasks.append(
        {"task_id": "99__0", "image_id": 99, "phrase": "ghost", "Polygons": [[[[1, 1], [40, 1], [40, 40]]]]}
    )
    open(f"{images}/2.jpg", "r+b").truncate(200)  # a corrupt JPEG
    text = json.dumps(tasks)
    broken = tmp_path / "refer_broken.json"
    broken.write_text(text[:-40])  # and the file ends early
    result = ieiw_build(_config(str(broken), images, tmp_path / "out"))
    dropped = result["stages"]["removal"]["dropped"]
    assert dropped["corrupt_image"] == 2 and dropped["annotation_file_truncated"] == 1
    assert result["stages"]["removal"]["kept"] == 12
    frame = manifest.read_manifest(str(tmp_path / "out/removal"))
    assert frame.loc[~frame["kept"], "drop_detail"].str.len().min() > 0


def test_a_complete_stage_starts_no_flow_run_until_its_input_or_settings_change(
    prefect_api, phrasecut, tmp_path
):
    annotations, images = phrasecut
    stage = str(tmp_path / "out" / "removal")

    def runs() -> int:
        return len(read_record(stage)["runs"])  # every run of the removal flow appends one

    first = ieiw_build(_config(annotations, images, tmp_path / "out", limit=4))["stages"]["removal"]
    assert first["kept"] == 8 and runs() == 1 and not first["skipped"]
    again = ieiw_build(_config(annotations, images, tmp_path / "out", limit=4))["stages"]["removal"]
    assert again["skipped"] and again["kept"] == 0 and again["records_committed_before"] == 4 and runs() == 1
    # more input: the flow runs and commits only the new records
    more = ieiw_build(_config(annotations, images, tmp_path / "out"))["stages"]["removal"]
    assert not more["skipped"] and more["kept"] == 8 and more["records_committed_before"] == 4 and runs() == 2
    assert {c["input"]: c["records"] for c in read_record(stage)["complete"]} == {
        '{"limit": 4}': 4,
        '{"limit": null}': 8,
    }
    smaller = ieiw_build(_config(annotations, images, tmp_path / "out", limit=4))["stages"]["removal"]
    assert smaller["skipped"] and runs() == 2
    # a setting that shapes the output: the fingerprint changed, the flow runs (and refuses without --rebuild)
    changed = ieiw_build(_config(annotations, images, tmp_path / "out", dilation=25), rebuild=["removal"])
    assert not changed["stages"]["removal"]["skipped"] and changed["stages"]["removal"]["kept"] == 16
    assert runs() == 1  # the rebuild started a new record
    frame = manifest.read_manifest(stage)
    assert len(frame) == 16 and frame["key"].is_unique

