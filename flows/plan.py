"""``ieiw build CONFIG --plan``: what a build will do and what its GPU work will cost, before any work.

For every stage the config asks for: the models it loads and on which device (one copy per GPU
worker with a Dask GPU runner), its inputs counted from the annotation files (streamed, never loaded
whole), what its stage folder already holds (committed records, and whether it was made with these
settings), and an estimate of its GPU-hours: the GPU work the stage does (LaMa windows, SAM images,
CLIP embeddings, Paint-by-Example pairs) divided by measured throughputs from the table
``flows/resources/throughputs.yaml`` (written by ``bench/gpu_throughput.py``, each figure with the
device it was measured on). A figure measured with ``--tiny`` on a CPU is a placeholder and the plan
says so. Work with no measured figure (BLIP captions, the LLM) is listed without hours.

The build records its plan as ``<output>/plan.json`` and the data card shows the estimate beside the
cost the stages measured. The figures and the arithmetic are in :mod:`ieiw.flows.throughputs`, the
tables a person reads in :mod:`ieiw.flows.plan_report`.
"""

from __future__ import annotations

import datetime
import json
import os
from dataclasses import asdict, dataclass, field
from typing import Any

from ieiw.flows.config import BuildConfig, RunnerConfig
from ieiw.flows.runners import worker_gpus
from ieiw.flows.throughputs import GpuWork, estimate, pick_figure, throughput_table
from ieiw.storage import fs, manifest
from ieiw.storage.stage_folder import read_record

PLAN_FILE = "plan.json"


@dataclass
class ModelUse:
    role: str
    model: str
    device: str


@dataclass
class StagePlan:
    stage: str
    inputs: int | None
    unit: str
    committed: int | None = None  # records (or objects) its stage folder holds already
    state: str = "not started"
    models: list[ModelUse] = field(default_factory=list)
    work: list[GpuWork] = field(default_factory=list)

    @property
    def gpu_hours(self) -> float | None:
        """Estimated GPU-hours of the work left (None: none of it has a figure)."""
        hours = [w.hours for w in self.work if w.hours is not None]
        return sum(hours) if hours else (0.0 if not self.work else None)

    @property
    def total_gpu_hours(self) -> float | None:
        """Estimated GPU-hours of the whole stage, done or not."""
        hours = [w.total_hours for w in self.work if w.total_hours is not None]
        return sum(hours) if hours else (0.0 if not self.work else None)


@dataclass
class Plan:
    name: str
    output: str
    stages: list[StagePlan]
    gpus: int
    notes: list[str] = field(default_factory=list)
    created: str = field(
        default_factory=lambda: datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")
    )

    @property
    def gpu_hours(self) -> float:
        return sum(s.gpu_hours or 0.0 for s in self.stages)

    @property
    def total_gpu_hours(self) -> float:
        return sum(s.total_gpu_hours or 0.0 for s in self.stages)

    def record(self) -> dict[str, Any]:
        data = asdict(self)
        for stage, plan in zip(data["stages"], self.stages, strict=True):
            stage["gpu_hours"], stage["total_gpu_hours"] = plan.gpu_hours, plan.total_gpu_hours
        data["gpu_hours"], data["total_gpu_hours"] = self.gpu_hours, self.total_gpu_hours
        return data


# --------------------------------------------------------------------------------------- devices


def device_label(setting: str | None, runner: RunnerConfig) -> str:
    """Where a model with this device setting loads, under this runner."""
    if setting not in (None, "", "auto") and not setting.startswith("cuda"):
        return setting
    if runner.task_runner == "dask" and runner.dask_address:
        return f"{setting or 'auto'} on each worker of the Dask scheduler {runner.dask_address}"
    gpus = worker_gpus(runner) if runner.task_runner == "dask" else []
    if gpus:
        return f"cuda: one copy in each of {len(gpus)} GPU workers (GPUs {', '.join(gpus)})"
    import torch

    if torch.cuda.is_available():
        return f"cuda:0 ({torch.cuda.get_device_name(0)}), shared by the {runner.max_workers} threads"
    return (
        "cpu (no GPU visible here)" if setting in (None, "", "auto") else f"{setting} (no GPU visible here)"
    )


def _faiss_device() -> str:
    try:
        from ieiw.storage.optional import import_faiss

        faiss = import_faiss()
    except (ImportError, RuntimeError):
        return "FAISS not installed"
    gpu = hasattr(faiss, "StandardGpuResources") and faiss.get_num_gpus() > 0
    return "GPU (faiss-gpu)" if gpu else "cpu"


def _name(model: str | None) -> str:
    if not model:
        return "-"
    return (
        os.path.basename(model.rstrip("/"))
        if ("/" in model and os.path.exists(model)) or "://" in model
        else model
    )


# --------------------------------------------------------------------------------------- stages


def _committed(url: str) -> int | None:
    """Committed records of a sample stage (None if it holds nothing yet)."""
    if read_record(url) is None and not manifest.completed_batches(url):
        return None
    return len(manifest.completed_records(url))


def _fingerprint(make):
    """``make()``'s fingerprint, or the reason it cannot be made here (an input file missing)."""
    try:
        return make()
    except (OSError, ValueError) as error:
        return f"settings not checked ({type(error).__name__}: {error})"


def _state(url: str, fingerprint) -> str:
    record = read_record(url)
    if record is None:
        return "not started"
    if isinstance(fingerprint, str):
        return f"recorded; {fingerprint}"
    if fingerprint is None:
        return "recorded"
    digest = record.get("fingerprint", {}).get("digest")
    if digest == fingerprint.digest:
        return "current"
    from ieiw.storage.fingerprint import Fingerprint

    changes = fingerprint.changes(Fingerprint.from_record(record["fingerprint"]))
    return "made with other settings: " + "; ".join(changes[:3]) + (" ..." if len(changes) > 3 else "")


def _label_count(labels) -> str:
    try:
        return f"{len(labels.names()):,} names"
    except OSError:
        return f"the class names of {labels.class_descriptions} (unreadable here)"


def _left(inputs: int | None, committed: int | None) -> int | None:
    return None if inputs is None else max(inputs - (committed or 0), 0)


def removal_plan(config: BuildConfig, table: list[dict], check: bool) -> tuple[StagePlan, int | None]:
    from ieiw.flows.fingerprints import with_shard_encoding
    from ieiw.flows.removal import count_tasks, removal_fingerprint

    section = config.removal
    url = fs.join(config.output, "removal")
    tasks = count_tasks(section)
    unit = "PhraseCut tasks" if tasks is not None else "PhraseCut tasks (annotations unreadable here)"
    plan = StagePlan("removal", tasks, unit, _committed(url))
    fingerprint = (
        _fingerprint(lambda: with_shard_encoding(removal_fingerprint(section), config.shards))
        if check
        else None
    )
    plan.state = _state(url, fingerprint)
    if fingerprint is not None and plan.state == "current":
        from ieiw.flows.removal import removal_complete

        if removal_complete(section, config.output, config.shards) is not None:
            plan.state = "complete: the build will not run it"
    inpaint = section.inpaint
    if inpaint.backend == "lama":
        how = (
            f"{inpaint.strategy} image" if inpaint.strategy == "whole" else f"crop {inpaint.window}px windows"
        )
        plan.models.append(
            ModelUse(
                "inpainter",
                f"LaMa {_name(inpaint.model)} ({how})",
                device_label(inpaint.device, config.runner),
            )
        )
        plan.work.append(estimate("lama_windows", tasks, _left(tasks, plan.committed), table))
    else:
        plan.models.append(ModelUse("inpainter", f"OpenCV {inpaint.opencv_method} (classical)", "cpu"))
    samples = None if tasks is None else tasks * (2 if section.make_add_pairs else 1)
    return plan, samples


def replacement_plans(
    config: BuildConfig, table: list[dict], check: bool
) -> tuple[list[StagePlan], int | None]:
    """The object database (SAM where images lack masks, CLIP on every stored crop) and the pairs
    (Paint-by-Example, BLIP, the LLM: no SAM and no CLIP, which the database ran)."""
    from ieiw.flows.fingerprints import with_shard_encoding
    from ieiw.flows.replacement import database_fingerprint, database_url, replacement_fingerprint
    from ieiw.pipelines.replacement.database import ObjectDatabase
    from ieiw.pipelines.replacement.sources import count_records

    section = config.replacement
    runner = config.runner
    counts = count_records(section)
    known = [c for c in counts.values() if c is not None]
    images = None if len(known) < len(counts) else sum(known)
    if images is not None and section.limit is not None:
        images = min(images, section.limit)
    proposed = sum(
        c or 0 for (key, c) in counts.items() if key.endswith(":images")
    )  # images without masks: SAM proposes their regions
    db_url = database_url(section, config.output)
    unreadable = [key.split(":", 1)[1] for key, count in counts.items() if count is None]
    unit = f"images ({', '.join(unreadable)} unreadable here)" if unreadable else "images"
    database = StagePlan("object_database", images, unit)
    db_fingerprint = _fingerprint(lambda: database_fingerprint(section)) if check else None
    database.state = _state(db_url, db_fingerprint)
    if read_record(db_url) is not None:
        stored = ObjectDatabase(db_url)
        database.committed = len(stored)
        database.unit = f"images ({len(stored)} objects stored in {len(stored.parts)} parts)"
    embedder = section.embedder
    clip_device = device_label(embedder.device, runner)
    database.models.append(
        ModelUse("embedder", f"open_clip {embedder.model} ({embedder.pretrained})", clip_device)
    )
    database.models.append(
        ModelUse("labels", f"CLIP text embeddings of {_label_count(section.labels)}", clip_device)
    )
    if section.needs_proposer():
        proposer = section.proposer
        if proposer.backend == "sam":
            sam = proposer.sam
            database.models.append(
                ModelUse(
                    "proposer",
                    f"SAM {sam.model_type} {_name(sam.checkpoint)}",
                    device_label(sam.device, runner),
                )
            )
            done = database.state == "current"
            database.work.append(estimate("sam_images", proposed, 0 if done else proposed, table))
        else:
            database.models.append(ModelUse("proposer", "Felzenszwalb (classical)", "cpu"))
    database.models.append(ModelUse("index", f"FAISS {section.database.index.kind}", _faiss_device()))
    crops = None if images is None else images * section.database.objects_per_image
    done = database.state == "current"  # a recorded database with these settings: complete, or resumed
    clip = estimate("clip_images", crops, 0 if done else crops, table)
    clip.figure += f" (at most {section.database.objects_per_image} crops per image)"
    database.work.append(clip)

    url = fs.join(config.output, "replacement")
    pairs = StagePlan("replacement", images, unit, _committed(url))
    if check and db_fingerprint is not None and not isinstance(db_fingerprint, str):
        fingerprint = _fingerprint(
            lambda: with_shard_encoding(
                replacement_fingerprint(section, db_fingerprint.digest), config.shards
            )
        )
        pairs.state = _state(url, fingerprint)
    else:
        pairs.state = _state(url, None)
    left = _left(images, pairs.committed)
    made = None if left is None else left * section.regions_per_image
    every = None if images is None else images * section.regions_per_image
    paint = section.paint
    if paint.backend == "paint_by_example":
        pairs.models.append(
            ModelUse(
                "painter",
                f"Paint-by-Example {_name(paint.model)} ({paint.steps} steps)",
                device_label(paint.device, runner),
            )
        )
        chosen = pick_figure(table, "pbe_pairs")
        measured_steps = (chosen or {}).get("params", {}).get("steps") or paint.steps
        pairs.work.append(estimate("pbe_pairs", every, made, table, scale=paint.steps / measured_steps))
    else:
        pairs.models.append(ModelUse("painter", "seamless clone (classical)", "cpu"))
    caption = section.caption
    if caption.backend == "blip":
        pairs.models.append(
            ModelUse("captioner", f"BLIP {_name(caption.model)}", device_label(caption.device, runner))
        )
        twice = [None if n is None else 2 * n for n in (every, made)]
        pairs.work.append(estimate("blip_captions", *twice, table))
    instructions = section.instructions
    if instructions.llm is not None and (instructions.backend == "llm" or instructions.paraphrase):
        endpoint = instructions.llm.base_url or "api.openai.com"
        pairs.models.append(ModelUse("instructions", f"LLM {instructions.llm.model}", f"remote: {endpoint}"))
    else:
        pairs.models.append(ModelUse("instructions", "templates", "cpu"))
    pairs.models.append(ModelUse("retrieval", "the object database's FAISS index", _faiss_device()))
    samples = None if images is None else images * section.regions_per_image
    return [database, pairs], samples


def quality_plans(config: BuildConfig, name: str, samples: int | None, table: list[dict]) -> list[StagePlan]:
    """Scoring a generator's candidates (CLIP on source and target, the aesthetic head, KNN-GIQA) and
    filtering them (no model)."""
    from ieiw.quality.config import default_scores_url

    quality = config.quality
    scoring = quality.scoring
    candidates = fs.join(config.output, name)
    scores_url = default_scores_url(candidates)
    score = StagePlan(f"score {name}", samples, "candidate samples")
    score.state = _state(scores_url, None)
    score.committed = len(manifest.completed_batches(scores_url)) if score.state != "not started" else None
    if score.committed is not None:
        score.unit = f"candidate samples ({score.committed} shards scored)"
    clip_device = device_label(scoring.embedder.device, config.runner)
    score.models.append(
        ModelUse(
            "embedder", f"open_clip {scoring.embedder.model} ({scoring.embedder.pretrained})", clip_device
        )
    )
    if scoring.aesthetic_checkpoint:
        score.models.append(
            ModelUse("aesthetic", f"LAION aesthetic MLP {_name(scoring.aesthetic_checkpoint)}", clip_device)
        )
    if scoring.giqa is not None:
        score.models.append(
            ModelUse("giqa", f"KNN-GIQA index {_name(scoring.giqa.index_dir)}", _faiss_device())
        )
    # embeddings are cached by image content: a removal and its add pair share their two images
    images = None if samples is None else (samples if name == "removal" else 2 * samples)
    scored = score.state == "recorded" and samples is not None and score.committed  # a finished run
    score.work.append(estimate("clip_images", images, images if not scored else None, table))
    filtered = StagePlan(f"filter {name}", samples, "candidate samples")
    filtered.state = _state(fs.join(config.output, "final", name), None)
    filtered.models.append(ModelUse("policy", "declarative rules on the scores", "cpu"))
    return [score, filtered]


def make_plan(
    config: BuildConfig, stages: list[str] | None = None, check: bool = True, table: list[dict] | None = None
) -> Plan:
    """The plan of a build (of ``stages`` only, if given); ``check`` compares each generator's recorded
    fingerprint with the config's (which hashes model files; the build skips it when it records its plan)."""
    table = throughput_table() if table is None else table
    wanted = set(stages or ("removal", "replacement", "web_edits", "multitask", "score", "filter"))
    plans: list[StagePlan] = []
    samples: dict[str, int | None] = {}
    if config.removal is not None and "removal" in wanted:
        plan, samples["removal"] = removal_plan(config, table, check)
        plans.append(plan)
    if config.replacement is not None and "replacement" in wanted:
        found, samples["replacement"] = replacement_plans(config, table, check)
        plans.extend(found)
    if config.web_edits is not None and "web_edits" in wanted:
        web = StagePlan(
            "web_edits", None, "posts (listed when crawled)", _committed(fs.join(config.output, "web_edits"))
        )
        web.state = _state(fs.join(config.output, "web_edits"), None)
        web.models.append(ModelUse("pairing", "SSIM / ORB + RANSAC (OpenCV)", "cpu"))
        plans.append(web)
        samples["web_edits"] = None
    if config.multitask is not None and "multitask" in wanted:
        multitask = StagePlan("multitask", None, "records", _committed(fs.join(config.output, "multitask")))
        multitask.state = _state(fs.join(config.output, "multitask"), None)
        multitask.models.append(ModelUse("renderers", "keypoint, segmentation, enhancement renderers", "cpu"))
        plans.append(multitask)
        samples["multitask"] = None
    if config.quality is not None and wanted & {"score", "filter"}:
        for name in ("removal", "replacement", "web_edits", "multitask"):
            if getattr(config, name) is not None:
                for plan in quality_plans(config, name, samples.get(name), table):
                    if plan.stage.split()[0] in wanted:
                        plans.append(plan)
    runner = config.runner
    gpus = len(worker_gpus(runner)) if runner.task_runner == "dask" and not runner.dask_address else 0
    notes = []
    used = {w.figure for p in plans for w in p.work}
    if any("placeholder" in u for u in used):
        notes.append(
            "Some hours come from figures measured with tiny models on a CPU (bench/gpu_throughput.py "
            "--tiny): placeholders that keep the plan working, not what a GPU costs. Run "
            "bench/gpu_throughput.py on a GPU with --table flows/resources/throughputs.yaml to measure them."
        )
    if any(w.hours is None and w.items for p in plans for w in p.work):
        notes.append("Work without a measured figure (e.g. BLIP captions) is not in the hours.")
    return Plan(config.name, config.output, plans, gpus, notes)


# ------------------------------------------------------------------------------------- recording


def record_plan(config: BuildConfig, stages: list[str] | None = None) -> str:
    """Write the build's plan to ``<output>/plan.json`` (for the data card); returns its URL."""
    plan = make_plan(config, stages, check=False)
    url = fs.join(config.output, PLAN_FILE)
    fs.write_bytes_atomic(url, json.dumps(plan.record(), indent=2).encode("utf-8"))
    return url


def read_plan(output: str) -> dict | None:
    """The plan a build recorded, if any."""
    url = fs.join(output, PLAN_FILE)
    return json.loads(fs.read_bytes(url)) if fs.exists(url) else None
