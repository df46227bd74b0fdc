"""The epoch's batch order: plain permutation, or each group's items side by side (finetune.group_batches)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from deepfake_pipeline.config import load_config
from deepfake_pipeline.engine import EpochBatches, grouped_order
from deepfake_pipeline.errors import ConfigError, PipelineError
from deepfake_pipeline.finetune import _batch_groups
from deepfake_pipeline.runtime import Runtime

# 40 items in 20 pairs (a real face and the fake made from its video), pair members far apart in the index
PAIRS = np.array([f"video{i % 20}" for i in range(40)])


def _batches(groups: np.ndarray | None, epoch: int = 0, rank: int = 0, world: int = 1, skip: int = 0,
             n: int = 40, size: int = 4) -> list[list[int]]:
    runtime = Runtime(torch.device("cpu"), rank=rank, world_size=world)
    sampler = EpochBatches(list(range(n)), batch_size=size, runtime=runtime, seed=7, groups=groups)
    sampler.set_position(epoch, skip)
    return [[i for i, _ in batch] for batch in sampler]


def _split_pairs(batches: list[list[int]]) -> int:
    return sum(len({PAIRS[i] for i in b}) for b in batches) - len({PAIRS[i] for b in batches for i in b})


def test_grouped_order_is_a_permutation_with_each_group_contiguous() -> None:
    groups = np.array(list("aabbbcdddde"))[np.random.default_rng(0).permutation(11)]
    order = grouped_order(groups, seed=3)
    assert sorted(order) == list(range(11))
    seq = [groups[i] for i in order]
    runs = [g for j, g in enumerate(seq) if j == 0 or seq[j - 1] != g]
    assert len(runs) == len(set(seq))  # every group appears as one run
    assert grouped_order(groups, seed=3) == order
    assert any(grouped_order(groups, seed=s) != order for s in range(4, 10))


def test_group_batches_keep_pairs_in_one_batch_and_reshuffle_each_epoch() -> None:
    plain = _batches(None)
    assert _split_pairs(plain) > 0  # the sampler's permutation splits pairs: the check below can fail
    grouped = _batches(PAIRS)
    assert len(grouped) == len(plain) == 10
    assert sorted(i for b in grouped for i in b) == list(range(40))
    assert _split_pairs(grouped) == 0
    assert _batches(PAIRS, epoch=1) != grouped and _split_pairs(_batches(PAIRS, epoch=1)) == 0
    assert _batches(PAIRS) == grouped  # (seed, epoch) decide it: a resumed epoch replays it
    assert _batches(PAIRS, skip=3) == grouped[3:]  # resuming after 3 done batches gives the rest


def test_group_batches_deal_whole_batches_to_ranks() -> None:
    ranks = [_batches(PAIRS, rank=r, world=2) for r in (0, 1)]
    assert len(ranks[0]) == len(ranks[1]) == 5  # DDP ranks step together
    items = [i for r in ranks for b in r for i in b]
    assert sorted(items) == list(range(40))
    assert all(_split_pairs(r) == 0 for r in ranks)


@pytest.mark.parametrize(("n", "size", "world"), [(40, 4, 3), (4, 4, 2), (3, 4, 2), (9, 4, 4)])
def test_group_batches_give_every_rank_the_same_number_of_full_batches(n: int, size: int, world: int) -> None:
    """Awkward sizes, fewer batches than ranks included: each rank steps as often, never on an empty batch."""
    groups = np.array([f"g{i // 2}" for i in range(n)])
    ranks = [_batches(groups, rank=r, world=world, n=n, size=size) for r in range(world)]
    assert len({len(r) for r in ranks}) == 1 and len(ranks[0]) >= 1
    assert all(len(b) == min(size, n) for r in ranks for b in r)


def test_group_batches_checks_its_groups() -> None:
    runtime = Runtime(torch.device("cpu"))
    with pytest.raises(ValueError, match="3 labels for 40 items"):
        EpochBatches(list(range(40)), 4, runtime, seed=0, groups=["a", "b", "c"])
    with pytest.raises(ConfigError, match="group_batches: needs finetune.group_column"):
        load_config(None, ["run.name=t", "finetune.group_batches=true"])


def test_batch_groups_of_a_fold(tmp_path: Path) -> None:
    rows = pd.DataFrame({"Id": ["1", "2", "3", "4"], "group": ["v1", "v1", None, None], "target": [0, 1, 1, 0]})
    cfg = load_config(None, ["run.name=t", "finetune.group_column=group", "finetune.group_batches=true"])
    groups = _batch_groups(cfg, rows)
    assert groups[0] == groups[1] == "v1"
    assert len(set(groups)) == 3  # pseudo-labelled rows (no group) each stand alone
    # ... also once folds.csv is read back, where a missing group is "" (as prepare_folds reads it)
    rows.to_csv(tmp_path / "folds.csv", index=False)
    back = pd.read_csv(tmp_path / "folds.csv", dtype={"Id": str}, keep_default_na=False)
    assert _batch_groups(cfg, back) == groups
    assert _batch_groups(load_config(None, ["run.name=t", "finetune.group_column=group"]), rows) is None
    with pytest.raises(PipelineError, match="group_column"):
        _batch_groups(cfg, rows.drop(columns="group"))
