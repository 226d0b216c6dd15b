"""Quality layer: CLIP embeddings, aesthetic score, KNN-GIQA, CLIP similarities, duplicates,
the filter policy and score reports.

Imports ``ieiw.storage`` only (see the layer table in DESIGN.md); never Prefect. The public entry
points, as modules of ``ieiw.quality``:

- :class:`~ieiw.quality.embeddings.ClipEmbedder` and :class:`~ieiw.quality.embeddings.EmbeddingCache`
- ``similarity`` (directional, image-image and image-text CLIP similarity)
- ``aesthetic``, ``giqa`` (scores) with ``giqa_index`` (the reference index) and ``giqa_references``
  (reference embeddings), ``inception``, ``duplicates``
- ``judge`` (a VLM judge's scores and reasons) with ``judge_rubrics`` (the versioned rubrics and the
  answer parser) and ``judge_backends`` (an OpenAI-compatible endpoint, a local transformers model),
  ``verifier`` (open-vocabulary object checks), ``agreement`` (the judge against human picks)
- ``fixed_batches`` (every model call at one batch shape: a result never depends on its batch-mates)
- ``policy`` (the declarative filter policy), ``scoring`` (the score stage), ``filtering`` (the filter
  stage) with ``build_flags`` (duplicates and eval-set leaks across the build), ``identities``
- ``report`` (histograms, drop counts, HTML pages)
- ``config`` (the ``quality:`` section of a build config)
- ``task_decoders``, ``task_metrics``, ``task_evaluation`` (task answers read back out of edits, and
  their metrics)
- ``data_card`` (the data card of a build)
"""
