"""Builds on an S3-compatible object store: moto's standalone server on 127.0.0.1."""

from __future__ import annotations

import os
import threading
import time
import traceback

import boto3
import pytest
import s3fs
from moto.server import ThreadedMotoServer
from tcp_proxy import TcpProxy

from ieiw.flows.build import ieiw_build
from ieiw.flows.config import BuildConfig
from ieiw.storage import manifest
from ieiw.storage.shards import iter_samples


@pytest.fixture
def object_store(monkeypatch):
    """A real S3 API on 127.0.0.1 (moto's server) behind a proxy that can cut it off.

    Yields (endpoint, stop, start): ``stop`` makes the store unreachable mid-write, ``start``
    brings it back with its data.
    """
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    proxy = TcpProxy(server.get_host_and_port()[1]).start()
    endpoint = f"http://127.0.0.1:{proxy.port}"
    for name, value in {
        "AWS_ACCESS_KEY_ID": "test",
        "AWS_SECRET_ACCESS_KEY": "test",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_ENDPOINT_URL": endpoint,
    }.items():
        monkeypatch.setenv(name, value)
    boto3.client("s3", endpoint_url=endpoint).create_bucket(Bucket="ieiw")
    s3fs.S3FileSystem.clear_instance_cache()  # fsspec reuses clients: one made for another endpoint must go
    yield endpoint, proxy.stop, proxy.start
    proxy.stop()
    server.stop()
    s3fs.S3FileSystem.clear_instance_cache()


def _objects(endpoint: str, prefix: str) -> list[str]:
    listing = boto3.client("s3", endpoint_url=endpoint).list_objects_v2(Bucket="ieiw", Prefix=prefix)
    return [o["Key"] for o in listing.get("Contents", [])]


def _committed(endpoint: str, prefix: str) -> list[str]:
    return [k for k in _objects(endpoint, prefix) if ".tmp-" not in k]


def _config(annotations, images, output, retries=0):
    return BuildConfig.model_validate(
        {
            "name": "s3",
            "output": output,
            "shards": {"max_samples": 4},
            "runner": {"max_workers": 1, "max_in_flight": 1, "retries": retries, "retry_delay_seconds": 0.2},
            "removal": {"source": {"annotations": [annotations], "images": images}, "batch_size": 2},
        }
    )


def test_build_writes_shards_and_manifest_to_s3_and_resumes(prefect_api, phrasecut, object_store):
    endpoint, _, _ = object_store
    annotations, images = phrasecut
    config = _config(annotations, images, "s3://ieiw/builds/one")
    first = ieiw_build(config)["stages"]["removal"]
    assert first["kept"] == 16
    keys = _objects(endpoint, "builds/one/")
    assert any(k.endswith(".tar") for k in keys) and "builds/one/removal/manifest.parquet" in keys
    assert "builds/one/gallery.html" in keys and not [k for k in keys if ".tmp-" in k]
    samples = list(iter_samples("s3://ieiw/builds/one/removal/shards"))
    assert len(samples) == 16 and len({s.key for s in samples}) == 16
    again = ieiw_build(config)["stages"]["removal"]
    assert again["kept"] == 0 and again["records_committed_before"] == 8


def test_store_stopped_mid_write_fails_clearly_and_rerun_completes(prefect_api, object_store, tmp_path):
    from phrasecut_fixture import write_phrasecut

    endpoint, stop, start = object_store
    annotations, images = write_phrasecut(str(tmp_path / "data"), n_images=16, size=160)
    config = _config(annotations, images, "s3://ieiw/builds/two")
    outcome: dict = {}

    def run():
        try:
            outcome["result"] = ieiw_build(config)
        except Exception as error:  # the failure is the subject of this test
            outcome["error"] = error

    thread = threading.Thread(target=run)
    thread.start()
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not _committed(endpoint, "builds/two/removal/manifest/"):
        time.sleep(0.05)
    stop()
    thread.join(timeout=180)
    assert "error" in outcome, "the build should fail while the store is down"
    message = "".join(traceback.format_exception(outcome["error"]))
    assert "rerun to resume" in str(outcome["error"]) and "s3://ieiw/builds/two" in str(outcome["error"]), (
        message
    )

    start()
    done_before = manifest.completed_record_ids("s3://ieiw/builds/two/removal")
    assert 0 < len(done_before) < 32
    result = ieiw_build(config)["stages"]["removal"]
    assert result["records_committed_before"] == len(done_before)
    frame = manifest.read_manifest("s3://ieiw/builds/two/removal")
    assert len(frame) == 64 and frame["key"].is_unique and frame["kept"].all()
    assert not [k for k in _objects(endpoint, "builds/two/") if ".tmp-" in k]
    assert os.environ["AWS_ENDPOINT_URL"] == endpoint
