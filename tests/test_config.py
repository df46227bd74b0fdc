from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from deepfake_pipeline.config import load_config, stage_hash
from deepfake_pipeline.errors import ConfigError

from .conftest import PYTHON, REPO


def test_shipped_configs_load() -> None:
    default = load_config(REPO / "configs/default.yaml")
    assert default.align.size == 512 and default.finetune.folds == 5
    assert default.model.backbone.startswith("convnextv2")
    assert default.align.out == "data/faces_512"  # interpolation resolved
    demo = load_config(REPO / "configs/demo.yaml")
    assert demo.run.name == "demo" and demo.run.dir == "weights/demo"


def test_overrides_apply_in_order_and_typed() -> None:
    cfg = load_config(REPO / "configs/demo.yaml", ["finetune.epochs=3", "finetune.epochs=4", "model.channels=[rgb]"])
    assert cfg.finetune.epochs == 4
    assert cfg.model.channels == ["rgb"]


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("run: {name: x}\nalign: {sizee: 3}\n", "align.sizee"),
        ("run: {name: x}\nalign: {size: big}\n", "align.size"),
        ("run: {name: x}\nfinetune: {optim: {lr: [1, 2]}}\n", "finetune.optim.lr"),
        ("align: {size: 64}\n", "run.name"),
        ("run: {name: x}\nbogus_section: 1\n", "bogus_section"),
    ],
)
def test_config_errors_name_key_and_file(tmp_path: Path, text: str, needle: str) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert needle in str(info.value)
    assert str(path) in str(info.value)


def test_override_errors_name_the_override() -> None:
    with pytest.raises(ConfigError, match=r"--set ssl.epochs=ten: key 'ssl.epochs'"):
        load_config(REPO / "configs/demo.yaml", ["ssl.epochs=ten"])
    with pytest.raises(ConfigError, match="expected key.path=value"):
        load_config(REPO / "configs/demo.yaml", ["ssl.epochs"])


def test_value_checks() -> None:
    with pytest.raises(ConfigError, match="model.channels"):
        load_config(REPO / "configs/demo.yaml", ["model.channels=[rgb,dct]"])
    with pytest.raises(ConfigError, match="mask_ratio"):
        load_config(REPO / "configs/demo.yaml", ["ssl.mask_ratio=1.5"])
    with pytest.raises(ConfigError, match="run.channels_last: 'sometimes'"):
        load_config(REPO / "configs/demo.yaml", ["run.channels_last=sometimes"])
    with pytest.raises(ConfigError, match=r"finetune.fold_seed: -1 is not in \[0, 2\*\*31\)"):
        load_config(REPO / "configs/demo.yaml", ["finetune.fold_seed=-1"])
    with pytest.raises(ConfigError, match=r"run.seed: 2147483648 is not in \[0, 2\*\*31\)"):
        load_config(REPO / "configs/demo.yaml", [f"run.seed={2**31}"])
    # the boolean this setting once was still loads (OmegaConf turns it into "False": never)
    assert load_config(REPO / "configs/demo.yaml", ["run.channels_last=false"]).run.channels_last == "False"


def test_missing_file_and_bad_yaml(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "broken.yaml"
    bad.write_text("run: {name: x\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)


def test_stage_hash_ignores_runtime_keys() -> None:
    base = load_config(REPO / "configs/demo.yaml")
    more_workers = load_config(REPO / "configs/demo.yaml", ["align.workers=7", "run.workers=9", "run.device=cpu"])
    other_size = load_config(REPO / "configs/demo.yaml", ["align.size=64"])
    assert stage_hash(base, ["data", "align"]) == stage_hash(more_workers, ["data", "align"])
    assert stage_hash(base, ["data", "align"]) != stage_hash(other_size, ["data", "align"])
    # finetune.fold_seed acts through the folds, which are hashed themselves: runs made before it keep theirs
    with_fold_seed = load_config(REPO / "configs/demo.yaml", ["finetune.fold_seed=42"])
    assert stage_hash(base, ["model", "finetune"]) == stage_hash(with_fold_seed, ["model", "finetune"])


def test_cli_exit_code_2_on_config_error(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("run: {name: x}\nalign: {sizee: 3}\n")
    proc = subprocess.run([PYTHON, "train.py", "--config", str(path), "--stage", "ssl"], cwd=REPO,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert "align.sizee" in proc.stderr and str(path) in proc.stderr
    assert "Traceback" not in proc.stderr


def test_crop_fit_needs_faces_at_least_as_large_as_the_window() -> None:
    cfg = load_config(None, ["run.name=x", "align.size=192", "model.img_size=128", "model.fit=crop"])
    assert cfg.model.fit == "crop"
    with pytest.raises(ConfigError, match="align.size 96 is smaller than model.img_size 128"):
        load_config(None, ["run.name=x", "align.size=96", "model.img_size=128", "model.fit=crop"])
    with pytest.raises(ConfigError, match="model.fit"):
        load_config(None, ["run.name=x", "model.fit=stretch"])
    # resize has no such limit: a smaller face is resampled up
    assert load_config(None, ["run.name=x", "align.size=96", "model.img_size=128"]).model.fit == "resize"


def test_time_pool_is_checked_when_the_config_loads() -> None:
    assert load_config(None, ["run.name=x", "model.img_size=128", "model.pool=time"]).model.pool == "time"
    assert load_config(None, ["run.name=x"]).model.pool == "global"
    with pytest.raises(ConfigError, match="model.img_size 112 is not a multiple of 32"):
        load_config(None, ["run.name=x", "model.img_size=112", "model.pool=time"])
    with pytest.raises(ConfigError, match="model.pool"):
        load_config(None, ["run.name=x", "model.pool=freq"])


def test_amp_off_means_off_though_yaml_reads_it_as_false(tmp_path: Path) -> None:
    assert load_config(None, ["run.name=t", "run.amp=off"]).run.amp == "off"
    path = tmp_path / "c.yaml"
    path.write_text("run: {name: t, amp: off}\n")
    assert load_config(path).run.amp == "off"
    with pytest.raises(ConfigError, match="run.amp"):
        load_config(None, ["run.name=t", "run.amp=on"])  # true stays refused: it names no precision
