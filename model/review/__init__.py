"""The review app: people pick the best 0 to 2 of N candidate edits per sample.

- :mod:`model.review.tables`: the SQLAlchemy tables (reviewers, samples, candidates, assignments, picks).
- :mod:`model.review.store`: :class:`ReviewStore`, every read and write of a review (SQLite or PostgreSQL).
- :mod:`model.review.agreement`: agreement between reviewers who saw the same sample.
- :mod:`model.review.app`: the FastAPI app and its page (token sign-in, grid, mouse and keyboard).
- :mod:`model.review.export`: the picks as instruction-tuning shards (``Task.ALIGNED``).
"""
