"""The editing model: trainer, latent cache, inference, evaluation, export and the edit web page.

- :mod:`ieiw.model.config`: the training config (YAML), shard sets with weights and text fields.
- :mod:`ieiw.model.trainer`: ``python -m ieiw.model.trainer CONFIG``, or under ``accelerate launch -m``.
- :mod:`ieiw.model.step`: the parts of a training step every objective shares (latents, dropout, the UNet).
- :mod:`ieiw.model.dpo`: the ``preference`` objective, Diffusion-DPO against the frozen starting model.
- :mod:`ieiw.model.build`: loading the base model, widening the UNet input, freezing, EMA.
- :mod:`ieiw.model.checkpoints`: checkpoints, resume, saving in diffusers layout.
- :mod:`ieiw.model.curriculum`: the stages of a training config run in order, resumable inside a stage.
- :mod:`ieiw.model.candidates`: N candidate edits per sample for the review app, as a stage.
- :mod:`ieiw.model.candidate_shards`: their shard format, readers and random-access index.
- :mod:`ieiw.model.data`: the seeded, resumable WebDataset batch stream.
- :mod:`ieiw.model.sample_decode`: one sample decoded, cropped and flipped (images or cached latents).
- :mod:`ieiw.model.latent_cache`: the VAE-latent cache, a stage run on the processes of a training run.
- :mod:`ieiw.model.inputs`: what the model layer's stages read and use, by identity (shards, trained models).
- :mod:`ieiw.model.inference`: ``edit_image`` and batch edits with a trained model (with their index).
- :mod:`ieiw.model.evaluate`: CLIP metrics on held-out shards.
- :mod:`ieiw.model.evaluate_preference`: a tuned checkpoint against its start on held-out preference pairs.
- :mod:`ieiw.model.preferences`: preference pairs from picks and scores, exported as shards.
- :mod:`ieiw.model.dpo_layout`: a pair's members on disk, and the Diffusion-DPO Hugging Face layout.
- :mod:`ieiw.model.export_hf`: shards to a Hugging Face dataset for diffusers' InstructPix2Pix example.
- :mod:`ieiw.model.webapp`: the edit web page (FastAPI).
- :mod:`ieiw.model.references`: the models a command names, checked and pinned before anything loads.
- :mod:`ieiw.model.tiny`: tiny random SD-1.5-shaped pipelines and CLIPs for offline smoke runs and tests.
- :mod:`ieiw.model.reports`: JSON reports as strict JSON (a metric that could not be computed is null).
"""
