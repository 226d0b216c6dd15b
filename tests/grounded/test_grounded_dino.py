"""Grounding DINO as the grounding detector: a tiny ``GroundingDinoForObjectDetection`` of the real
config classes (random weights), saved as a hub checkpoint is and loaded through the production loader,
asked each photo's queries at one fixed shape (a photo's detections do not depend on which photos shared
its batch), and run through the stage; the verifier stays OWL, and each loader refuses the other's
checkpoint in one line."""

from __future__ import annotations

import numpy as np
import pytest
from grounded_helpers import SEED, grounded_config, write_planted
from grounded_tiny_models import grey, tiny_grounding_dino

from ieiw.pipelines.grounded.gates import REASONS
from ieiw.pipelines.grounded.grounding import DinoModel, ground, load_detector, load_owl
from ieiw.pipelines.grounded.stage import GroundedRemovalStage
from ieiw.pipelines.grounded.tagging import Tag
from ieiw.quality.verifier import VerifierConfig
from ieiw.storage import runner
from ieiw.storage.identity import model_identity
from ieiw.storage.runner import RunOptions, ThreadExecutor, run_stage


@pytest.fixture(scope="module")
def dino(tmp_path_factory):
    return str(tiny_grounding_dino(tmp_path_factory.mktemp("dino") / "tiny-grounding-dino"))


def test_a_tiny_grounding_dino_loads_and_detects_at_a_fixed_shape(dino, tiny_models):
    loaded = load_detector("grounding_dino", dino, "cpu")
    assert isinstance(loaded, DinoModel) and type(loaded.model).__name__ == "GroundingDinoForObjectDetection"
    assert loaded.identity == model_identity(dino)  # by content, as every local model
    detector = loaded.detector(VerifierConfig(model=dino, query_template="{}", batch_size=2))
    text, spans = detector.merged(["Red square", " ", "a blue square"])
    assert text == "red square. a blue square."
    ids = detector.processor.tokenizer(text)["input_ids"]
    tokens = detector.processor.tokenizer.convert_ids_to_tokens(ids)
    assert [tokens[a:b] for a, b in spans] == [["red", "square"], [], ["a", "blue", "square"]]

    rng = np.random.default_rng(SEED)
    images = [grey(SEED), rng.integers(0, 255, (96, 128, 3), dtype=np.uint8), grey(SEED + 1)[:80]]
    queries = [["red square", " "], ["blue square", "red square"], ["square", " "]]
    together = detector.detect(images, queries)
    for n, (image, found) in enumerate(zip(images, together, strict=True)):
        alone = detector.detect([image], [queries[n]])[0]
        np.testing.assert_allclose(alone["scores"], found["scores"], atol=1e-5, err_msg=f"seed {SEED}")
        np.testing.assert_allclose(alone["boxes"], found["boxes"], atol=1e-3, err_msg=f"seed {SEED}")
        assert found["boxes"].shape == (16, 4) and found["scores"].shape == (16, 2)
        assert ((found["scores"] >= 0) & (found["scores"] <= 1)).all()
    assert not together[0]["scores"][:, 1].any()  # a padded query scores nothing

    grounded = ground(detector, images, [[Tag("red square", 0.9)], [], [Tag("square", 0.5)]], 2, 0.0, 0.5)
    assert [len(g) for g in grounded] == [1, 0, 1]
    height, width = images[2].shape[:2]
    boxes = grounded[2][0].boxes
    assert len(boxes) and (boxes[:, [0, 2]] <= width).all() and (boxes[:, [1, 3]] <= height).all()

    with pytest.raises(ValueError, match="a grounding-dino model where OWLv2 or OWL-ViT is needed"):
        load_owl(dino, "cpu")
    with pytest.raises(
        ValueError, match=r"a owlv2 model, not Grounding DINO \(detector.kind: grounding_dino\)"
    ):
        load_detector("grounding_dino", tiny_models.owl, "cpu")


def test_the_stage_grounds_with_grounding_dino_and_verifies_with_owl(dino, tiny_models, tmp_path):
    photos = write_planted(tmp_path / "photos", ["red", "blue"])
    detector = {"kind": "grounding_dino", "model": dino, "query_template": "{}", "device": "cpu"}
    config = grounded_config({"path": str(photos), "dataset": "planted"}, tiny_models, detector=detector)
    stage = GroundedRemovalStage(config, str(tmp_path / "out"))
    uses = {u.role: u.model for u in stage.model_uses()}
    assert uses["detector"] == f"Grounding DINO {dino}" and uses["verifier"].startswith("OWLv2")
    assert [w.operation for w in stage.workload(2)][1] == "grounding_dino_images"
    runner.forget_models()
    with ThreadExecutor(1) as executor:
        summary = run_stage(stage, executor, RunOptions())
    # random weights find what they find; every photo is done, every drop a gate's reason
    assert summary.complete and summary.records == 2, f"seed {SEED}: {summary.outcome()}"
    assert set(summary.dropped) <= {*REASONS, "inpaint_no_change", "no_tags"}, summary.outcome()
    assert summary.kept + sum(summary.dropped.values()) >= 2
    assert sum(runner.LOADS.values()) == 5, runner.LOADS  # the detector is no longer the verifier's model
