"""Storage layer: the sample schema, WebDataset shards, the Parquet manifest, file systems.

Imports nothing else of ours (see the layer table in DESIGN.md).
"""
