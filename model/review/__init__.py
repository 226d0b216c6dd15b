"""The review app: people pick the best 0 to 2 of N candidate edits per sample.

- :mod:`ieiw.model.review.tables`: the SQLAlchemy tables (reviewers, samples, candidates, assignments, picks).
- :mod:`ieiw.model.review.database`: the engine and sessions (SQLite or PostgreSQL), write retries.
- :mod:`ieiw.model.review.reports`: progress, votes and agreement (read-only).
- :mod:`ieiw.model.review.store`: :class:`ReviewStore`, tokens, assignment and picks.
- :mod:`ieiw.model.review.agreement`: agreement between reviewers who saw the same sample.
- :mod:`ieiw.model.review.app`: the FastAPI app and its page (token sign-in, grid, mouse and keyboard).
- :mod:`ieiw.model.review.export`: the picks as instruction-tuning shards (``Task.ALIGNED``).
- :mod:`ieiw.model.review.judging`: the quality judge's verdicts on the candidates, and their agreement
  with the picks.
"""
