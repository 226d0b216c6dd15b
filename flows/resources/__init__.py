"""Files that ship inside the package: the demo build config and the deployments (``prefect.yaml``).

Found through :mod:`importlib.resources`, so they work the same from a checkout and an installed wheel.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

DEMO_CONFIG = "demo.yaml"
DEPLOYMENTS = "prefect.yaml"


def resource_path(name: str) -> Path:
    """The path of a packaged file (packages are installed unzipped, so this is a real file)."""
    path = Path(str(resources.files(__name__).joinpath(name)))
    if not path.is_file():
        raise FileNotFoundError(f"packaged resource {name!r} is missing at {path}; reinstall ieiw-builder")
    return path
