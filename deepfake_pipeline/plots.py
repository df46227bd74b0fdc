"""Training curves and out-of-fold diagnostics of a run, as PNGs plus one ``report.html``.

Reads only the run's own files (never logs): ``ssl/metrics.jsonl`` and ``fold<k>/metrics.jsonl``
(one JSON object per epoch; a torn or foreign line is skipped), ``fold<k>/done.json``, ``oof.csv``
(Id, fold, target, prob), ``threshold.json`` and ``test_probs.csv`` (Id, prob). A partial run
(SSL only, some folds, no OOF yet) gives the figures its files allow, and the report lists what is
missing and why. Everything lands in ``<run>/plots/`` (atomic writes); a figure whose inputs are
gone is removed there, so the folder always shows the run as it is now.

Figures: ``ssl.png`` (SSL loss and LR per epoch), ``folds.png`` (train loss, validation loss, AUC
and F1 per epoch, one line per fold, the selected epoch marked), ``roc_pr.png`` (pooled OOF ROC and
PR curves, thin per-fold ROC lines), ``confusion.png`` (at the chosen threshold), ``oof_hist.png``
(OOF scores per class with the threshold) and ``test_hist.png`` (test probabilities).
"""

from __future__ import annotations

import html
import json
import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from .images import atomic_path, atomic_write_text
from .metrics import binary_metrics

log = logging.getLogger(__name__)

FIGURES = ("ssl.png", "folds.png", "roc_pr.png", "confusion.png", "oof_hist.png", "test_hist.png")
REAL_COLOR, FAKE_COLOR, THRESHOLD_COLOR = "#1f77b4", "#d62728", "#2ca02c"
DPI = 110


# ----------------------------------------------------------------------------- reading the run


def read_jsonl(path: Path) -> tuple[list[dict[str, Any]], int]:
    """(records, skipped lines): every line that parses to a JSON object; a torn line is skipped."""
    records: list[dict[str, Any]] = []
    skipped = 0
    for line in path.read_text(errors="replace").splitlines():
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            skipped += 1
            continue
        if isinstance(record, dict) and isinstance(record.get("epoch"), int):
            records.append(record)
        else:
            skipped += 1
    # A resumed run rewrites an epoch's line: keep the last one of each epoch, in epoch order.
    by_epoch = {r["epoch"]: r for r in records}
    return [by_epoch[e] for e in sorted(by_epoch)], skipped


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None
    return data if isinstance(data, dict) else None


def _read_csv(path: Path, columns: set[str], missing: list[str]) -> pd.DataFrame | None:
    if not path.is_file():
        return None
    try:
        frame = pd.read_csv(path, dtype={"Id": str})
    except (OSError, ValueError, pd.errors.ParserError) as exc:
        missing.append(f"{path.name}: unreadable ({exc})")
        return None
    if not columns <= set(frame.columns):
        missing.append(f"{path.name}: needs columns {sorted(columns)}, has {list(frame.columns)}")
        return None
    numeric = frame[sorted(columns - {"Id"})].apply(pd.to_numeric, errors="coerce")
    ok = np.isfinite(numeric.to_numpy(dtype=float)).all(axis=1)
    if not ok.all():
        missing.append(f"{path.name}: {int((~ok).sum())} row(s) with a missing or non-numeric value left out")
    frame = frame[ok].reset_index(drop=True)
    frame[numeric.columns] = numeric[ok].reset_index(drop=True)
    return frame


@dataclass
class FoldInfo:
    k: int
    rows: list[dict[str, Any]]
    done: dict[str, Any] | None  # done.json when the fold finished
    planned_epochs: int | None

    @property
    def best_epoch(self) -> int | None:
        if self.done and self.done.get("best_epoch") is not None:
            return int(self.done["best_epoch"])
        values = [r.get("best_epoch") for r in self.rows if r.get("best_epoch") is not None]
        return int(values[-1]) if values else None

    def best_row(self) -> dict[str, Any] | None:
        best = self.best_epoch
        return next((r for r in self.rows if r["epoch"] == best), None)


@dataclass
class RunData:
    root: Path
    name: str
    n_folds: int | None  # from config.yaml; None when unknown
    select_metric: str
    ssl_rows: list[dict[str, Any]]
    ssl_done: dict[str, Any] | None
    ssl_planned: int | None
    folds: list[FoldInfo]
    oof: pd.DataFrame | None
    threshold: dict[str, Any] | None
    test_probs: pd.DataFrame | None
    missing: list[str] = field(default_factory=list)  # what is missing and why, for the report
    skipped_lines: int = 0

    @property
    def finished_folds(self) -> list[int]:
        return [f.k for f in self.folds if f.done is not None and (self.root / f"fold{f.k}" / "best.safetensors").is_file()]


def _run_config(root: Path) -> dict[str, Any]:
    """The run's saved config as a plain dict ({} when absent or unreadable): no schema needed here."""
    path = root / "config.yaml"
    if not path.is_file():
        return {}
    try:
        import yaml

        data = yaml.safe_load(path.read_text())
    except Exception:  # a damaged config must not stop the plots: the numbers then come from the files
        return {}
    return data if isinstance(data, dict) else {}


def load_run(root: str | Path) -> RunData:
    """Everything the plots need from a run directory; what is absent is recorded in ``missing``."""
    root = Path(root)
    if not root.is_dir():
        from .errors import PipelineError

        raise PipelineError(f"{root}: run directory not found")
    cfg = _run_config(root)
    finetune = cfg.get("finetune") or {}
    ssl_cfg = cfg.get("ssl") or {}
    missing: list[str] = []
    if not cfg:
        missing.append("config.yaml: not found or unreadable (fold count and planned epochs unknown)")
    skipped = 0

    ssl_rows: list[dict[str, Any]] = []
    ssl_metrics = root / "ssl" / "metrics.jsonl"
    if ssl_metrics.is_file():
        ssl_rows, n = read_jsonl(ssl_metrics)
        skipped += n
    elif ssl_cfg.get("enabled", True) and finetune.get("init", "ssl") == "ssl":
        missing.append("ssl/metrics.jsonl: SSL has not run yet (train.py --stage ssl)")
    ssl_done = _read_json(root / "ssl" / "done.json")
    if ssl_rows and ssl_done is None:
        missing.append(f"SSL unfinished: {len(ssl_rows)}/{ssl_cfg.get('epochs', '?')} epochs recorded")

    n_folds = finetune.get("folds")
    found = sorted(int(p.name[4:]) for p in root.glob("fold*") if p.is_dir() and p.name[4:].isdigit())
    wanted = sorted(set(found) | set(range(int(n_folds)) if n_folds else set()))
    folds: list[FoldInfo] = []
    for k in wanted:
        path = root / f"fold{k}" / "metrics.jsonl"
        rows: list[dict[str, Any]] = []
        if path.is_file():
            rows, n = read_jsonl(path)
            skipped += n
        done = _read_json(root / f"fold{k}" / "done.json")
        planned = finetune.get("epochs")
        if not rows and done is None:
            missing.append(f"fold{k}: not started (no metrics.jsonl)")
        elif done is None:
            missing.append(f"fold{k}: unfinished, {len(rows)}/{planned or '?'} epochs recorded")
        folds.append(FoldInfo(k, rows, done, planned))

    oof = _read_csv(root / "oof.csv", {"fold", "target", "prob"}, missing)
    threshold = _read_json(root / "threshold.json")
    n_done = sum(1 for f in folds if f.done is not None)
    total = n_folds if n_folds else "?"
    if oof is None and not any(m.startswith("oof.csv") for m in missing):
        missing.append(f"oof.csv: written when every fold has finished ({n_done}/{total} finished)")
    if threshold is None:
        missing.append(f"threshold.json: written with oof.csv ({n_done}/{total} folds finished)")
    test_probs = _read_csv(root / "test_probs.csv", {"prob"}, missing)
    if test_probs is None and not any(m.startswith("test_probs.csv") for m in missing):
        missing.append("test_probs.csv: the predict stage has not run (train.py --stage predict)")
    if skipped:
        missing.append(f"{skipped} unreadable metrics line(s) skipped (torn by a kill, or not JSON)")
    return RunData(
        root=root, name=str((cfg.get("run") or {}).get("name") or root.name), n_folds=int(n_folds) if n_folds else None,
        select_metric=str(finetune.get("select_metric", "val_auc")), ssl_rows=ssl_rows, ssl_done=ssl_done,
        ssl_planned=ssl_cfg.get("epochs"), folds=folds, oof=oof, threshold=threshold, test_probs=test_probs,
        missing=missing, skipped_lines=skipped,
    )


# ----------------------------------------------------------------------------- figures


def _save(fig: Figure, path: Path) -> Path:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=DPI)
    return path


def _series(rows: list[dict[str, Any]], key: str) -> tuple[list[int], list[float]]:
    """(1-based epochs, values) of the rows that have a finite ``key``."""
    pairs = [(r["epoch"] + 1, float(r[key])) for r in rows if isinstance(r.get(key), (int, float))]
    pairs = [(e, v) for e, v in pairs if math.isfinite(v)]
    return [e for e, _ in pairs], [v for _, v in pairs]


def _epoch_axis(ax: Any, max_epoch: int) -> None:
    ax.set_xlabel("epoch")
    ax.set_xlim(0.5, max(max_epoch, 1) + 0.5)
    if max_epoch <= 20:
        ax.set_xticks(range(1, max(max_epoch, 1) + 1))
    ax.grid(alpha=0.3)


def plot_ssl(run: RunData, path: Path) -> Path | None:
    epochs, loss = _series(run.ssl_rows, "train_loss")
    if not epochs:
        return None
    lr_epochs, lr = _series(run.ssl_rows, "lr")
    fig = Figure(figsize=(10, 3.8), layout="constrained")
    ax_loss, ax_lr = fig.subplots(1, 2)
    ax_loss.plot(epochs, loss, "o-", color="#9467bd")
    ax_loss.set_title("SSL (SimMIM) training loss")
    ax_loss.set_ylabel("L1 on masked pixels (mean per epoch)")
    ax_lr.plot(lr_epochs, lr, "o-", color="#7f7f7f")
    ax_lr.set_title("SSL learning rate (at epoch end)")
    ax_lr.set_ylabel("learning rate")
    ax_lr.ticklabel_format(axis="y", style="sci", scilimits=(-2, 3))
    planned = run.ssl_planned or max(epochs)
    for ax in (ax_loss, ax_lr):
        _epoch_axis(ax, max(planned, max(epochs)))
    state = "finished" if run.ssl_done else f"unfinished: {len(epochs)}/{planned} epochs"
    fig.suptitle(f"{run.name}: self-supervised pretraining ({state})")
    return _save(fig, path)


def _fold_colors(n: int) -> list[Any]:
    from matplotlib import colormaps

    cmap = colormaps["tab10"]
    return [cmap(i % 10) for i in range(max(n, 1))]


def plot_folds(run: RunData, path: Path) -> Path | None:
    folds = [f for f in run.folds if f.rows]
    if not folds:
        return None
    panels = (
        ("train_loss", "training loss", "BCE with label smoothing"),
        ("val_loss", "validation loss", "BCE"),
        ("val_auc", "validation ROC AUC", "AUC"),
        ("val_f1", "validation F1 (at its best threshold)", "F1"),
    )
    fig = Figure(figsize=(11, 7.5), layout="constrained")
    axes = fig.subplots(2, 2).ravel()
    colors = _fold_colors(max(f.k for f in folds) + 1)
    max_epoch = max(max(r["epoch"] + 1 for r in f.rows) for f in folds)
    max_epoch = max(max_epoch, max((f.planned_epochs or 0) for f in folds))
    for ax, (key, title, unit) in zip(axes, panels):
        for f in folds:
            epochs, values = _series(f.rows, key)
            if not epochs:
                continue
            state = "" if f.done else " (running)"
            ax.plot(epochs, values, "o-", color=colors[f.k], ms=4, lw=1.5, label=f"fold {f.k}{state}")
            best = f.best_epoch
            if best is not None and best + 1 in epochs:
                ax.plot([best + 1], [values[epochs.index(best + 1)]], marker="*", ms=15, color=colors[f.k],
                        markeredgecolor="black", ls="none")
        ax.set_title(title)
        ax.set_ylabel(unit)
        _epoch_axis(ax, max_epoch)
        if key in ("val_auc", "val_f1"):
            ax.set_ylim(-0.02, 1.02)
    handles, labels = axes[0].get_legend_handles_labels()
    from matplotlib.lines import Line2D

    handles.append(Line2D([], [], marker="*", ms=12, color="white", markeredgecolor="black", ls="none"))
    labels.append(f"selected epoch (best {run.select_metric})")
    fig.legend(handles, labels, loc="outside lower center", ncol=min(len(labels), 6))
    fig.suptitle(f"{run.name}: fine-tuning per fold ({len(run.finished_folds)}/{run.n_folds or '?'} folds finished)")
    return _save(fig, path)


def _two_classes(y: np.ndarray) -> bool:
    return bool(y.size) and 0 < int(y.sum()) < y.size


def plot_roc_pr(run: RunData, path: Path) -> Path | None:
    from sklearn.metrics import precision_recall_curve, roc_curve

    oof = run.oof
    if oof is None:
        return None
    y, p = oof["target"].to_numpy().astype(int), oof["prob"].to_numpy().astype(float)
    if not _two_classes(y):
        run.missing.append("ROC/PR curves: oof.csv holds a single class")
        return None
    m = binary_metrics(y, p)
    fig = Figure(figsize=(11, 4.8), layout="constrained")
    ax_roc, ax_pr = fig.subplots(1, 2)
    colors = _fold_colors(int(oof["fold"].max()) + 1)
    for k, part in oof.groupby("fold"):
        yk, pk = part["target"].to_numpy().astype(int), part["prob"].to_numpy().astype(float)
        if _two_classes(yk):
            fpr, tpr, _ = roc_curve(yk, pk)
            auc_k = binary_metrics(yk, pk)["auc"]
            ax_roc.plot(fpr, tpr, color=colors[int(k)], lw=1, alpha=0.6, label=f"fold {k} (AUC {auc_k:.3f})")
    fpr, tpr, _ = roc_curve(y, p)
    ax_roc.plot(fpr, tpr, color="black", lw=2.2, label=f"pooled OOF (AUC {m['auc']:.3f})")
    ax_roc.plot([0, 1], [0, 1], ls="--", color="grey", lw=1, label="chance (AUC 0.5)")
    ax_roc.set_xlabel("false positive rate (real predicted fake)")
    ax_roc.set_ylabel("true positive rate (fake detected)")
    ax_roc.set_title("ROC, out-of-fold")
    precision, recall, _ = precision_recall_curve(y, p)
    ax_pr.step(*_pr_steps(precision, recall), where="pre", color="black", lw=2.2,
               label=f"pooled OOF (AP {m['ap']:.3f})")
    t = _threshold(run)
    if t is not None:
        at = binary_metrics(y, p, threshold=t)
        ax_roc.plot([1.0 - _specificity(y, p, t)], [at["recall"]], "o", ms=9, color=THRESHOLD_COLOR,
                    markeredgecolor="black", label=f"threshold {t:.4f}")
        ax_pr.plot([at["recall"]], [at["precision"]], "o", ms=9, color=THRESHOLD_COLOR, markeredgecolor="black",
                   label=f"threshold {t:.4f} (F1 {at['f1']:.3f})")
    prevalence = float(y.mean())
    ax_pr.axhline(prevalence, ls="--", color="grey", lw=1, label=f"chance (fake share {prevalence:.2f})")
    ax_pr.set_xlabel("recall (fake detected)")
    ax_pr.set_ylabel("precision (predicted fake that are fake)")
    ax_pr.set_title("Precision-recall, out-of-fold (positive = fake)")
    for ax in (ax_roc, ax_pr):
        ax.set_xlim(-0.01, 1.01)
        ax.set_ylim(-0.01, 1.01)
        ax.grid(alpha=0.3)
        ax.legend(loc="lower right" if ax is ax_roc else "lower left", fontsize=8)
    fig.suptitle(f"{run.name}: OOF diagnostics (n = {len(y)})")
    return _save(fig, path)


def _pr_steps(precision: np.ndarray, recall: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The PR staircase that AP = sum (R_n - R_n-1) P_n integrates: increasing recall, each recall at
    the precision where it is first reached, held back to the previous recall (sklearn's closing
    (recall 0, precision 1) point dropped)."""
    r, p = recall[::-1][1:], precision[::-1][1:]
    _, first = np.unique(r, return_index=True)
    r, p = r[first], p[first]
    return np.r_[0.0, r], np.r_[p[:1], p]


def _specificity(y: np.ndarray, p: np.ndarray, t: float) -> float:
    real = y == 0
    return float(np.mean(p[real] < t)) if real.any() else math.nan


def _threshold(run: RunData) -> float | None:
    if run.threshold is None:
        return None
    try:
        value = float(run.threshold["threshold"])
    except (KeyError, TypeError, ValueError):
        return None
    return value if math.isfinite(value) else None


def plot_confusion(run: RunData, path: Path) -> Path | None:
    t = _threshold(run)
    if run.oof is None or t is None:
        return None
    y = run.oof["target"].to_numpy().astype(int)
    pred = (run.oof["prob"].to_numpy().astype(float) >= t).astype(int)
    counts = np.array([[np.sum((y == a) & (pred == b)) for b in (0, 1)] for a in (0, 1)])
    fig = Figure(figsize=(5.2, 4.6), layout="constrained")
    ax = fig.subplots()
    shares = counts / np.maximum(counts.sum(axis=1, keepdims=True), 1)
    ax.imshow(shares, cmap="Blues", vmin=0, vmax=1)
    for a in (0, 1):
        for b in (0, 1):
            color = "white" if shares[a, b] > 0.6 else "black"
            ax.text(b, a, f"{counts[a, b]}\n({shares[a, b]:.0%} of row)", ha="center", va="center", color=color,
                    fontsize=11)
    ax.set_xticks([0, 1], ["real (0)", "fake (1)"])
    ax.set_yticks([0, 1], ["real (0)", "fake (1)"])
    ax.set_xlabel("predicted")
    ax.set_ylabel("true label")
    ax.set_title(f"OOF confusion matrix at threshold {t:.4f}\n(prob >= threshold -> fake; n = {len(y)})")
    return _save(fig, path)


def plot_oof_hist(run: RunData, path: Path) -> Path | None:
    if run.oof is None:
        return None
    t = _threshold(run)
    y = run.oof["target"].to_numpy().astype(int)
    p = run.oof["prob"].to_numpy().astype(float)
    bins = np.linspace(0.0, 1.0, 41)
    fig = Figure(figsize=(8, 4.4), layout="constrained")
    ax = fig.subplots()
    for label, name, color in ((0, "real", REAL_COLOR), (1, "fake", FAKE_COLOR)):
        values = p[y == label]
        ax.hist(values, bins=bins, alpha=0.55, color=color, edgecolor=color, label=f"{name} (n = {values.size})")
    if t is not None:
        ax.axvline(t, color=THRESHOLD_COLOR, lw=2, ls="--", label=f"threshold {t:.4f}")
    ax.set_xlim(0, 1)
    ax.set_xlabel("predicted P(fake), out-of-fold")
    ax.set_ylabel("images per bin (bin width 0.025)")
    ax.set_title(f"{run.name}: OOF score distribution per true class")
    ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    ax.legend()
    ax.grid(alpha=0.3)
    return _save(fig, path)


def plot_test_hist(run: RunData, path: Path) -> Path | None:
    if run.test_probs is None:
        return None
    t = _threshold(run)
    p = run.test_probs["prob"].to_numpy().astype(float)
    p = p[np.isfinite(p)]
    fig = Figure(figsize=(8, 4.4), layout="constrained")
    ax = fig.subplots()
    ax.hist(p, bins=np.linspace(0.0, 1.0, 41), color="#8c564b", alpha=0.7, edgecolor="#8c564b",
            label=f"test images (n = {p.size})")
    if t is not None:
        share = float(np.mean(p >= t)) if p.size else 0.0
        ax.axvline(t, color=THRESHOLD_COLOR, lw=2, ls="--", label=f"threshold {t:.4f}: {share:.0%} predicted fake")
    ax.set_xlim(0, 1)
    ax.set_xlabel("predicted P(fake), fold ensemble with TTA")
    ax.set_ylabel("images per bin (bin width 0.025)")
    ax.set_title(f"{run.name}: test probabilities (test_probs.csv)")
    ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    ax.legend()
    ax.grid(alpha=0.3)
    return _save(fig, path)


# ----------------------------------------------------------------------------- report


def key_figures(run: RunData) -> dict[str, Any]:
    """The headline numbers: OOF metrics at the chosen threshold, folds finished, SSL final loss."""
    out: dict[str, Any] = {
        "folds finished": f"{len(run.finished_folds)}/{run.n_folds if run.n_folds else '?'}",
        "SSL epochs": f"{len(run.ssl_rows)}/{run.ssl_planned or '?'}" + (" (finished)" if run.ssl_done else ""),
    }
    if run.ssl_rows and isinstance(run.ssl_rows[-1].get("train_loss"), (int, float)):
        out["SSL final loss"] = float(run.ssl_rows[-1]["train_loss"])
    t = _threshold(run)
    if t is not None:
        out["threshold"] = t
    if run.oof is not None and len(run.oof):
        y = run.oof["target"].to_numpy().astype(int)
        m = binary_metrics(y, run.oof["prob"].to_numpy().astype(float), threshold=t if t is not None else 0.5)
        suffix = "" if t is not None else " (at 0.5: no threshold.json)"
        for key, label in (("f1", "OOF F1"), ("auc", "OOF AUC"), ("logloss", "OOF log-loss"), ("acc", "OOF accuracy"),
                           ("ap", "OOF AP"), ("eer", "OOF EER")):
            out[label + suffix] = m[key]
        out["OOF images"] = int(m["n"])
    if run.test_probs is not None:
        out["test images"] = len(run.test_probs)
    return out


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return "n/a" if math.isnan(value) else f"{value:.4f}"
    return html.escape(str(value))


def _fold_table(run: RunData) -> str:
    if not run.folds:
        return "<p>No fold has started.</p>"
    metric = run.select_metric
    head = ("<tr><th>fold</th><th>status</th><th>epochs</th><th>best epoch</th>"
            f"<th>{html.escape(metric)} at best</th><th>val F1 at best</th><th>val loss at best</th></tr>")
    rows = []
    for f in run.folds:
        status = "finished" if f.done else ("running / stopped" if f.rows else "not started")
        best = f.best_row()
        cells = [
            str(f.k), status, f"{len(f.rows)}/{f.planned_epochs or '?'}",
            str(f.best_epoch + 1) if f.best_epoch is not None else "-",
            _fmt(best.get(metric)) if best else "-", _fmt(best.get("val_f1")) if best else "-",
            _fmt(best.get("val_loss")) if best else "-",
        ]
        rows.append("<tr>" + "".join(f"<td>{c}</td>" for c in cells) + "</tr>")
    return f"<table>{head}{''.join(rows)}</table><p class='note'>Epochs are counted from 1.</p>"


_CAPTIONS = {
    "ssl.png": "Self-supervised pretraining: loss and learning rate per epoch.",
    "folds.png": "Fine-tuning: one line per fold; the star marks the epoch whose weights were kept.",
    "roc_pr.png": "Pooled out-of-fold ROC and precision-recall curves.",
    "confusion.png": "Out-of-fold confusion matrix at the chosen threshold.",
    "oof_hist.png": "Out-of-fold probabilities per true class, with the threshold.",
    "test_hist.png": "Test-set probabilities (test_probs.csv), with the threshold.",
}


def write_report(run: RunData, out_dir: Path, figures: list[Path]) -> Path:
    figures_html = "".join(
        f"<figure><img src='{html.escape(p.name)}' alt='{html.escape(p.stem)}'>"
        f"<figcaption>{html.escape(_CAPTIONS.get(p.name, p.name))}</figcaption></figure>"
        for p in figures
    )
    key = "".join(f"<tr><th>{html.escape(k)}</th><td>{_fmt(v)}</td></tr>" for k, v in key_figures(run).items())
    missing = (
        "<ul>" + "".join(f"<li>{html.escape(m)}</li>" for m in run.missing) + "</ul>"
        if run.missing else "<p>Nothing missing: every stage's outputs are present.</p>"
    )
    method = html.escape(str((run.threshold or {}).get("method", "")))
    page = f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>Run {html.escape(run.name)}</title>
<style>
body {{ font-family: sans-serif; margin: 2em; max-width: 1250px; color: #222; }}
table {{ border-collapse: collapse; margin: 0.5em 0 1em; }}
th, td {{ border: 1px solid #ccc; padding: 0.3em 0.7em; text-align: left; }}
th {{ background: #f3f3f3; }}
figure {{ margin: 1.5em 0; }} img {{ max-width: 100%; border: 1px solid #ddd; }}
.note {{ color: #666; font-size: 0.9em; }}
</style></head><body>
<h1>Run {html.escape(run.name)}</h1>
<p class="note">{html.escape(str(run.root))} &middot; generated {time.strftime("%Y-%m-%d %H:%M:%S")}</p>
<h2>Key figures</h2><table>{key}</table>
<p class="note">{method}</p>
<h2>Folds</h2>{_fold_table(run)}
<h2>Missing or incomplete</h2>{missing}
<h2>Figures</h2>{figures_html or "<p>No figure could be drawn yet.</p>"}
</body></html>
"""
    path = out_dir / "report.html"
    atomic_write_text(path, page)
    return path


@dataclass
class PlotResult:
    out_dir: Path
    figures: list[Path]
    report: Path
    missing: list[str]

    def summary(self) -> str:
        names = ", ".join(p.name for p in self.figures) or "none"
        gaps = f"; missing: {len(self.missing)} item(s), see the report" if self.missing else ""
        return f"plots: {len(self.figures)} figure(s) ({names}) and {self.report}{gaps}"


def make_plots(run_dir: str | Path, out_dir: str | Path | None = None) -> PlotResult:
    """Draw every figure the run's files allow into ``out_dir`` (default ``<run>/plots``) + report.html."""
    run = load_run(run_dir)
    out = Path(out_dir) if out_dir is not None else run.root / "plots"
    out.mkdir(parents=True, exist_ok=True)
    makers = {
        "ssl.png": plot_ssl, "folds.png": plot_folds, "roc_pr.png": plot_roc_pr,
        "confusion.png": plot_confusion, "oof_hist.png": plot_oof_hist, "test_hist.png": plot_test_hist,
    }
    figures = []
    for name, maker in makers.items():
        path = maker(run, out / name)
        if path is not None:
            figures.append(path)
        elif (out / name).exists():
            (out / name).unlink()  # drawn from files that are gone now (e.g. oof.csv after --force)
    report = write_report(run, out, figures)
    return PlotResult(out, figures, report, list(run.missing))
