"""Quality layer: CLIP embeddings, aesthetic score, KNN-GIQA, CLIP similarities, duplicates,
the filter policy and score reports.

Imports ``storage`` only (see the layer table in DESIGN.md); never Prefect. The public entry points:

- :class:`quality.embeddings.ClipEmbedder` and :class:`quality.embeddings.EmbeddingCache`
- :mod:`quality.similarity` (directional, image-image and image-text CLIP similarity)
- :mod:`quality.aesthetic`, :mod:`quality.giqa` (scores) with :mod:`quality.giqa_index` (the reference
  index) and :mod:`quality.giqa_references` (reference embeddings), :mod:`quality.inception`,
  :mod:`quality.duplicates`
- :mod:`quality.policy` (the declarative filter policy), :mod:`quality.scoring`, :mod:`quality.filtering`
- :mod:`quality.report` (histograms, drop counts, HTML pages)
- :mod:`quality.config` (the ``quality:`` section of a build config)
- :mod:`quality.task_decoders`, :mod:`quality.task_metrics`, :mod:`quality.task_evaluation` (task answers
  read back out of edits, and their metrics)
- :mod:`quality.data_card` (the data card of a build)
"""
