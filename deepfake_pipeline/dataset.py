"""The Kaggle layout contract: listing, validation, labels, folds, and the torch Dataset.

Layout under ``data.root``::

    train_images/<Id>.<ext>   test_images/<Id>.<ext>   train_solution.csv (Id,target_feature)

The labels CSV may name its columns ``Id``/``id`` and ``target_feature``/``target``/``label``
(any case, a UTF-8 BOM is fine). ``target_feature`` 1 = fake, 0 = real. Ids in the CSV may carry
an image extension or not; they are matched to image file stems and never used to build a path,
so a CSV cannot point outside the data root.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch.utils.data import Dataset

from .config import DataConfig
from .errors import DataValidationError, ImageReadError
from .images import IMAGE_EXTENSIONS, image_header, read_image

log = logging.getLogger(__name__)

ID_COLUMNS = ("id",)
LABEL_COLUMNS = ("target_feature", "target", "label")
_SAFE_ID = re.compile(r"^[^/\\\x00]+$")


@dataclass
class Split:
    """Images of one split: ``frame`` has columns Id, path (and target for train)."""

    name: str
    frame: pd.DataFrame


@dataclass
class Layout:
    root: Path
    train: Split
    test: Split
    warnings: list[str] = field(default_factory=list)


AUDIO_EXTENSIONS = {".wav", ".flac", ".ogg", ".oga", ".mp3", ".aif", ".aiff", ".au"}


def split_dirs(cfg: DataConfig) -> tuple[str, str]:
    """(train folder, test folder) under ``data.root``: as set, else by ``data.modality``."""
    default = ("train_audio", "test_audio") if cfg.modality == "audio" else ("train_images", "test_images")
    return cfg.train_dir or default[0], cfg.test_dir or default[1]


def input_extensions(cfg: DataConfig) -> set[str]:
    return AUDIO_EXTENSIONS if cfg.modality == "audio" else IMAGE_EXTENSIONS


def list_images(folder: Path, extensions: set[str] = IMAGE_EXTENSIONS) -> tuple[dict[str, Path], list[str], list[str]]:
    """Map Id (file stem) -> path for the input files (images, or ``extensions``) in ``folder``.

    Returns (images, errors, warnings). Files with other extensions are skipped with a warning;
    two files with one stem (``a.jpg`` and ``a.png``) are an error. Hidden files are ignored, and so
    are other folders; a folder named like an image (``123.jpg/``) is kept as the image it pretends
    to be, with a warning: it cannot be read, so alignment records it as unreadable by name.
    """
    images: dict[str, Path] = {}
    errors: list[str] = []
    warnings: list[str] = []
    if not folder.is_dir():
        return images, [f"{folder}: folder not found"], warnings
    for path in sorted(folder.iterdir()):
        if path.name.startswith("."):
            continue
        if path.is_dir():
            if path.suffix.lower() in extensions:
                warnings.append(f"{path}: a directory named like an input file, recorded as unreadable")
            else:
                continue
        elif path.suffix.lower() not in extensions:
            warnings.append(f"{path}: not an {'image' if extensions is IMAGE_EXTENSIONS else 'input'} extension, "
                            "skipped")
            continue
        if path.stem in images:
            errors.append(f"{path}: Id {path.stem!r} already used by {images[path.stem].name}")
            continue
        images[path.stem] = path
    return images, errors, warnings


def _pick_column(columns: list[str], names: tuple[str, ...]) -> str | None:
    lowered = {c.strip().lower(): c for c in columns}
    for name in names:
        if name in lowered:
            return lowered[name]
    return None


def read_labels(csv_path: Path, group_column: str | None = None,
                extensions: set[str] = IMAGE_EXTENSIONS) -> tuple[pd.DataFrame, list[str]]:
    """Read a labels CSV into columns Id, target (and group). Returns (frame, errors)."""
    errors: list[str] = []
    if not csv_path.is_file():
        return pd.DataFrame(columns=["Id", "target"]), [f"{csv_path}: labels CSV not found"]
    try:
        raw = pd.read_csv(csv_path, dtype=str, keep_default_na=False, encoding="utf-8-sig")
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        return pd.DataFrame(columns=["Id", "target"]), [f"{csv_path}: cannot parse CSV: {exc}"]
    id_col = _pick_column(list(raw.columns), ID_COLUMNS)
    label_col = _pick_column(list(raw.columns), LABEL_COLUMNS)
    if id_col is None or label_col is None:
        hint = " (one column only: wrong delimiter?)" if len(raw.columns) == 1 else ""
        return pd.DataFrame(columns=["Id", "target"]), [
            f"{csv_path}: needs an Id column and one of {', '.join(LABEL_COLUMNS)}; "
            f"found columns {list(raw.columns)}{hint}"
        ]
    frame = pd.DataFrame({"Id": raw[id_col].str.strip(), "label_text": raw[label_col].str.strip()})
    if group_column:
        gcol = _pick_column(list(raw.columns), (group_column.lower(),))
        if gcol is None:
            errors.append(f"{csv_path}: group column {group_column!r} not found")
        else:
            frame["group"] = raw[gcol].astype(str)
    # Strip a trailing input extension so "abc.jpg" matches the file abc.jpg (abc.wav: abc.wav).
    ext = frame["Id"].str.extract(r"(\.[A-Za-z0-9]+)$", expand=False).str.lower()
    has_ext = ext.isin(extensions)
    frame.loc[has_ext, "Id"] = frame.loc[has_ext, "Id"].str.rsplit(".", n=1).str[0]
    for row, (ident, text) in enumerate(zip(frame["Id"], frame["label_text"]), start=2):
        if not ident:
            errors.append(f"{csv_path}:{row}: empty Id")
        elif not _SAFE_ID.match(ident) or ident in (".", ".."):
            errors.append(f"{csv_path}:{row}: Id {ident!r} contains a path separator")
        if text not in ("0", "1", "0.0", "1.0"):
            errors.append(f"{csv_path}:{row}: label {text!r} for Id {ident!r} is not 0 or 1")
    dup = frame["Id"][frame["Id"].duplicated(keep=False) & (frame["Id"] != "")]
    for ident in sorted(set(dup)):
        rows = [str(i + 2) for i in np.flatnonzero(frame["Id"].to_numpy() == ident)]
        errors.append(f"{csv_path}: duplicate Id {ident!r} on rows {', '.join(rows)}")
    frame["target"] = pd.to_numeric(frame["label_text"], errors="coerce")
    frame = frame.drop(columns=["label_text"])
    return frame, errors


def load_layout(cfg: DataConfig, check_images: bool = True, group_column: str | None = None) -> Layout:
    """List and validate the dataset under ``cfg.root``; raise DataValidationError on errors.

    Errors (raise): missing folders or CSV, bad columns, duplicate Ids, labels not in {0,1},
    CSV rows without an image, an empty train or test set.
    Warnings (kept in ``layout.warnings`` and logged): train images without a CSV row (ignored),
    files that are not images by extension (skipped), unreadable images (kept: the alignment
    stage records them as ``unreadable``).
    """
    root = Path(cfg.root)
    errors: list[str] = []
    warnings: list[str] = []
    if not root.is_dir():
        raise DataValidationError([f"{root}: data root not found (set data.root)"])
    train_dir, test_dir = split_dirs(cfg)
    extensions = input_extensions(cfg)
    train_images, e1, w1 = list_images(root / train_dir, extensions)
    test_images, e2, w2 = list_images(root / test_dir, extensions)
    # Leaving data.root's labelled rows out (train_root false), its CSV needs no group column.
    labels, e3 = read_labels(root / cfg.labels_csv, group_column if cfg.train_root else None, extensions)
    errors += e1 + e2 + e3
    warnings += w1 + w2
    if not errors:
        missing = [i for i in labels["Id"] if i not in train_images]
        for ident in missing[:200]:
            errors.append(f"{root / cfg.labels_csv}: Id {ident!r} has no file in {train_dir}/")
        if len(missing) > 200:
            errors.append(f"... {len(missing) - 200} more labelled Ids without an image")
        labelled = set(labels["Id"])
        for ident in sorted(set(train_images) - labelled):
            warnings.append(f"{train_images[ident]}: no row in {cfg.labels_csv}, ignored")
        overlap = sorted(set(train_images) & set(test_images))
        if overlap:
            warnings.append(f"{len(overlap)} Id(s) appear in both train and test, e.g. {overlap[0]!r}")
        if len(labels) == 0:
            errors.append(f"{root / cfg.labels_csv}: no labelled rows")
        if not test_images:
            errors.append(f"{root / test_dir}: no test {'clips' if cfg.modality == 'audio' else 'images'}")
    if errors:
        raise DataValidationError(errors)

    train = labels.copy()
    train["path"] = [str(train_images[i]) for i in train["Id"]]
    train["target"] = train["target"].astype(int)
    if cfg.extra_roots or not cfg.train_root:
        train = _merge_extra_roots(train if cfg.train_root else train.iloc[:0], cfg, group_column, extensions)
    test = pd.DataFrame({"Id": list(test_images), "path": [str(p) for p in test_images.values()]})
    if check_images:
        header = _audio_header if cfg.modality == "audio" else lambda p: image_header(p, cfg.max_pixels)
        for frame in (train, test):
            for path in frame["path"]:
                try:
                    header(path)
                except ImageReadError as exc:
                    warnings.append(f"{exc} (will be recorded as unreadable)")
    for line in warnings[:20]:
        log.warning(line)
    if len(warnings) > 20:
        log.warning("... %d more data warnings", len(warnings) - 20)
    return Layout(root, Split("train", train.reset_index(drop=True)), Split("test", test), warnings)


def _merge_extra_roots(train: pd.DataFrame, cfg: DataConfig, group_column: str | None,
                       extensions: set[str]) -> pd.DataFrame:
    """``train`` (data.root's labelled rows, or none) plus every ``data.extra_roots`` train split.

    Extra Ids and groups get the prefix ``<folder name>__`` so that two sets never share an Id or a
    group; a set without the group column gets one group per row. Column ``source`` names each
    row's set.
    """
    parts = [train.assign(source=Path(cfg.root).name)]
    names = {Path(cfg.root).name}
    train_dir, _ = split_dirs(cfg)
    for extra in cfg.extra_roots:
        root = Path(extra)
        name = root.name
        if name in names:
            raise DataValidationError([f"data.extra_roots: two sets named {name!r} (folder names must differ)"])
        names.add(name)
        if not root.is_dir():
            raise DataValidationError([f"data.extra_roots: {root} not found"])
        images, errors, _ = list_images(root / train_dir, extensions)
        labels, more = read_labels(root / cfg.labels_csv, None, extensions)
        errors += more + [f"{root / cfg.labels_csv}: Id {i!r} has no file in {train_dir}/"
                          for i in labels["Id"] if i not in images][:20]
        if errors:
            raise DataValidationError(errors)
        frame = labels.assign(path=[str(images[i]) for i in labels["Id"]], target=labels["target"].astype(int))
        if group_column:
            grouped, _ = read_labels(root / cfg.labels_csv, group_column, extensions)
            groups = grouped["group"] if "group" in grouped else frame["Id"]
            if "group" not in grouped:
                log.warning("data.extra_roots: %s has no %r column: one group per row", root, group_column)
            frame["group"] = [f"{name}__{g}" for g in groups]
        frame["Id"] = [f"{name}__{i}" for i in frame["Id"]]
        parts.append(frame.assign(source=name))
        log.info("data.extra_roots: %d labelled rows from %s (%d fake)", len(frame), root, int(frame["target"].sum()))
    merged = pd.concat(parts, ignore_index=True)
    dup = merged["Id"][merged["Id"].duplicated()]
    if len(dup):
        raise DataValidationError([f"data.extra_roots: Id {dup.iloc[0]!r} occurs twice in the merged training set"])
    if merged.empty:
        raise DataValidationError(["data.train_root is false and data.extra_roots names no set: nothing to train on"])
    return merged


def _audio_header(path: str) -> object:
    from .audio import audio_header  # soundfile only where speech is used

    return audio_header(path)


def read_pseudo_labels(path: Path, train_ids: set[str], test_ids: set[str]) -> tuple[pd.DataFrame, pd.DataFrame | None]:
    """The diamonds CSV (``make_diamonds.py``), checked against the layout.

    Returns (pseudo rows: Id, target, pseudo_fold; the labelled rows' folds: Id, target, fold, or None).
    A pseudo row's ``fold`` is the fold whose training part it joins (-1 or empty: every fold); the
    original rows' ``fold`` is the fold assignment the diamonds were mined with, which a run using
    per-fold diamonds must keep. Pseudo Ids must be test images and never train Ids.
    """
    if not path.is_file():
        raise DataValidationError([f"{path}: pseudo-label CSV not found (data.pseudo_labels)"])
    frame = pd.read_csv(path, dtype={"Id": str}, encoding="utf-8-sig")
    needed = {"Id", "target_feature", "is_pseudo"}
    if not needed <= set(frame.columns):
        raise DataValidationError([f"{path}: needs columns {sorted(needed)}, has {list(frame.columns)}"])
    fold = pd.to_numeric(frame["fold"], errors="coerce").fillna(-1).astype(int) if "fold" in frame.columns \
        else pd.Series(-1, index=frame.index)
    is_pseudo = frame["is_pseudo"] == 1
    pseudo, pseudo_fold = frame[is_pseudo], fold[is_pseudo]
    problems = []
    leaked = sorted(set(pseudo["Id"]) & train_ids)
    if leaked:
        problems.append(f"{path}: {len(leaked)} pseudo row(s) are train Ids, e.g. {leaked[0]!r}")
    unknown = sorted(set(pseudo["Id"]) - test_ids)
    if unknown:
        problems.append(f"{path}: {len(unknown)} pseudo Id(s) are not test images, e.g. {unknown[0]!r}")
    bad = pseudo[~pseudo["target_feature"].isin([0, 1])]
    if len(bad):
        problems.append(f"{path}: pseudo labels not in {{0,1}} for Id {bad['Id'].iloc[0]!r}")
    if pd.DataFrame({"Id": pseudo["Id"], "fold": pseudo_fold}).duplicated().any():
        problems.append(f"{path}: duplicate pseudo Ids (within one fold)")
    if problems:
        raise DataValidationError(problems)
    rows = pd.DataFrame({"Id": pseudo["Id"].to_numpy(), "target": pseudo["target_feature"].astype(int).to_numpy(),
                         "pseudo_fold": pseudo_fold.to_numpy()})
    originals = None
    if (pseudo_fold >= 0).any():
        labelled = frame[~is_pseudo]
        originals = pd.DataFrame({"Id": labelled["Id"].to_numpy(), "target": labelled["target_feature"].astype(int),
                                  "fold": fold[~is_pseudo].to_numpy()})
    return rows, originals


def make_folds(labels: pd.DataFrame, n_folds: int, seed: int, real_only: bool = False) -> pd.DataFrame:
    """Assign each labelled row a fold (StratifiedGroupKFold when a ``group`` column exists).

    ``real_only``: labels of real images alone are allowed (self-made fakes supply the other class)."""
    from sklearn.model_selection import StratifiedGroupKFold, StratifiedKFold

    y = labels["target"].to_numpy()
    counts = np.bincount(y, minlength=2)
    needed = counts[:1] if real_only and counts[1] == 0 else counts
    if needed.min() < n_folds:
        raise DataValidationError(
            [f"{n_folds} folds need at least {n_folds} images of each class; have {counts.tolist()}"]
        )
    fold = np.full(len(labels), -1, dtype=int)
    if "group" in labels.columns:
        splitter = StratifiedGroupKFold(n_splits=n_folds, shuffle=True, random_state=seed)
        splits = splitter.split(np.zeros(len(y)), y, groups=labels["group"].to_numpy())
    else:
        splitter = StratifiedKFold(n_splits=n_folds, shuffle=True, random_state=seed)
        splits = splitter.split(np.zeros(len(y)), y)
    for k, (_, val_idx) in enumerate(splits):
        fold[val_idx] = k
    assert (fold >= 0).all(), "every labelled row gets a validation fold"
    out = labels[["Id", "target"]].copy()
    out["fold"] = fold
    if "group" in labels.columns:
        out["group"] = labels["group"].to_numpy()
    return out


@dataclass(frozen=True)
class JpegReencode:
    """Re-encode a share ``p`` of the images with libjpeg at a quality drawn from ``quality`` (lo, hi).

    The real codec, in the loader workers (kornia's RandomJPEG is a differentiable model of it that
    costs most of a CPU training step). Its draws come from (seed, epoch, index) alone, so a resumed
    run and any number of workers re-encode exactly the same images the same way.
    """

    p: float
    quality: tuple[int, int]
    seed: int

    def __call__(self, image: torch.Tensor, index: int, epoch: int) -> torch.Tensor:
        from torchvision.io import ImageReadMode, decode_jpeg, encode_jpeg

        from .runtime import derive_seed

        rng = np.random.default_rng(derive_seed(self.seed, "jpeg", epoch, index))
        hit, q = rng.random() < self.p, int(rng.integers(self.quality[0], self.quality[1] + 1))
        if not hit:
            return image
        return decode_jpeg(encode_jpeg(image.contiguous(), quality=q), mode=ImageReadMode.RGB)


@dataclass(frozen=True)
class CodecCopyPick:
    """Read a training window from one of its codec copies (stage 1's ``audio.codec_copies``) with
    chance ``p``, the copy drawn uniformly; the draws come from (seed, epoch, index) alone, like
    :class:`JpegReencode`'s."""

    p: float
    seed: int

    def __call__(self, path: str, copies: tuple[str, ...], index: int, epoch: int) -> str:
        from .runtime import derive_seed

        if not copies:
            return path
        rng = np.random.default_rng(derive_seed(self.seed, "codec", epoch, index))
        hit, pick = rng.random() < self.p, int(rng.integers(len(copies)))
        return copies[pick] if hit else path


class FaceDataset(Dataset):
    """Decodes aligned face JPEGs to uint8 CHW tensors (in DataLoader workers).

    Items are (image uint8 3xHxW, target float, index). Aligned faces are all written by the
    project at one size; a file that is not a plain JPEG falls back to the robust reader, and an
    unreadable one raises :class:`ImageReadError` naming the file (never a zero tensor).

    The training loop asks for ``(index, epoch)`` keys (``engine.EpochBatches``): with ``jpeg`` set,
    those images are re-encoded (:class:`JpegReencode`), and with ``codec`` set a speech window may be
    read from one of its ``copies`` (";"-joined paths per item, :class:`CodecCopyPick`); plain integer
    keys (validation, prediction) never are.
    """

    def __init__(self, paths: list[str], targets: np.ndarray | None = None, size: int | None = None,
                 jpeg: JpegReencode | None = None, copies: list[str] | None = None,
                 codec: CodecCopyPick | None = None):
        self.paths = list(paths)
        self.copies = [tuple(c for c in str(text).split(";") if c) for text in copies] if copies else None
        self.codec = codec if codec is not None and codec.p > 0 and self.copies else None
        self.targets = (
            np.asarray(targets, dtype=np.float32) if targets is not None else np.full(len(paths), -1.0, np.float32)
        )
        self.size = size
        self.jpeg = jpeg if jpeg is not None and jpeg.p > 0 else None

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, key: int | tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor, int]:
        index, epoch = (key, None) if isinstance(key, (int, np.integer)) else key
        path = self.paths[index]
        if self.codec is not None and epoch is not None:
            path = self.codec(path, self.copies[index], int(index), int(epoch))
        image = decode_face(path)
        if self.size is not None and (image.shape[1] != self.size or image.shape[2] != self.size):
            image = torch.nn.functional.interpolate(
                image[None].float(), size=(self.size, self.size), mode="bilinear", antialias=True,
                align_corners=False,
            )[0].round().clamp(0, 255).to(torch.uint8)
        if self.jpeg is not None and epoch is not None:
            image = self.jpeg(image, int(index), int(epoch))
        return image, torch.tensor(self.targets[index]), int(index)


def decode_face(path: str) -> torch.Tensor:
    """Stage-1 image -> uint8 3xHxW tensor: JPEG (faces) with libjpeg-turbo, PNG (speech windows) with
    libpng; anything else, or a file they refuse, via ``read_image`` (which names the file)."""
    from torchvision.io import ImageReadMode, decode_jpeg, decode_png, read_file

    lower = path.lower()
    decoder = decode_jpeg if lower.endswith((".jpg", ".jpeg")) else decode_png if lower.endswith(".png") else None
    if decoder is not None:
        try:
            return decoder(read_file(path), mode=ImageReadMode.RGB)
        except RuntimeError:
            pass  # not a clean file of that format: the robust reader below decides
    pixels = read_image(path).pixels
    return torch.from_numpy(pixels).permute(2, 0, 1).contiguous()
