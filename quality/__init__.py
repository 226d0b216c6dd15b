"""Quality layer: CLIP embeddings, aesthetic score, KNN-GIQA, CLIP similarities, duplicates,
the filter policy and score reports.

Imports ``storage`` only (see the layer table in DESIGN.md); never Prefect. The public entry points:

- :class:`quality.embeddings.ClipEmbedder` and :class:`quality.embeddings.EmbeddingCache`
- :mod:`quality.similarity` (directional, image-image and image-text CLIP similarity)
- :mod:`quality.aesthetic`, :mod:`quality.giqa` (with :mod:`quality.inception`), :mod:`quality.duplicates`
- :mod:`quality.policy` (the declarative filter policy), :mod:`quality.scoring`, :mod:`quality.filtering`
- :mod:`quality.report` (histograms, drop counts, HTML pages)
- :mod:`quality.config` (the ``quality:`` section of a build config)
"""
