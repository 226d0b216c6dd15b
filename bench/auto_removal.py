"""Pairs per second of the grounded removal generator against PhraseCut removal of the same photos.

Both stages run in one process, on the CPU, with the tests' tiny models of the real classes: the
grounded chain (a CLIP tagger, an OWLv2 detector that finds red and blue, a SAM that masks them, the
tiny TorchScript LaMa, the OWLv2 verifier) on a folder of photos with one planted square each, and
PhraseCut removal (the same tiny LaMa, crop windows) on the same photos, its polygons the planted
squares. Each round writes both stages afresh through the one runner; the first round also loads the
models. Prints each round, then each stage's pairs per second (the median of the rounds after the
first) and their ratio.

``--operations`` instead measures the chain's own operations of the throughput table that ``--plan``
reads: ``owlv2_images`` (the detector's images per second, each with ``top_k`` queries) and
``sam_boxes`` (SAM's boxes per second, three a photo, the image encoder included), and with the tiny
models ``grounding_dino_images`` (Grounding DINO, the other detector, the same photos and phrases), each
the fastest of five passes, through the generator's loaders; with the tiny models on the CPU, or with
``--real`` the real architectures (OWLv2 base at 960 px, SAM ViT-H) with random weights on the GPU.
``--table FILE`` merges those figures into the table (``flows/resources/throughputs.yaml``), each with its
device.

    python bench/auto_removal.py [--photos 96] [--rounds 3] [--batch-size 32]
    python bench/auto_removal.py --operations [--real] [--table flows/resources/throughputs.yaml]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

HERE = Path(__file__).resolve().parent
TESTS = HERE.parent / "tests"
for folder in (TESTS, TESTS / "grounded", TESTS / "quality", TESTS / "model"):  # the tiny models
    sys.path.insert(0, str(folder))
os.environ.setdefault("TQDM_DISABLE", "1")

CELL = 32  # the tiny detector's cells on a 128-pixel photo


def make_photos(root: Path, count: int, seed: int) -> tuple[Path, Path]:
    """``count`` grey photos (``<id>.jpg``), each with a red or blue square on one of the tiny detector's
    cells, and PhraseCut's ``refer_*.json`` of the same squares."""
    from grounded_tiny_models import BLUE, RED, grey, paint

    rng = np.random.default_rng(seed)
    images = root / "images"
    images.mkdir(parents=True)
    tasks = []
    for image_id in range(1, count + 1):
        colour, phrase = (RED, "red square") if image_id % 2 else (BLUE, "blue square")
        top, left = (int(v) * CELL for v in rng.integers(0, 3, 2))
        photo = paint(grey(seed + image_id), colour, top, left, CELL, CELL)
        Image.fromarray(photo).save(images / f"{image_id}.jpg", quality=95)
        square = [[left, top], [left + CELL, top], [left + CELL, top + CELL], [left, top + CELL]]
        tasks.append(
            {
                "task_id": f"{image_id}__0",
                "image_id": image_id,
                "phrase": phrase,
                "Polygons": [[square]],
                "instance_boxes": [[left, top, CELL, CELL]],
                "phrase_structure": {},
            }
        )
    annotations = root / "refer_bench.json"
    annotations.write_text(json.dumps(tasks))
    return annotations, images


def make_stages(root: Path, tiny, annotations: Path, images: Path, batch_size: int):
    from grounded_helpers import grounded_config

    from ieiw.pipelines.grounded.stage import GroundedRemovalStage
    from ieiw.pipelines.removal import RemovalConfig, RemovalStage

    grounded = grounded_config({"path": str(images), "dataset": "bench"}, tiny, batch_size=batch_size)
    removal = RemovalConfig.model_validate(
        {
            "source": {"annotations": [str(annotations)], "images": str(images)},
            "inpaint": grounded.inpaint.model_dump(),
            "dilation": grounded.dilation,
            "batch_size": batch_size,
        }
    )
    return {
        "grounded_removal": GroundedRemovalStage(grounded, str(root / "grounded")),
        "phrasecut_removal": RemovalStage(removal, str(root / "phrasecut")),
    }


def timed(stage) -> tuple[float, int]:
    from ieiw.storage.runner import RunOptions, ThreadExecutor, run_stage

    started = time.perf_counter()
    with ThreadExecutor(1) as executor:
        summary = run_stage(stage, executor, RunOptions())
    return time.perf_counter() - started, summary.kept


# ------------------------------------------------------------------------------------- the operations


def real_models(root: Path):
    """OWLv2 base (960 px, 16-pixel patches) and SAM ViT-H with random weights, saved as checkpoints are
    (the processor's tokenizer is the tiny test vocabulary: token ids, not the weights, are all it gives)."""
    import torch
    from judge_tiny_models import _clip_bpe
    from segment_anything import sam_model_registry
    from transformers import (
        CLIPTokenizer,
        Owlv2Config,
        Owlv2ForObjectDetection,
        Owlv2ImageProcessor,
        Owlv2Processor,
    )

    from ieiw.pipelines.grounded.config import SegmenterConfig

    owl = root / "owlv2-base"
    owl.mkdir(parents=True)
    vocab, merges, _ = _clip_bpe(owl)
    Owlv2ForObjectDetection(Owlv2Config(vision_config={"image_size": 960})).save_pretrained(owl)
    Owlv2Processor(
        image_processor=Owlv2ImageProcessor(),
        tokenizer=CLIPTokenizer(str(vocab), str(merges), model_max_length=16),
    ).save_pretrained(owl)
    torch.save(sam_model_registry["vit_h"](checkpoint=None).state_dict(), root / "sam_vit_h.pth")
    return str(owl), SegmenterConfig(checkpoint=str(root / "sam_vit_h.pth"), model_type="vit_h", batch_size=4)


def operations(args) -> list[dict]:
    """``owlv2_images`` and ``sam_boxes`` per second on this machine's device."""
    import torch
    from grounded_helpers import make_tiny_models
    from grounded_tiny_models import BLUE, RED, grey, paint, tiny_grounding_dino

    from ieiw.pipelines.grounded.grounding import load_detector, load_owl
    from ieiw.pipelines.grounded.segmenting import load_segmenter
    from ieiw.quality.verifier import VerifierConfig

    device = "cuda" if torch.cuda.is_available() else "cpu"
    with tempfile.TemporaryDirectory() as tmp:
        if args.real:
            owl_path, sam_config = real_models(Path(tmp))
            side, count, batch = 1024, 16, 8
        else:
            tiny = make_tiny_models(Path(tmp))
            owl_path, sam_config = tiny.owl, tiny.sam
            side, count, batch = 128, 64, 8
        owl = load_owl(owl_path, device)
        dino_path = None if args.real else str(tiny_grounding_dino(Path(tmp) / "tiny-grounding-dino"))
        dino = None if dino_path is None else load_detector("grounding_dino", dino_path, device)
        segmenter = load_segmenter(sam_config.model_copy(update={"device": device, "batch_size": batch // 2}))
    rng = np.random.default_rng(args.seed)
    photos = []
    for n in range(count):
        photo = grey(args.seed + n)
        photo = paint(
            photo, RED if n % 2 else BLUE, *(int(v) * CELL for v in rng.integers(0, 3, 2)), CELL, CELL
        )
        photos.append(np.asarray(Image.fromarray(photo).resize((side, side))))
    queries = [["a photo of a red square", "a photo of a blue square", "a photo of a cup", " ", " "]] * count
    detector = owl.detector(VerifierConfig(model=owl_path, batch_size=batch))
    boxes = [
        np.array(
            [[0, 0, side / 4, side / 4], [side / 4, side / 4, side / 2, side / 2], [0, side / 2, side, side]],
            np.float32,
        )
    ] * count

    def seconds(work, repeats: int = 5) -> float:
        """The fastest of ``repeats`` passes over the photos (the least disturbed by other work)."""
        work(photos[:batch])  # warm-up
        best = float("inf")
        for _ in range(repeats):
            if device == "cuda":
                torch.cuda.synchronize()
            started = time.perf_counter()
            work(photos)
            if device == "cuda":
                torch.cuda.synchronize()
            best = min(best, time.perf_counter() - started)
        return best

    owl_rate = count / seconds(lambda images: detector.detect(images, queries[: len(images)]))
    dino_rate = None
    if dino is not None:  # the same photos and phrases, in the tiny model's vocabulary
        dino_queries = [
            ["a photo of a red square", "a photo of a blue square", "a square", "red", "blue"]
        ] * count
        grounder = dino.detector(VerifierConfig(model=dino_path, batch_size=batch))
        dino_rate = count / seconds(lambda images: grounder.detect(images, dino_queries[: len(images)]))
    sam_rate = 3 * count / seconds(lambda images: segmenter.segment(images, boxes[: len(images)]))
    name = torch.cuda.get_device_name() if device == "cuda" else f"CPU ({os.cpu_count()} cores)"
    model = "OWLv2 base" if args.real else "tiny OWLv2"
    figures = [
        {
            "operation": "owlv2_images",
            "unit": "images/s",
            "per_second": round(owl_rate, 3),
            "device": name,
            "params": {"model": model, "image_side": side, "queries": 5, "batch": batch},
        },
        {
            "operation": "sam_boxes",
            "unit": "boxes/s",
            "per_second": round(sam_rate, 3),
            "device": name,
            "params": {
                "model": sam_config.model_type,
                "image_side": side,
                "boxes_per_image": 3,
                "batch": batch // 2,
            },
        },
    ]
    if dino_rate is not None:
        figures.append(
            {
                "operation": "grounding_dino_images",
                "unit": "images/s",
                "per_second": round(dino_rate, 3),
                "device": name,
                "params": {"model": "tiny Grounding DINO", "image_side": side, "queries": 5, "batch": batch},
            }
        )
    return figures


def merge_table(path: Path, figures: list[dict], tiny: bool) -> None:
    """Put ``figures`` into the throughput table, replacing those of the same operation measured on the
    same device the same way (tiny or not)."""
    import datetime

    import yaml

    text = path.read_text() if path.exists() else ""
    table = (yaml.safe_load(text) if text else None) or {"figures": []}
    kept = [
        f
        for f in table["figures"]
        if not any(
            f["operation"] == n["operation"]
            and f.get("device") == n["device"]
            and bool(f.get("tiny")) == tiny
            for n in figures
        )
    ]
    for new in figures:
        kept.append(
            {
                **{k: new[k] for k in ("operation", "unit", "per_second", "device")},
                "tiny": tiny,
                "measured_with": "bench/auto_removal.py --operations" + ("" if tiny else " --real"),
                "date": datetime.date.today().isoformat(),
                "params": new["params"],
            }
        )
    kept.sort(key=lambda f: (f["operation"], bool(f.get("tiny")), f["device"]))
    header = text.split("\nfigures:")[0] if text else ""
    body = yaml.safe_dump({"figures": kept}, sort_keys=False, width=110)
    path.write_text((header.rstrip() + "\n" if header.strip() else "") + body)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--photos", type=int, default=96)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--operations", action="store_true", help="the throughput table's operations")
    parser.add_argument("--real", action="store_true", help="real architectures, random weights (a GPU)")
    parser.add_argument("--table", type=Path, default=None, help="merge --operations' figures into it")
    args = parser.parse_args()
    if args.operations:
        figures = operations(args)
        for found in figures:
            print(json.dumps(found))
        if args.table:
            merge_table(args.table, figures, tiny=not args.real)
            print(f"merged {len(figures)} figures into {args.table}")
        return

    import torch
    from grounded_helpers import make_tiny_models

    rates: dict[str, list[float]] = {"grounded_removal": [], "phrasecut_removal": []}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        tiny = make_tiny_models(root / "models")
        annotations, images = make_photos(root / "data", args.photos, args.seed)
        for round_ in range(args.rounds):
            stages = make_stages(root / f"round-{round_}", tiny, annotations, images, args.batch_size)
            for name, stage in stages.items():
                seconds, pairs = timed(stage)
                rates[name].append(pairs / seconds)
                print(
                    f"round {round_} {name}: {pairs} pairs in {seconds:.2f} s, {pairs / seconds:.1f} pairs/s"
                )
    steady = {name: statistics.median(found[1:] or found) for name, found in rates.items()}
    print(
        json.dumps(
            {
                "device": f"cpu ({torch.get_num_threads()} threads)",
                "photos": args.photos,
                "seed": args.seed,
                "pairs_per_second": {name: round(rate, 2) for name, rate in steady.items()},
                "grounded_over_phrasecut": round(steady["grounded_removal"] / steady["phrasecut_removal"], 3),
            }
        )
    )


if __name__ == "__main__":
    main()
