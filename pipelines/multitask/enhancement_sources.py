"""Enhancement pair readers (GoPro, REDS, SIDD, CLWD) and a folder of clean photos for synthetic pairs.

Pairs are matched by name inside the dataset's own layout:

- GoPro: ``{split}/<sequence>/blur/*.png`` with ``{split}/<sequence>/sharp/*.png``
- REDS: ``{split}_blur/<clip>/*.png`` with ``{split}_sharp/<clip>/*.png``
- SIDD: ``Data/<scene>/*_NOISY_SRGB_*.PNG`` with ``*_GT_SRGB_*.PNG``
- CLWD: ``{split}/Watermarked_image/*`` with ``{split}/Watermark_free_image/*``

A file without its counterpart is a counted ``unpaired_file`` drop. Sizes are compared when the
pair is loaded (``size_mismatch``).
"""

from __future__ import annotations

import os
from collections.abc import Iterator

from ieiw.pipelines.multitask.records import CleanImageRecord, PairRecord, drop
from ieiw.pipelines.sources.folders import files_with_suffix
from ieiw.storage.schema import Drop, stable_key

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
KINDS = {"gopro": "deblur", "reds": "deblur", "sidd": "denoise", "clwd": "watermark"}


def _images(folder: str) -> list[str]:
    return files_with_suffix(folder, IMAGE_SUFFIXES, missing_ok=True)


def _subdirs(folder: str) -> list[str]:
    if not os.path.isdir(folder):
        raise FileNotFoundError(f"no such folder: {folder}")
    return sorted(e.name for e in os.scandir(folder) if e.is_dir())


def _unpaired(dataset: str, record_id: str, detail: str) -> Drop:
    return drop(dataset, record_id, "unpaired_file", detail, task="enhancement")


def _pair(dataset: str, kind: str, image_id: str, degraded_path: str, clean_path: str) -> PairRecord:
    return PairRecord(
        record_id=f"{dataset}:{image_id}",
        dataset=dataset,
        kind=kind,
        image_id=image_id,
        degraded_path=degraded_path,
        clean_path=clean_path,
    )


def _match(
    dataset: str, kind: str, group: str, degraded_dir: str, clean_dir: str, clean_name=lambda name: name
) -> Iterator[PairRecord | Drop]:
    """Pair every degraded file of ``degraded_dir`` with ``clean_name(name)`` in ``clean_dir``."""
    degraded = _images(degraded_dir)
    clean = set(_images(clean_dir))
    used: set[str] = set()
    for name in degraded:
        image_id = f"{group}/{name}" if group else name
        partner = clean_name(name)
        if partner is None or partner not in clean:
            yield _unpaired(
                dataset,
                f"{dataset}:{image_id}",
                f"{os.path.join(degraded_dir, name)} has no clean "
                f"counterpart {partner or '(unmatched name)'} in {clean_dir}",
            )
            continue
        used.add(partner)
        yield _pair(
            dataset, kind, image_id, os.path.join(degraded_dir, name), os.path.join(clean_dir, partner)
        )
    for name in sorted(clean - used):
        image_id = f"{group}/{name}" if group else name
        yield _unpaired(
            dataset,
            f"{dataset}:clean:{image_id}",
            f"{os.path.join(clean_dir, name)} has no degraded counterpart in {degraded_dir}",
        )


def iter_gopro(root: str, split: str = "train", dataset: str = "gopro") -> Iterator[PairRecord | Drop]:
    base = os.path.join(root, split)
    for sequence in _subdirs(base):
        yield from _match(
            dataset,
            KINDS["gopro"],
            sequence,
            os.path.join(base, sequence, "blur"),
            os.path.join(base, sequence, "sharp"),
        )


def iter_reds(root: str, split: str = "train", dataset: str = "reds") -> Iterator[PairRecord | Drop]:
    blur, sharp = os.path.join(root, f"{split}_blur"), os.path.join(root, f"{split}_sharp")
    for clip in _subdirs(blur):
        yield from _match(dataset, KINDS["reds"], clip, os.path.join(blur, clip), os.path.join(sharp, clip))


def _sidd_clean(name: str) -> str | None:
    return name.replace("_NOISY_", "_GT_") if "_NOISY_" in name else None


def iter_sidd(root: str, dataset: str = "sidd") -> Iterator[PairRecord | Drop]:
    data = os.path.join(root, "Data")
    for scene in _subdirs(data):
        folder = os.path.join(data, scene)
        names = _images(folder)
        noisy = [n for n in names if "_NOISY_" in n]
        clean = {n for n in names if "_GT_" in n}
        used = set()
        for name in noisy:
            image_id = f"{scene}/{name}"
            partner = _sidd_clean(name)
            if partner not in clean:
                yield _unpaired(
                    dataset, f"{dataset}:{image_id}", f"{os.path.join(folder, name)} has no {partner}"
                )
                continue
            used.add(partner)
            yield _pair(
                dataset, KINDS["sidd"], image_id, os.path.join(folder, name), os.path.join(folder, partner)
            )
        for name in sorted(clean - used):
            yield _unpaired(
                dataset,
                f"{dataset}:clean:{scene}/{name}",
                f"{os.path.join(folder, name)} has no noisy counterpart",
            )


def iter_clwd(root: str, split: str = "train", dataset: str = "clwd") -> Iterator[PairRecord | Drop]:
    base = os.path.join(root, split)
    if not os.path.isdir(base):
        raise FileNotFoundError(f"no such folder: {base}")
    yield from _match(
        dataset,
        KINDS["clwd"],
        "",
        os.path.join(base, "Watermarked_image"),
        os.path.join(base, "Watermark_free_image"),
    )


def iter_pairs(
    kind: str, root: str, split: str = "train", dataset: str | None = None
) -> Iterator[PairRecord | Drop]:
    """The pair reader for one dataset layout."""
    name = dataset or kind
    if kind == "gopro":
        return iter_gopro(root, split, name)
    if kind == "reds":
        return iter_reds(root, split, name)
    if kind == "sidd":
        return iter_sidd(root, name)
    if kind == "clwd":
        return iter_clwd(root, split, name)
    raise ValueError(f"unknown enhancement dataset layout {kind!r}; known: {', '.join(KINDS)}")


def iter_clean_images(
    folder: str, degradations: list[str], per_image: int = 1, dataset: str = "synthetic"
) -> Iterator[CleanImageRecord]:
    """Clean photos of ``folder``, each with ``per_image`` degradations picked by a hash of its name."""
    if not degradations:
        raise ValueError("synthetic enhancement needs at least one degradation")
    for name in _images(folder):
        start = int(stable_key(dataset, name)[:8], 16) % len(degradations)
        for n in range(min(per_image, len(degradations))):
            degradation = degradations[(start + n) % len(degradations)]
            yield CleanImageRecord(
                record_id=f"{dataset}:{name}:{degradation}",
                dataset=dataset,
                image_id=name,
                image_path=os.path.join(folder, name),
                degradation=degradation,
            )
