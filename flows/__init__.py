"""Prefect flows, the `ieiw` command line and build configs: the only layer that imports Prefect."""
