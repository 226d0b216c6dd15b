"""Readers of source datasets in their real on-disk formats."""
