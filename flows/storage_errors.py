"""Failures of the output store (unreachable, full, refused) become one clear, actionable error."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

_STORE_MODULES = ("botocore", "aiobotocore", "aiohttp", "s3fs", "fsspec", "gcsfs", "adlfs", "urllib3")


class StorageWriteError(RuntimeError):
    """The output store failed; what was committed before is kept and a rerun resumes."""


def is_store_failure(error: BaseException) -> bool:
    module = type(error).__module__ or ""
    return isinstance(error, OSError) or module.startswith(_STORE_MODULES)


@contextmanager
def store_errors(where: str, url: str) -> Iterator[None]:
    """Re-raise a store failure inside the block as :class:`StorageWriteError` naming ``url``."""
    try:
        yield
    except StorageWriteError:
        raise
    except Exception as error:
        if not is_store_failure(error):
            raise
        raise StorageWriteError(
            f"{where}: the output store failed at {url} ({type(error).__name__}: {error}); "
            "everything committed before is kept, rerun to resume"
        ) from error
