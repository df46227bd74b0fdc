"""The scoring CLI and score_files on temporary CSVs."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from sklearn import metrics as skm

from deepfake_pipeline.errors import SubmissionError
from deepfake_pipeline.score import main, score_files

IDS = [f"img_{i:03d}" for i in range(12)]
Y = np.array([0, 1, 1, 0, 1, 0, 0, 1, 1, 0, 1, 0])
PRED = np.array([0, 1, 0, 0, 1, 1, 0, 1, 1, 0, 0, 0])
PROB = np.array([0.1, 0.9, 0.4, 0.2, 0.8, 0.6, 0.3, 0.7, 0.95, 0.05, 0.45, 0.35])


def _write(path: Path, header: str, rows: list[tuple]) -> Path:
    path.write_text(header + "\n" + "".join(",".join(str(v) for v in r) + "\n" for r in rows))
    return path


@pytest.fixture
def solution(tmp_path: Path) -> Path:
    return _write(tmp_path / "solution.csv", "Id,target_feature", list(zip(IDS, Y, strict=True)))


def _expected(with_auc: bool) -> dict[str, float]:
    out = {
        "f1": skm.f1_score(Y, PRED),
        "acc": skm.accuracy_score(Y, PRED),
        "precision": skm.precision_score(Y, PRED),
        "recall": skm.recall_score(Y, PRED),
    }
    if with_auc:
        out["auc"] = skm.roc_auc_score(Y, PROB)
    return out


def test_score_files_labels_only_shuffled_rows(tmp_path: Path, solution: Path) -> None:
    order = np.random.default_rng(0).permutation(len(IDS))
    sub = _write(tmp_path / "sub.csv", "id,TARGET", [(IDS[i], PRED[i]) for i in order])  # other names/case
    scores = score_files(sub, solution)
    assert "auc" not in scores and scores["n"] == len(IDS)
    for key, value in _expected(False).items():
        assert scores[key] == pytest.approx(value)


def test_cli_with_prob_column(tmp_path: Path, solution: Path, capsys: pytest.CaptureFixture[str]) -> None:
    sub = _write(tmp_path / "sub.csv", "Id,target_feature,prob", list(zip(IDS, PRED, PROB, strict=True)))
    assert main([str(sub), str(solution)]) == 0
    out = capsys.readouterr().out
    values = {line.split()[0]: float(line.split()[1]) for line in out.strip().splitlines()}
    exp = _expected(True)
    assert values["f1"] == pytest.approx(exp["f1"], abs=1e-6)
    assert values["accuracy"] == pytest.approx(exp["acc"], abs=1e-6)
    assert values["precision"] == pytest.approx(exp["precision"], abs=1e-6)
    assert values["recall"] == pytest.approx(exp["recall"], abs=1e-6)
    assert values["auc"] == pytest.approx(exp["auc"], abs=1e-6)


def test_probs_file(tmp_path: Path, solution: Path) -> None:
    sub = _write(tmp_path / "sub.csv", "Id,label", list(zip(IDS, PRED, strict=True)))
    probs = _write(tmp_path / "test_probs.csv", "Id,prob", list(zip(IDS[::-1], PROB[::-1], strict=True)))
    scores = score_files(sub, solution, probs=probs)
    assert scores["auc"] == pytest.approx(skm.roc_auc_score(Y, PROB))
    assert scores["logloss"] == pytest.approx(skm.log_loss(Y, PROB))


def _run_cli(*args: str | Path) -> subprocess.CompletedProcess[str]:
    root = Path(__file__).resolve().parents[1]
    cmd = [sys.executable, "-m", "deepfake_pipeline.score", *map(str, args)]
    return subprocess.run(cmd, cwd=root, capture_output=True, text=True, timeout=60, check=False)


def test_cli_subprocess_ok(tmp_path: Path, solution: Path) -> None:
    sub = _write(tmp_path / "sub.csv", "Id,target_feature", list(zip(IDS, PRED, strict=True)))
    res = _run_cli(sub, solution)
    assert res.returncode == 0, res.stderr
    assert "f1" in res.stdout and "auc" not in res.stdout


BAD_CASES = {
    "missing": (list(zip(IDS[:-1], PRED[:-1], strict=True)), "missing"),
    "extra": ([*zip(IDS, PRED, strict=True), ("img_999", 1)], "not in"),
    "duplicate": ([*zip(IDS, PRED, strict=True), (IDS[3], 0)], "duplicate"),
    "bad_label": ([*zip(IDS[:-1], PRED[:-1], strict=True), (IDS[-1], 2)], "not 0/1"),
    "text_label": ([*zip(IDS[:-1], PRED[:-1], strict=True), (IDS[-1], "fake")], "not 0/1"),
    "empty_label": ([*zip(IDS[:-1], PRED[:-1], strict=True), (IDS[-1], "")], "not 0/1"),
}


@pytest.mark.parametrize("case", sorted(BAD_CASES))
def test_errors_exit_2_with_one_line(
    case: str, tmp_path: Path, solution: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rows, needle = BAD_CASES[case]
    sub = _write(tmp_path / "sub.csv", "Id,target_feature", rows)
    assert main([str(sub), str(solution)]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and needle in lines[0] and "sub.csv" in lines[0]
    with pytest.raises(SubmissionError):
        score_files(sub, solution)


def test_other_errors(tmp_path: Path, solution: Path, capsys: pytest.CaptureFixture[str]) -> None:
    sub = _write(tmp_path / "sub.csv", "Id,target_feature", list(zip(IDS, PRED, strict=True)))
    assert main([str(tmp_path / "nope.csv"), str(solution)]) == 2
    no_label = _write(tmp_path / "nolabel.csv", "Id,whatever", list(zip(IDS, PRED, strict=True)))
    assert main([str(no_label), str(solution)]) == 2
    bad_sol = _write(tmp_path / "bad_sol.csv", "Id,target_feature", [*zip(IDS, Y, strict=True), (IDS[0], 1)])
    assert main([str(sub), str(bad_sol)]) == 2
    bad_prob = _write(
        tmp_path / "probs.csv", "Id,prob", [*zip(IDS[:-1], PROB[:-1], strict=True), (IDS[-1], 1.5)]
    )
    assert main([str(sub), str(solution), "--probs", str(bad_prob)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 4 and all(line.startswith("error: ") for line in err)


def test_cli_subprocess_error(tmp_path: Path, solution: Path) -> None:
    sub = _write(tmp_path / "sub.csv", "Id,target_feature", list(zip(IDS[:5], PRED[:5], strict=True)))
    res = _run_cli(sub, solution)
    assert res.returncode == 2 and res.stdout == ""
    assert len(res.stderr.strip().splitlines()) == 1 and "7 Id(s)" in res.stderr
