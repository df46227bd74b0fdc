from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from deepfake_pipeline.config import DataConfig
from deepfake_pipeline.dataset import CodecCopyPick, FaceDataset, load_layout, make_folds, read_pseudo_labels
from deepfake_pipeline.errors import DataValidationError, ImageReadError
from deepfake_pipeline.images import save_jpeg

from .bad_inputs import unreadable_corpus


def make_layout(root: Path, n_train: int = 6, n_test: int = 3, csv: str | None = None) -> Path:
    rng = np.random.default_rng(0)
    for split, n in (("train_images", n_train), ("test_images", n_test)):
        for i in range(n):
            save_jpeg(root / split / f"{split[:2]}{i}.jpg", rng.integers(0, 255, (16, 16, 3), dtype=np.uint8))
    if csv is None:
        csv = "Id,target_feature\n" + "".join(f"tr{i},{i % 2}\n" for i in range(n_train))
    (root / "train_solution.csv").write_text(csv)
    return root


def problems_of(root: Path) -> str:
    with pytest.raises(DataValidationError) as info:
        load_layout(DataConfig(root=str(root)))
    return str(info.value)


def test_valid_layout(tmp_path: Path) -> None:
    layout = load_layout(DataConfig(root=str(make_layout(tmp_path))))
    assert len(layout.train.frame) == 6 and len(layout.test.frame) == 3
    assert set(layout.train.frame.columns) >= {"Id", "path", "target"}
    assert layout.warnings == []


@pytest.mark.parametrize(
    ("csv", "needle"),
    [
        ("Id,target_feature\ntr0,0\ntr0,1\ntr1,0\n", "duplicate Id 'tr0' on rows 2, 3"),
        ("Id,target_feature\ntr0,0\ntr1,2\n", "label '2' for Id 'tr1'"),
        ("Id,target_feature\ntr0,0\ntr1,-1\n", "label '-1'"),
        ("Id,target_feature\ntr0,0\ntr1,\n", "label '' for Id 'tr1'"),
        ("Id,target_feature\ntr0,0\ntr1,nan\n", "label 'nan'"),
        ("Id,target_feature\ntr0,0\nnope,1\n", "Id 'nope' has no file"),
        ("Id;target_feature\ntr0;0\n", "wrong delimiter?"),
        ("Id,target_feature\n../../etc/passwd,1\n", "path separator"),
        ("name,score\ntr0,0\n", "needs an Id column"),
    ],
)
def test_label_csv_problems(tmp_path: Path, csv: str, needle: str) -> None:
    assert needle in problems_of(make_layout(tmp_path, csv=csv))


def test_accepted_csv_variants(tmp_path: Path) -> None:
    # BOM, lower-case names, 'label' column, extra columns, Ids with extensions, spaces.
    csv = "\ufeffid,label,source\n" + "".join(f" tr{i}.jpg ,{i % 2},x\n" for i in range(6))
    layout = load_layout(DataConfig(root=str(make_layout(tmp_path, csv=csv))))
    assert sorted(layout.train.frame["Id"]) == [f"tr{i}" for i in range(6)]
    assert layout.train.frame["target"].tolist() == [0, 1, 0, 1, 0, 1]


def test_warnings_for_extra_and_unreadable_files(tmp_path: Path) -> None:
    root = make_layout(tmp_path)
    save_jpeg(root / "train_images" / "unlabelled.jpg", np.zeros((8, 8, 3), np.uint8))
    (root / "train_images" / "notes.txt").write_text("hello")
    (root / "test_images" / "broken.jpg").write_bytes(b"")
    (root / "test_images" / "123.jpg").mkdir()
    layout = load_layout(DataConfig(root=str(root)))
    text = "\n".join(layout.warnings)
    assert "unlabelled.jpg: no row" in text
    assert "notes.txt: not an image extension" in text
    assert "broken.jpg: zero-byte file" in text
    assert "123.jpg: a directory named like an input file" in text
    assert {"broken", "123"} <= set(layout.test.frame["Id"])  # kept: alignment records them as unreadable


def test_missing_pieces(tmp_path: Path) -> None:
    assert "data root not found" in problems_of(tmp_path / "absent")
    root = make_layout(tmp_path / "a")
    (root / "train_solution.csv").unlink()
    assert "labels CSV not found" in problems_of(root)
    root = make_layout(tmp_path / "b", n_test=0)
    (root / "test_images").mkdir(exist_ok=True)
    assert "no test images" in problems_of(root)
    root = make_layout(tmp_path / "c")
    save_jpeg(root / "train_images" / "tr0.png", np.zeros((4, 4, 3), np.uint8))
    assert "already used" in problems_of(root)


def test_folds_stratified_and_deterministic() -> None:
    labels = pd.DataFrame({"Id": [f"i{i}" for i in range(100)], "target": [int(i < 30) for i in range(100)]})
    a = make_folds(labels, 5, seed=7)
    b = make_folds(labels, 5, seed=7)
    c = make_folds(labels, 5, seed=8)
    assert a.equals(b) and not a["fold"].equals(c["fold"])
    assert a.groupby("fold")["target"].sum().tolist() == [6] * 5
    assert sorted(a["fold"].value_counts().tolist()) == [20] * 5


def test_group_folds_keep_groups_together() -> None:
    labels = pd.DataFrame({
        "Id": [f"i{i}" for i in range(60)], "target": [i % 2 for i in range(60)], "group": [i // 4 for i in range(60)],
    })
    folds = make_folds(labels, 3, seed=0)
    assert (folds.groupby("group")["fold"].nunique() == 1).all()


def test_too_few_per_class_for_folds() -> None:
    labels = pd.DataFrame({"Id": list("abcdef"), "target": [0, 0, 0, 0, 0, 1]})
    with pytest.raises(DataValidationError, match="at least 5 images of each class"):
        make_folds(labels, 5, seed=0)


def test_pseudo_labels_checked(tmp_path: Path) -> None:
    path = tmp_path / "d.csv"
    path.write_text("Id,target_feature,is_pseudo\ntr0,1,0\nte0,1,1\nte1,0,1\n")
    pseudo, originals = read_pseudo_labels(path, {"tr0"}, {"te0", "te1"})
    assert pseudo["Id"].tolist() == ["te0", "te1"] and pseudo["pseudo_fold"].tolist() == [-1, -1]
    assert originals is None  # no fold column: ensemble diamonds for every fold
    path.write_text("Id,target_feature,is_pseudo\ntr0,1,1\n")
    with pytest.raises(DataValidationError, match="train Ids"):
        read_pseudo_labels(path, {"tr0"}, {"te0"})


def test_per_fold_pseudo_labels_carry_their_folds(tmp_path: Path) -> None:
    path = tmp_path / "d.csv"
    path.write_text("Id,target_feature,is_pseudo,fold\ntr0,1,0,0\ntr1,0,0,1\nte0,1,1,0\nte0,1,1,1\nte1,0,1,1\n")
    pseudo, originals = read_pseudo_labels(path, {"tr0", "tr1"}, {"te0", "te1"})
    assert pseudo.to_dict("list") == {"Id": ["te0", "te0", "te1"], "target": [1, 1, 0], "pseudo_fold": [0, 1, 1]}
    assert originals is not None and originals.to_dict("list") == {"Id": ["tr0", "tr1"], "target": [1, 0],
                                                                    "fold": [0, 1]}
    path.write_text("Id,target_feature,is_pseudo,fold\ntr0,1,0,0\nte0,1,1,1\nte0,0,1,1\n")
    with pytest.raises(DataValidationError, match="duplicate pseudo Ids"):
        read_pseudo_labels(path, {"tr0"}, {"te0"})


def test_face_dataset_decodes_and_names_bad_files(tmp_path: Path) -> None:
    save_jpeg(tmp_path / "a.jpg", np.full((20, 24, 3), 7, np.uint8))
    bad = unreadable_corpus(tmp_path / "bad")["text_named.jpg"]
    ds = FaceDataset([str(tmp_path / "a.jpg"), str(bad)], np.array([1, 0]))
    image, target, index = ds[0]
    assert image.shape == (3, 20, 24) and image.dtype.is_floating_point is False and float(target) == 1.0
    with pytest.raises(ImageReadError, match="text_named.jpg"):
        ds[1]


def test_codec_copies_are_read_in_training_draws_only(tmp_path: Path) -> None:
    # Item 0 has two codec copies (values 100 and 200), item 1 none. Training keys (index, epoch)
    # read a copy with chance p, from (seed, epoch, index) alone; plain keys (validation,
    # prediction) always read the window itself.
    for name, value in (("w", 7), ("w.mp3", 100), ("w.opus", 200), ("v", 50)):
        save_jpeg(tmp_path / f"{name}.jpg", np.full((8, 8, 3), value, np.uint8))
    paths = [str(tmp_path / "w.jpg"), str(tmp_path / "v.jpg")]
    copies = [f"{tmp_path / 'w.mp3.jpg'};{tmp_path / 'w.opus.jpg'}", ""]

    def value(ds: FaceDataset, key: int | tuple[int, int]) -> int:
        return int(ds[key][0].float().mean().round())

    always = FaceDataset(paths, np.array([1, 0]), copies=copies, codec=CodecCopyPick(1.0, seed=3))
    assert value(always, 0) == 7 and value(always, 1) == 50  # plain keys: never a copy
    drawn = [value(always, (0, epoch)) for epoch in range(40)]
    assert set(drawn) == {100, 200}  # p = 1: always a copy, both drawn
    assert [value(always, (1, epoch)) for epoch in range(5)] == [50] * 5  # no copies: the window
    half = FaceDataset(paths, np.array([1, 0]), copies=copies, codec=CodecCopyPick(0.5, seed=3))
    seen = [value(half, (0, epoch)) for epoch in range(200)]
    assert 0.35 < seen.count(7) / 200 < 0.65 and seen == [value(half, (0, epoch)) for epoch in range(200)]
    never = FaceDataset(paths, np.array([1, 0]), copies=copies, codec=CodecCopyPick(0.0, seed=3))
    assert [value(never, (0, epoch)) for epoch in range(20)] == [7] * 20


# ----------------------------------------------------------------------------- folds with groups, round 2


def _grouped_layout(root: Path) -> Path:
    """12 train images in 6 videos (a real and a fake frame each), 4 test images."""
    csv = "Id,target_feature,video\n" + "".join(f"tr{i},{i % 2},v{i // 2}\n" for i in range(12))
    return make_layout(root, n_train=12, n_test=4, csv=csv)


def _prepare(tmp_path: Path, root: Path, *sets: str) -> pd.DataFrame:
    import torch

    from deepfake_pipeline.artifacts import RunPaths
    from deepfake_pipeline.config import load_config
    from deepfake_pipeline.finetune import prepare_folds
    from deepfake_pipeline.runtime import Runtime

    cfg = load_config(None, ["run.name=t", f"data.root={root}", f"run.dir={tmp_path / 'run'}", "finetune.folds=3",
                             *sets])
    (tmp_path / "run").mkdir(parents=True, exist_ok=True)
    return prepare_folds(cfg, RunPaths(tmp_path / "run"), Runtime(torch.device("cpu")), force=False)


def test_folds_hash_covers_the_group_values(tmp_path: Path) -> None:
    """Regrouping the same rows (a corrected video column) must not reuse folds made for the old groups."""
    from deepfake_pipeline.errors import StaleOutputError

    root = _grouped_layout(tmp_path / "data")
    folds = _prepare(tmp_path, root, "finetune.group_column=video")
    assert (folds.groupby("group")["fold"].nunique() == 1).all()
    csv = root / "train_solution.csv"
    csv.write_text(csv.read_text().replace("v5", "v0"))  # same Ids, labels and column; other groups
    with pytest.raises(StaleOutputError, match="other labels"):
        _prepare(tmp_path, root, "finetune.group_column=video")


def test_fold_seed_keeps_the_folds_when_run_seed_changes(tmp_path: Path) -> None:
    """Runs for one blend: another run.seed with finetune.fold_seed set draws the same folds as the
    run whose run.seed that was; without it, other folds. A fold_seed ignored, or the folds drawn from
    run.seed, fails this."""
    root = make_layout(tmp_path / "data", n_train=30)
    base = _prepare(tmp_path / "a", root, "run.seed=42")
    same = _prepare(tmp_path / "b", root, "run.seed=7", "finetune.fold_seed=42")
    other = _prepare(tmp_path / "c", root, "run.seed=7")
    assert same["fold"].tolist() == base["fold"].tolist()
    assert other["fold"].tolist() != base["fold"].tolist()
    assert _prepare(tmp_path / "d", root, "run.seed=42", "finetune.fold_seed=7")["fold"].tolist() == \
        other["fold"].tolist()


def test_round_two_refuses_inherited_folds_that_split_a_group(tmp_path: Path) -> None:
    """Per-fold diamonds make round 2 keep round 1's folds. Mined from a round that ignored the videos,
    those folds put the two frames of a video in two folds: refused, never trained on."""
    from deepfake_pipeline.errors import PipelineError

    root = _grouped_layout(tmp_path / "data")
    rows = [f"tr{i},{i % 2},0,,{i % 3},,\n" for i in range(12)]  # round 1's folds: i % 3 splits every video
    diamonds = tmp_path / "diamonds.csv"
    diamonds.write_text("Id,target_feature,is_pseudo,prob,fold,source_run,config_hash\n" + "".join(rows)
                        + "te0,1,1,0.999,0,r1,h\n")
    with pytest.raises(PipelineError, match="several folds"):
        _prepare(tmp_path, root, "finetune.group_column=video", f"data.pseudo_labels={diamonds}")
    # Without a group column there is nothing to keep together: the inherited folds are used.
    folds = _prepare(tmp_path / "plain", root, f"data.pseudo_labels={diamonds}")
    assert folds.loc[folds["is_pseudo"] == 0, "fold"].tolist() == [i % 3 for i in range(12)]


def test_extra_roots_join_training_with_their_own_ids_and_groups(tmp_path: Path) -> None:
    """Two sets with the same Ids and video names: merged, no Id or group may be shared (a shared
    group would tie unrelated rows together; a shared Id would overwrite an aligned face)."""
    main = _grouped_layout(tmp_path / "main")
    other = _grouped_layout(tmp_path / "other")
    plain = make_layout(tmp_path / "plain", n_train=6)  # no video column: one group per row
    sets = (f"data.extra_roots=[{other},{plain}]", "finetune.group_column=video")
    folds = _prepare(tmp_path, main, *sets)
    assert len(folds) == 30 and folds["Id"].is_unique
    assert {"tr0", "other__tr0", "plain__tr0"} <= set(folds["Id"])
    assert (folds.groupby("group")["fold"].nunique() == 1).all()
    assert folds["group"].nunique() == 6 + 6 + 6
    layout = load_layout(DataConfig(root=str(main), extra_roots=[str(other)]), group_column="video")
    frame = layout.train.frame.set_index("Id")
    assert Path(frame.loc["other__tr3", "path"]) == other / "train_images" / "tr3.jpg"
    assert frame.loc["other__tr3", "source"] == "other" and frame.loc["tr3", "source"] == "main"
    assert len(layout.test.frame) == 4  # the test set is data.root's alone


def test_leave_one_dataset_out_trains_on_the_extra_roots_only(tmp_path: Path) -> None:
    main, other = make_layout(tmp_path / "main"), make_layout(tmp_path / "other", n_train=8)
    layout = load_layout(DataConfig(root=str(main), extra_roots=[str(other)], train_root=False))
    assert set(layout.train.frame["source"]) == {"other"} and len(layout.train.frame) == 8
    assert list(layout.test.frame["Id"]) == ["te0", "te1", "te2"]
    with pytest.raises(DataValidationError, match="nothing to train on"):
        load_layout(DataConfig(root=str(main), train_root=False))
    # Grouped training sets, a held-out set without the group column (rfff held out of dfdc_faces +
    # lfw_swap): its unused labels need no groups; with train_root they do.
    grouped = _grouped_layout(tmp_path / "grouped")
    held_out = load_layout(DataConfig(root=str(main), extra_roots=[str(grouped), str(other)], train_root=False),
                           group_column="video")
    groups = held_out.train.frame.set_index("Id")["group"]
    assert groups["grouped__tr0"].startswith("grouped__") and groups["other__tr0"] == "other__tr0"
    with pytest.raises(DataValidationError, match="group column 'video' not found"):
        load_layout(DataConfig(root=str(main), extra_roots=[str(grouped)]), group_column="video")
    with pytest.raises(DataValidationError, match="two sets named 'main'"):
        load_layout(DataConfig(root=str(main), extra_roots=[str(make_layout(tmp_path / "x" / "main"))]))
    (other / "train_images" / "tr7.jpg").unlink()
    with pytest.raises(DataValidationError, match="'tr7' has no file"):
        load_layout(DataConfig(root=str(main), extra_roots=[str(other)]))
