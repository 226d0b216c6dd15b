"""`ieiw train | tiny-model | edit | evaluate | export-hf | edit-ui`: train the editing model and use it.

``ieiw train CONFIG`` runs every stage of a curriculum config in order (skipping complete ones and
resuming the interrupted one); ``--stage NAME`` runs one; ``--max-steps``, ``--base``... override the
config's fields. Every model a command names is looked up before anything loads
(:mod:`ieiw.model.references`): one that is not there is one line, exit 2.
"""

from __future__ import annotations

import json
from pathlib import Path

import typer
from rich.console import Console

console = Console()


def _settings(steps: int, text_guidance: float, image_guidance: float, seed: int, resolution: int):
    from ieiw.model.inference import EditSettings

    return EditSettings(
        steps=steps,
        text_guidance=text_guidance,
        image_guidance=image_guidance,
        seed=seed,
        resolution=resolution,
    )


def _train_directly(config: Path, stage: str | None, num_processes: int, overrides: dict) -> list[dict]:
    """The stages in this process, or each through `accelerate launch` (the flow's task, unwrapped)."""
    from ieiw.flows.train import train_stage
    from ieiw.model.config import load_train_config
    from ieiw.model.curriculum import plan_stages, select

    names = [s.name for s in select(plan_stages(load_train_config(config, overrides=overrides)), stage)]
    return [train_stage.fn(str(config), name, num_processes, overrides or None) for name in names]


def _checked(config: Path, overrides: dict, stage: str | None) -> dict:
    """Check the config, its base model and its inputs before anything starts (each problem is one
    line, exit 2); returns the overrides with a hub base model pinned to its commit, so every process
    of the run loads that commit. A later stage of a curriculum starts from the stage before it, not
    from the base: its base is not looked up then."""
    from ieiw.model.config import load_train_config
    from ieiw.model.references import OFFLINE_HINT, pipeline_reference

    loaded = load_train_config(config, check_inputs=False, overrides=overrides)
    if stage is None or not loaded.stages or loaded.stages[0].name == stage:
        what = "--base" if "base_model" in overrides else f"{config}: base_model"
        pinned = pipeline_reference(loaded.base_model, what, hint=OFFLINE_HINT)
        if pinned != loaded.base_model:
            overrides = {**overrides, "base_model": pinned}
    load_train_config(config, overrides=overrides)  # the run's shard sets are there
    return overrides


TINY_NEXT = (
    "train on it offline: ieiw train configs/train_sd15.yaml --base {out} --max-steps 20 --resolution 64 "
    "--batch-size 2 --mixed-precision no --num-workers 0 --output-dir .ieiw/train/smoke"
)


def register(app: typer.Typer) -> None:
    @app.command()
    def train(
        config: Path = typer.Argument(..., exists=True, dir_okay=False, help="training config YAML"),
        stage: str = typer.Option(
            None, help="run only this stage (from the previous stage's saved model); default: all"
        ),
        num_processes: int = typer.Option(1, help="processes (GPUs); more than 1 runs `accelerate launch`"),
        prefect: bool = typer.Option(
            True, help="run as the `ieiw_train` Prefect flow (--no-prefect: directly)"
        ),
        retries: int = typer.Option(
            0, help="Prefect task retries; each retry resumes from the last checkpoint"
        ),
        max_steps: int = typer.Option(
            None, "--max-steps", help="max_steps: optimizer steps (each stage's too; replaces epochs)"
        ),
        resolution: int = typer.Option(None, "--resolution", help="data.resolution: the crop's side"),
        base: str = typer.Option(
            None,
            "--base",
            help="base_model: a local diffusers folder or a hub id (`ieiw tiny-model DIR` writes a tiny "
            "one offline)",
        ),
        batch_size: int = typer.Option(
            None, "--batch-size", help="train_batch_size: per device (each stage's too)"
        ),
        mixed_precision: str = typer.Option(
            None, "--mixed-precision", help="mixed_precision: no, fp16 or bf16 (no on a CPU)"
        ),
        output_dir: Path = typer.Option(
            None, "--output-dir", help="output_dir, relative to this folder (not to the config's)"
        ),
        num_workers: int = typer.Option(
            None, "--num-workers", help="data.num_workers: loader processes (0: in the training process)"
        ),
    ) -> None:
        """Train (or resume) the editing model: every stage of the config in order, or one --stage.

        The options after --retries override the config's fields for this run (checked as the file's
        own); paths given here are relative to the working folder.
        """
        from ieiw.model.config import train_overrides
        from ieiw.storage.config import ConfigError

        overrides = train_overrides(
            base=base,
            output_dir=output_dir,
            max_steps=max_steps,
            batch_size=batch_size,
            resolution=resolution,
            mixed_precision=mixed_precision,
            num_workers=num_workers,
        )
        overrides = _checked(config, overrides, stage)  # config and models, before the heavy libraries
        from ieiw.model.curriculum import StageNotReady, figures_line, mix_table

        try:
            if prefect:
                from prefect.settings import PREFECT_API_URL, temporary_settings

                from ieiw.flows.server import ensure_server, ui_url
                from ieiw.flows.train import train as train_flow

                api_url = ensure_server()
                console.print(f"Prefect UI: [bold]{ui_url(api_url)}[/bold]")
                with temporary_settings(updates={PREFECT_API_URL: api_url}):
                    summaries = train_flow(str(config), num_processes, retries, stage, overrides or None)[
                        "stages"
                    ]
            else:
                summaries = _train_directly(config, stage, num_processes, overrides)
        except (StageNotReady, ValueError) as error:
            if isinstance(error, ConfigError):
                raise  # the command line prints it in one line per problem, exit 2
            console.print(f"[red]{error}[/red]")
            raise typer.Exit(1) from error
        for summary in summaries:
            done = "already complete, skipped" if summary.get("skipped") else f"{summary['steps']} steps"
            console.print(
                f"Stage [bold]{summary['stage']}[/bold] ({done}): model {summary['output_dir']}, "
                f"last loss {summary['last_loss']}; loss curve {summary['loss_curve']}"
            )
            if figures := figures_line(summary):
                console.print(f"last {figures}", soft_wrap=True)
            console.print(mix_table(summary["mix"]))

    @app.command("tiny-model")
    def tiny_model(
        output: Path = typer.Argument(..., help="folder to write the model into"),
        clip: bool = typer.Option(
            False, "--clip", help="a tiny open_clip CLIP for `ieiw evaluate` instead (JSON + weights)"
        ),
        seed: int = typer.Option(0, help="the same seed writes the same weights"),
    ) -> None:
        """Write a tiny random Stable-Diffusion-1.5-shaped pipeline, offline, for a smoke run.

        The real diffusers and transformers classes at toy sizes, saved with save_pretrained in SD 1.5's
        layout (a few MB): `ieiw train CONFIG --base OUTPUT` trains it through the same code as the real
        one, in seconds on a CPU. Its edits mean nothing. For real training give --base (or the config's
        base_model) a hub id such as stable-diffusion-v1-5/stable-diffusion-v1-5 or
        stabilityai/stable-diffusion-xl-base-1.0, or a local copy (`hf download ID --local-dir DIR`).
        """
        from ieiw.model.tiny import save_tiny_clip, save_tiny_sd

        if clip:
            name, config_file, weights = save_tiny_clip(output, seed=seed)
            console.print(f"wrote a tiny random CLIP to {output}; evaluate with it offline:", soft_wrap=True)
            console.print(
                f"--clip-model {name} --clip-config-file {config_file} --clip-pretrained {weights}",
                soft_wrap=True,
                markup=False,
            )
            return
        if output.exists() and any(output.iterdir()) and not (output / "model_index.json").is_file():
            raise typer.BadParameter(f"{output} holds other files; give an empty or new folder")
        save_tiny_sd(output, seed=seed)
        console.print(f"wrote a tiny random SD-1.5-shaped pipeline to {output}", soft_wrap=True)
        console.print(TINY_NEXT.format(out=output), soft_wrap=True, markup=False)

    @app.command()
    def edit(
        model: str = typer.Option(..., help="trained model folder (diffusers layout) or hub id"),
        output: Path = typer.Option(..., "-o", "--output", help="output PNG, or a folder in batch mode"),
        image: Path = typer.Option(None, exists=True, dir_okay=False, help="one image to edit"),
        folder: Path = typer.Option(None, exists=True, file_okay=False, help="batch: every image here"),
        shards: list[str] = typer.Option(
            None, help="batch: samples of these shards or stage folders (their own instructions)"
        ),
        instruction: str = typer.Option(None, help="the edit (required with --image and --folder)"),
        steps: int = 20,
        text_guidance: float = 7.5,
        image_guidance: float = 1.5,
        seed: int = 0,
        resolution: int = typer.Option(512, help="long side of the working resolution"),
        limit: int = typer.Option(None, help="at most this many shard samples"),
        device: str = "auto",
    ) -> None:
        """Edit an image (or a folder, or shards) with a trained model.

        A batch writes <name>.png per image (<key>.png per shard sample), index.jsonl (each edit's
        instruction, source and settings) and index.html (source | edit | instruction) beside them.
        """
        from ieiw.model.references import pipeline_reference

        if sum(x is not None and x != [] for x in (image, folder, shards)) != 1:
            raise typer.BadParameter("give exactly one of --image, --folder, --shards")
        if (image or folder) and not instruction:
            raise typer.BadParameter("--instruction is required with --image and --folder")
        model = pipeline_reference(model, "--model")  # looked up before the heavy libraries load
        from PIL import Image

        from ieiw.model.inference import edit_folder, edit_image, edit_shards, load_edit_pipeline

        settings = _settings(steps, text_guidance, image_guidance, seed, resolution)
        pipe = load_edit_pipeline(model, device)
        if image is not None:
            with Image.open(image) as opened:
                source = opened.convert("RGB")
            output.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(edit_image(pipe, source, instruction, settings)).save(output)
            console.print(f"wrote {output}")
            return
        if folder is not None:
            report = edit_folder(pipe, str(folder), instruction, str(output), settings, model=model)
        else:
            report = edit_shards(pipe, shards, str(output), settings, limit, model=model)
        skipped = f", skipped {dict(report.skipped)}" if report.skipped else ""
        console.print(f"wrote {len(report.written)} images to {output}{skipped}")
        console.print(f"index: {report.index}; page: file://{Path(report.page).resolve()}", soft_wrap=True)

    @app.command()
    def evaluate(
        model: str = typer.Option(..., help="trained model folder (diffusers layout) or hub id"),
        shards: list[str] = typer.Option(..., help="held-out shards (files, folders, stage folders)"),
        output: Path = typer.Option(..., "-o", "--output", help="folder for metrics.csv, summary, grid.png"),
        clip_model: str = typer.Option(
            "ViT-L-14", help="open_clip architecture (open_clip.list_models()), or --clip-config-file's name"
        ),
        clip_pretrained: str = typer.Option(
            "openai",
            help="an open_clip release tag of --clip-model (open_clip.list_pretrained()), fetched from the "
            "hub into its cache, or a local checkpoint file (.pt, .bin, .safetensors)",
        ),
        clip_config_file: str = typer.Option(
            None, help="open_clip JSON model config of an architecture open_clip lacks (NAME.json)"
        ),
        limit: int = typer.Option(None, help="at most this many samples"),
        steps: int = 20,
        text_guidance: float = 7.5,
        image_guidance: float = 1.5,
        seed: int = 0,
        resolution: int = 256,
        device: str = "auto",
        task: str = typer.Option(
            None,
            "--task",
            help="keypoints | segmentation | enhancement: score the task read back from the edits",
        ),
        compare: str = typer.Option(
            None,
            "--compare",
            help="the starting checkpoint (folder or hub id) of a preference stage: compare --model with it "
            "on held-out preference pairs (same seeds and guidance)",
        ),
        judge_config: Path = typer.Option(
            None,
            "--judge-config",
            exists=True,
            dir_okay=False,
            help="with --compare: a build config whose quality.scoring.judge also scores both models' edits",
        ),
        pair_timesteps: int = typer.Option(
            4,
            min=1,
            help="with --compare: fixed timesteps at which each pair's denoising errors are measured",
        ),
    ) -> None:
        """CLIP directional, image and text similarity of the model's edits on held-out shards.

        The metrics need a CLIP, loaded by open_clip: by default ViT-L-14 with OpenAI's weights
        (--clip-pretrained openai), which open_clip fetches from the hub
        (timm/vit_large_patch14_clip_224.openai, about 1.7 GB) into the hub cache on first use; offline
        (HF_HUB_OFFLINE=1) it must be there already (hf download timm/vit_large_patch14_clip_224.openai).
        Another release: --clip-model ViT-B-32 --clip-pretrained laion2b_s34b_b79k. A local checkpoint:
        --clip-pretrained /path/to/weights.safetensors with its architecture as --clip-model. An
        architecture open_clip lacks: --clip-config-file /path/NAME.json (open_clip's JSON model config)
        --clip-model NAME. To try it offline, `ieiw tiny-model DIR --clip` writes a tiny random CLIP and
        prints these three options (its numbers mean nothing).

        clip_text compares each edit with a caption of the target, which only replacement pairs store;
        the summary says for how many samples it is n/a and why.

        With --task, the model edits the held-out samples of that task instead, and the answer is read
        back out of each edit: keypoint AP (COCOeval), mIoU / cumulative IoU, or PSNR / SSIM (no CLIP).

        With --compare BASE (did a preference stage help?), --model (the tuned checkpoint) and BASE (where
        it started) edit the same held-out preference pairs (`ieiw export-preferences` shards or its
        Hugging Face dataset) with the same seeds and guidance: one table (comparison.md) of the tuned
        model's preference accuracy (its implicit reward against BASE), each model's CLIP directional and
        image similarity, similarity to the chosen over the rejected edit, and the judge's scores with
        --judge-config; one picture (comparison.png) of both models' edits side by side.
        """
        from ieiw.model.references import pipeline_reference

        model = pipeline_reference(model, "--model")  # every model is looked up before anything loads
        base = pipeline_reference(compare, "--compare") if compare else None
        from ieiw.model.evaluate import evaluate as run_evaluation
        from ieiw.model.evaluate import load_clip
        from ieiw.model.inference import load_edit_pipeline
        from ieiw.model.reports import to_json

        if base is not None:
            embedder = load_clip(clip_model, clip_pretrained, clip_config_file, device)
            judge = _judge(judge_config, output)
            settings = _settings(steps, text_guidance, image_guidance, seed, resolution)
            from ieiw.model.evaluate_preference import compare as compare_models

            compare_models(
                base, model, shards, str(output), settings, embedder, judge, limit, pair_timesteps, device
            )
            console.print((output / "comparison.md").read_text(), markup=False, soft_wrap=True)
            console.print(
                f"per pair {output / 'comparison.csv'}, picture {output / 'comparison.png'}", soft_wrap=True
            )
            return
        if judge_config:
            raise typer.BadParameter(
                "--judge-config scores the edits of --compare", param_hint="--judge-config"
            )
        if task:
            pipe = load_edit_pipeline(model, device)
            settings = _settings(steps, text_guidance, image_guidance, seed, resolution)
            metrics = evaluate_task_with_model(pipe, task, shards, output, settings, limit)
            console.print_json(to_json(metrics, default=str))
            return
        embedder = load_clip(clip_model, clip_pretrained, clip_config_file, device)
        pipe = load_edit_pipeline(model, device)
        settings = _settings(steps, text_guidance, image_guidance, seed, resolution)
        run_evaluation(pipe, embedder, shards, str(output), settings, limit=limit)
        console.print((output / "summary.md").read_text(), markup=False)
        console.print(f"table {output / 'metrics.csv'}, grid {output / 'grid.png'}")

    @app.command("export-hf")
    def export_hf(
        shards: list[str] = typer.Argument(..., help="shards (files, folders, stage folders) to export"),
        output: Path = typer.Option(..., "-o", "--output", help="dataset folder"),
        layout: str = typer.Option(
            "parquet",
            help="parquet (hub layout, for --dataset_name) or imagefolder (images + metadata.jsonl, "
            "for --train_data_dir)",
        ),
        rows_per_file: int = 5000,
        text_field: str = typer.Option("instruction", help="instruction or pretrain_caption"),
        original_image_column: str = typer.Option("input_image", help="diffusers' default name"),
        edit_prompt_column: str = typer.Option("edit_prompt", help="diffusers' default name"),
        edited_image_column: str = typer.Option("edited_image", help="diffusers' default name"),
    ) -> None:
        """Export shards as a Hugging Face dataset that diffusers' train_instruct_pix2pix.py reads as is."""
        from ieiw.model.export_hf import Columns, export_to_hf

        if layout not in ("parquet", "imagefolder"):
            raise typer.BadParameter("parquet or imagefolder", param_hint="--layout")
        columns = Columns(original_image_column, edit_prompt_column, edited_image_column)
        result = export_to_hf(
            shards,
            str(output),
            rows_per_file=rows_per_file,
            text_field=text_field,
            layout=layout,
            columns=columns,
        )
        console.print(json.dumps({"rows": result["rows"], "files": len(result["files"]), "layout": layout}))
        loader = (
            f"load_dataset({str(output)!r})"
            if layout == "parquet"
            else (f"load_dataset('imagefolder', data_dir={str(output)!r})")
        )
        console.print(f"load with datasets.{loader}; train with diffusers' example:", soft_wrap=True)
        console.print(result["train_command"], soft_wrap=True, markup=False)

    @app.command("edit-ui")
    def edit_ui(
        model: str = typer.Option(..., help="trained model folder (diffusers layout) or hub id"),
        host: str = "127.0.0.1",
        port: int = 7860,
        device: str = "auto",
    ) -> None:
        """Serve a web page to upload an image, type an instruction and see the edit."""
        from ieiw.model.references import pipeline_reference

        model = pipeline_reference(model, "--model")  # looked up before the heavy libraries load
        import uvicorn

        from ieiw.model.inference import load_edit_pipeline
        from ieiw.model.webapp import create_app

        app_ = create_app(load_edit_pipeline(model, device))
        console.print(f"open http://{host}:{port}/")
        uvicorn.run(app_, host=host, port=port)


def _judge(config_path: Path | None, output: Path):
    """The judge of a build config's ``quality.scoring.judge`` (None without a config), its answers cached
    in the config's ``cache_url`` or beside the evaluation (``<output>/judge-cache``)."""
    if config_path is None:
        return None
    from ieiw.flows.config import load_config
    from ieiw.quality.judge import Judge

    judge = load_config(config_path).section("quality").scoring.judge
    if judge is None:
        raise typer.BadParameter(
            f"{config_path} has no quality.scoring.judge section", param_hint="--judge-config"
        )
    return Judge.from_config(judge, str(output / "judge-cache"))


def evaluate_task_with_model(
    pipe, task: str, shards: list[str], output: Path, settings, limit: int | None
) -> dict:
    """Edit the held-out samples of ``task`` with ``pipe`` and score the answers read back from the edits."""
    import itertools

    from PIL import Image

    from ieiw.model.inference import edit_images
    from ieiw.model.reports import write_json
    from ieiw.quality.task_evaluation import TASKS, OutputFolder, evaluate_task_outputs
    from ieiw.storage.shards import expand_shard_urls, iter_samples

    if task not in TASKS:
        raise typer.BadParameter(f"--task must be one of {sorted(TASKS)}")
    urls = expand_shard_urls(shards)
    edits = output / "edits"
    edits.mkdir(parents=True, exist_ok=True)
    of_task = (s for s in iter_samples(urls) if s.meta.task == TASKS[task])
    selected = itertools.islice(of_task, limit) if limit is not None else of_task
    edited_keys: set[str] = set()
    while chunk := list(itertools.islice(selected, 8)):
        outputs = edit_images(pipe, [s.source for s in chunk], [s.meta.instruction for s in chunk], settings)
        for sample, edited in zip(chunk, outputs, strict=True):
            Image.fromarray(edited).save(edits / f"{sample.key}.png")
            edited_keys.add(sample.key)
    samples = (s for s in iter_samples(urls) if s.key in edited_keys)
    metrics, _, grid = evaluate_task_outputs(task, samples, OutputFolder(str(edits)), str(output))
    write_json(output / f"{task}_metrics.json", metrics, indent=2, default=str)  # NaN: null
    console.print(f"grid: {grid}; per-sample table in {output}")
    return metrics
