"""`ieiw train | edit | evaluate | export-hf | edit-ui`: train the editing model and use it.

``ieiw train CONFIG`` runs every stage of a curriculum config in order (skipping complete ones and
resuming the interrupted one); ``--stage NAME`` runs one.
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


def _train_directly(config: Path, stage: str | None, num_processes: int) -> list[dict]:
    """The stages in this process, or each through `accelerate launch` (the flow's task, unwrapped)."""
    from ieiw.flows.train import train_stage
    from ieiw.model.config import load_train_config
    from ieiw.model.curriculum import plan_stages, select

    names = [s.name for s in select(plan_stages(load_train_config(config)), stage)]
    return [train_stage.fn(str(config), name, num_processes) for name in names]


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
    ) -> None:
        """Train (or resume) the editing model: every stage of the config in order, or one --stage."""
        from ieiw.model.config import load_train_config
        from ieiw.model.curriculum import StageNotReady, mix_table
        from ieiw.storage.config import ConfigError

        load_train_config(config)  # a bad config is one line (exit 2) before anything starts
        try:
            if prefect:
                from prefect.settings import PREFECT_API_URL, temporary_settings

                from ieiw.flows.server import ensure_server, ui_url
                from ieiw.flows.train import train as train_flow

                api_url = ensure_server()
                console.print(f"Prefect UI: [bold]{ui_url(api_url)}[/bold]")
                with temporary_settings(updates={PREFECT_API_URL: api_url}):
                    summaries = train_flow(str(config), num_processes, retries, stage)["stages"]
            else:
                summaries = _train_directly(config, stage, num_processes)
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
            console.print(mix_table(summary["mix"]))

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
        """Edit an image (or a folder, or shards) with a trained model."""
        from PIL import Image

        from ieiw.model.inference import edit_folder, edit_image, edit_shards, load_edit_pipeline

        if sum(x is not None and x != [] for x in (image, folder, shards)) != 1:
            raise typer.BadParameter("give exactly one of --image, --folder, --shards")
        if (image or folder) and not instruction:
            raise typer.BadParameter("--instruction is required with --image and --folder")
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
            report = edit_folder(pipe, str(folder), instruction, str(output), settings)
        else:
            report = edit_shards(pipe, shards, str(output), settings, limit)
        skipped = f", skipped {dict(report.skipped)}" if report.skipped else ""
        console.print(f"wrote {len(report.written)} images to {output}{skipped}")

    @app.command()
    def evaluate(
        model: str = typer.Option(..., help="trained model folder (diffusers layout) or hub id"),
        shards: list[str] = typer.Option(..., help="held-out shards (files, folders, stage folders)"),
        output: Path = typer.Option(..., "-o", "--output", help="folder for metrics.csv, summary, grid.png"),
        clip_model: str = typer.Option("ViT-L-14", help="open_clip model name"),
        clip_pretrained: str = typer.Option("openai", help="open_clip tag or a local checkpoint file"),
        clip_config_file: str = typer.Option(None, help="JSON model config for a model open_clip lacks"),
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
    ) -> None:
        """CLIP directional, image and text similarity of the model's edits on held-out shards.

        With ``--task``, the model edits the held-out samples of that task instead, and the answer is
        read back out of each edit: keypoint AP (COCOeval), mIoU / cumulative IoU, or PSNR / SSIM.
        """
        from ieiw.model.evaluate import evaluate as run_evaluation
        from ieiw.model.inference import load_edit_pipeline
        from ieiw.quality.embeddings import ClipEmbedder, EmbedderConfig

        if task:
            pipe = load_edit_pipeline(model, device)
            settings = _settings(steps, text_guidance, image_guidance, seed, resolution)
            metrics = evaluate_task_with_model(pipe, task, shards, output, settings, limit)
            console.print_json(json.dumps(metrics, default=str))
            return

        embedder = ClipEmbedder.from_config(
            EmbedderConfig(
                model=clip_model,
                pretrained=clip_pretrained,
                model_config_file=clip_config_file,
                device=device,
            )
        )
        pipe = load_edit_pipeline(model, device)
        settings = _settings(steps, text_guidance, image_guidance, seed, resolution)
        run_evaluation(pipe, embedder, shards, str(output), settings, limit=limit)
        console.print((output / "summary.md").read_text())
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
        import uvicorn

        from ieiw.model.inference import load_edit_pipeline
        from ieiw.model.webapp import create_app

        app_ = create_app(load_edit_pipeline(model, device))
        console.print(f"open http://{host}:{port}/")
        uvicorn.run(app_, host=host, port=port)


def evaluate_task_with_model(
    pipe, task: str, shards: list[str], output: Path, settings, limit: int | None
) -> dict:
    """Edit the held-out samples of ``task`` with ``pipe`` and score the answers read back from the edits."""
    import itertools

    from PIL import Image

    from ieiw.model.inference import edit_images
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
    (output / f"{task}_metrics.json").write_text(json.dumps(metrics, indent=2, default=str))
    console.print(f"grid: {grid}; per-sample table in {output}")
    return metrics
