"""Where a dataset's files are under a data root; training and evaluation resolve roots alike.

COCO: `annotations/person_keypoints_<split>2017.json`, else the only `annotations/person_keypoints*.json`;
      images in `images/<split>2017`, `<split>2017` or `images`.
MPII: `annot/<split>.json` or `annotations/<split>.json` (HRNet layout), else the only json in
      `annot/` or `annotations/`; images in `images/`.
A file named for another split (e.g. `person_keypoints_train2017.json` when evaluating on "val")
is never taken as the fallback. Explicit `ann_file` / `image_dir` win. Errors say what was looked for.
"""

from __future__ import annotations

from pathlib import Path

from tokenpose.errors import TokenPoseError


class DataRootError(TokenPoseError, FileNotFoundError):
    """A data root, annotation file or image folder is missing or ambiguous."""


SPLITS = {"coco": ("train", "val", "test"), "mpii": ("train", "valid", "test")}


def _only(folder: Path, pattern: str, other_splits: list[str]) -> list[Path]:
    """Files matching `pattern`, leaving out those named for another split (never a silent swap)."""
    found = sorted(folder.glob(pattern)) if folder.is_dir() else []
    return [p for p in found if p.name not in other_splits]


def resolve_data_files(
    kind: str,
    data_root: str | Path | None,
    ann_file: str | Path | None = None,
    image_dir: str | Path | None = None,
    split: str = "train",
) -> tuple[Path, Path]:
    """(annotation json, image folder) of a COCO (`kind="coco"`) or MPII (`"mpii"`) root.

    `split` names the file looked for first: "train"/"val" for COCO, "train"/"valid" for MPII.
    """
    if kind not in ("coco", "mpii"):
        raise ValueError(f"dataset kind must be 'coco' or 'mpii', got {kind!r}")
    ann_file = Path(ann_file) if ann_file is not None else None
    image_dir = Path(image_dir) if image_dir is not None else None
    root = Path(data_root) if data_root is not None else None
    if ann_file is None or image_dir is None:
        if root is None:
            raise DataRootError("give --data-root (or both --ann-file and --image-dir)")
        if not root.is_dir():
            raise DataRootError(f"data root not found or not a folder: {root}")

    if ann_file is None:
        others = [s for s in SPLITS[kind] if s != split]
        if kind == "coco":
            exact = [root / "annotations" / f"person_keypoints_{split}2017.json"]
            found = _only(root / "annotations", "person_keypoints*.json",
                          [f"person_keypoints_{s}2017.json" for s in others])
            expected = f"annotations/person_keypoints_{split}2017.json"
        else:
            exact = [root / "annot" / f"{split}.json", root / "annotations" / f"{split}.json"]
            names = [f"{s}.json" for s in others]
            found = _only(root / "annot", "*.json", names) or _only(root / "annotations", "*.json", names)
            expected = f"annot/{split}.json"
        ann_file = next((p for p in exact if p.is_file()), None)
        if ann_file is None and len(found) == 1:
            ann_file = found[0]
        elif ann_file is None and found:
            raise DataRootError(
                f"several annotation files under {root} ({', '.join(p.name for p in found)}); choose one with --ann-file"
            )
        elif ann_file is None:
            raise DataRootError(f"no {kind.upper()} annotations under {root} (expected {expected}); use --ann-file")
    elif not ann_file.is_file():
        raise DataRootError(f"annotation file not found: {ann_file}")

    if image_dir is None:
        if kind == "coco":
            stem = ann_file.stem.removeprefix("person_keypoints_")
            candidates = [root / "images" / stem, root / stem, root / "images"]
        else:
            candidates = [root / "images"]
        image_dir = next((c for c in candidates if c.is_dir()), None)
        if image_dir is None:
            raise DataRootError(
                f"no image folder under {root} (tried {', '.join(str(c) for c in candidates)}); use --image-dir"
            )
    elif not image_dir.is_dir():
        raise DataRootError(f"image folder not found: {image_dir}")
    return ann_file, image_dir
