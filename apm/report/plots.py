"""PNG figures of a system's report: DET curves and confusion matrices (matplotlib, Agg)."""

from __future__ import annotations

import os
from collections.abc import Mapping

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from scipy.stats import norm  # noqa: E402

from apm.utils import atomic_path  # noqa: E402

DET_TICKS = [0.001, 0.01, 0.02, 0.05, 0.1, 0.2, 0.4, 0.6, 0.8]
DET_LIMITS = (0.0005, 0.9)


def _save(fig: plt.Figure, path: str | os.PathLike) -> None:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=120, bbox_inches="tight")
    plt.close(fig)


def plot_det(
    curves: Mapping[str, tuple[np.ndarray, np.ndarray]], path: str | os.PathLike, title: str
) -> None:
    """One DET curve per label ({label: (P_fa, P_miss)}) on normal-deviate axes."""
    fig, ax = plt.subplots(figsize=(5.5, 5.5))
    lo, hi = DET_LIMITS
    for label, (p_fa, p_miss) in curves.items():
        ax.plot(norm.ppf(np.clip(p_fa, lo, hi)), norm.ppf(np.clip(p_miss, lo, hi)), label=label)
    ticks = norm.ppf(DET_TICKS)
    labels = [f"{100 * t:g}" for t in DET_TICKS]
    ax.set_xticks(ticks, labels)
    ax.set_yticks(ticks, labels)
    ax.set_xlim(norm.ppf(lo), norm.ppf(hi))
    ax.set_ylim(norm.ppf(lo), norm.ppf(hi))
    ax.plot([norm.ppf(lo), norm.ppf(hi)], [norm.ppf(lo), norm.ppf(hi)], "k:", lw=0.8)
    ax.set_xlabel("false alarm probability (%)")
    ax.set_ylabel("miss probability (%)")
    ax.set_title(title)
    ax.grid(True, alpha=0.3)
    ax.legend(loc="upper right", fontsize=8)
    _save(fig, path)


def plot_confusion(
    rows: list[str], columns: list[str], counts: np.ndarray, path: str | os.PathLike, title: str
) -> None:
    """Row-normalised confusion matrix (true class x predicted language) with counts."""
    counts = np.asarray(counts)
    frac = counts / np.maximum(counts.sum(axis=1, keepdims=True), 1)
    size = 1.2 + 0.55 * max(len(columns), len(rows))
    fig, ax = plt.subplots(figsize=(size + 1, size))
    image = ax.imshow(frac, cmap="Blues", vmin=0, vmax=1)
    for (i, j), n in np.ndenumerate(counts):
        ax.text(j, i, str(n), ha="center", va="center", fontsize=7,
                color="white" if frac[i, j] > 0.5 else "black")  # fmt: skip
    ax.set_xticks(range(len(columns)), columns, rotation=60, ha="right")
    ax.set_yticks(range(len(rows)), rows)
    ax.set_xlabel("predicted language")
    ax.set_ylabel("true language")
    ax.set_title(title)
    fig.colorbar(image, ax=ax, fraction=0.046, label="fraction of the row")
    _save(fig, path)


def plot_margins(
    dist: Mapping[str, Mapping[str, np.ndarray]], path: str | os.PathLike, title: str
) -> None:
    """One box plot panel per task, one box per language."""
    fig, axes = plt.subplots(
        1, len(dist), figsize=(3.2 * len(dist), 3.6), sharey=True, squeeze=False
    )
    for ax, (task, per_lang) in zip(axes[0], dist.items(), strict=True):
        langs = list(per_lang)
        ax.boxplot([per_lang[lang] for lang in langs], showfliers=False)
        ax.set_xticks(range(1, len(langs) + 1), langs, rotation=60, ha="right", fontsize=7)
        ax.set_title(task.removeprefix("task_"))
        ax.grid(True, axis="y", alpha=0.3)
    axes[0][0].set_ylabel("margin m * c_i")
    fig.suptitle(title, y=1.04)
    _save(fig, path)
