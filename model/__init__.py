"""The editing model: trainer, latent cache, inference, evaluation, export and the edit web page.

- :mod:`model.config`: the training config (YAML), shard sets with weights and text fields.
- :mod:`model.trainer`: ``python -m model.trainer CONFIG`` / ``accelerate launch -m model.trainer``.
- :mod:`model.build`: loading the base model, widening the UNet input, freezing, EMA.
- :mod:`model.checkpoints`: checkpoints, resume, saving in diffusers layout.
- :mod:`model.curriculum`: the stages of a training config run in order, resumable inside a stage.
- :mod:`model.candidates`: N candidate edits per sample for the review app.
- :mod:`model.data`: the seeded, resumable WebDataset batch stream.
- :mod:`model.latent_cache`: the VAE-latent cache pass.
- :mod:`model.inference`: ``edit_image`` and batch edits with a trained model.
- :mod:`model.evaluate`: CLIP metrics on held-out shards.
- :mod:`model.export_hf`: shards to a Hugging Face dataset for diffusers' InstructPix2Pix example.
- :mod:`model.webapp`: the edit web page (FastAPI).
"""
