"""Results tables (Markdown, CSV) and plots (PNG) of an experiment.

Every table carries what the numbers stand on: the data (name, clips per split), the weights
behind the features (random weights and generated features are called out), the input level
(per-second or clip-level features, and so what the sample level masks and the partial-observation
columns drop), the number of seeds, the model-selection rule with the training budget and early
stopping, whether the methods were tuned, and marks which differences are within seed noise: per
column the best mean is in bold, and ``≈`` marks each method whose mean is within one standard
deviation of it (best − mean ≤ the larger of the two sample stds over seeds).
"""

from __future__ import annotations

import csv
import textwrap
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (after choosing the headless backend)
from matplotlib.ticker import MaxNLocator  # noqa: E402
import numpy as np  # noqa: E402

from hscmae.config import LOSS_TERMS, ExperimentConfig  # noqa: E402
from hscmae.synthetic import is_synthetic  # noqa: E402
from pipeline.features.shards import uses_random_weights, weights_summary  # noqa: E402
from pipeline.vocab import MODALITIES, SPLITS  # noqa: E402

SELECTION_RULE = ("model selection: the epoch (linear CCA: the ridge) with the best mean mAP on val; "
                  "test is evaluated once, on the selected model")
NO_TUNING = "tuning: none (each method's default recipe)"
TABLE_COLUMNS = (
    ("a2v_map", "A→V mAP"), ("v2a_map", "V→A mAP"), ("mean_map", "mean mAP"),
    ("cca_a2v_map", "A→V mAP +CCA"), ("cca_v2a_map", "V→A mAP +CCA"), ("cca_mean_map", "mean mAP +CCA"),
    ("drop30_mean_map", "mean mAP, 30 % s dropped"), ("drop50_mean_map", "mean mAP, 50 % s dropped"),
    ("drop30_cca_mean_map", "+CCA, 30 % s dropped"), ("drop50_cca_mean_map", "+CCA, 50 % s dropped"),
    ("mean_p@1", "P@1"), ("mean_p@5", "P@5"), ("mean_p@10", "P@10"),
)
BEST, WITHIN_NOISE = "best", "within_std"
NOISE_LEGEND = ("**bold**: best mean in the column; ≈: within one standard deviation of the best "
                "(best − mean ≤ the larger of the two sample stds over seeds), i.e. not told apart from it by "
                "these seeds; with one seed only exact ties are marked. ")
# What the partial-observation columns drop, by input level (see hscmae.evaluate.evaluate_partial)
DROPPED = {"per-second": ("s", "\"30 % s dropped\": each test clip re-embedded with 30 % of its valid seconds "
                                "turned off, per modality (at least one kept)"),
           "clip-level": ("entries", "\"30 % entries dropped\": each test clip re-embedded with 30 % of the entries "
                                     "of its vector set to the training mean, per modality (clip-level features have "
                                     "no seconds to drop)"),
           "mixed": ("", "\"30 % dropped\": each test clip re-embedded with 30 % of its valid seconds turned off "
                         "(per-second modalities) or of the entries of its vector set to the training mean "
                         "(clip-level modalities)")}


def describe_weights(meta: Mapping[str, Any]) -> str:
    """What produced the features, said plainly (random weights and generated features called out)."""
    if is_synthetic(meta):
        return "generated features (no extractor network, no weights): not real audio or video"
    text = weights_summary(meta)
    if uses_random_weights(meta):
        text += " — RANDOM WEIGHTS: features from untrained networks, numbers are not comparable to published ones"
    return text


def data_info(meta: Mapping[str, Any], counts: Mapping[str, int], source: str, seeds: Sequence[int], *,
              clip_level: Sequence[str]) -> dict[str, Any]:
    """The facts every table states: dataset, clips per split, weights, seeds, and the modalities whose
    features are clip-level (``clip_level``: one second in every training clip; see :func:`input_level`)."""
    return {"dataset": str(meta.get("dataset", Path(source).name)), "source": source,
            "clips": {s: int(counts.get(s, 0)) for s in SPLITS}, "weights": describe_weights(meta),
            "random_weights": uses_random_weights(meta), "synthetic": is_synthetic(meta), "seeds": list(seeds),
            "clip_level": list(clip_level)}


def input_level(info: Mapping[str, Any]) -> str:
    """``"per-second"``, ``"clip-level"`` (every modality one vector per clip) or ``"mixed"``."""
    found = set(info["clip_level"])
    return "clip-level" if found == set(MODALITIES) else "mixed" if found else "per-second"


def input_line(info: Mapping[str, Any]) -> str:
    """The header line on the input level: what ``mask_mode="auto"`` masks and what the dropped columns drop."""
    level = input_level(info)
    if level == "per-second":
        return ("input: per-second features; the sample level (mask_mode auto → time) drops whole seconds from "
                "the pooled mean, the \"% s dropped\" columns drop test seconds")
    which = "every modality" if level == "clip-level" else " and ".join(info["clip_level"])
    return (f"input: clip-level features in {which} (one vector per clip, T = 1); the sample level "
            "(mask_mode auto → element) masks entries of the pooled vector, the \"% dropped\" columns "
            "set test entries to the training mean")


def tuning_line(config: ExperimentConfig) -> str:
    """``tuning: none ...`` or ``tuning: tuned on val: N trials per method (Optuna study in <storage>)``."""
    note = config.tuning
    if note is None:
        return NO_TUNING
    return (f"tuning: tuned on val: {note.trials_per_method} trials per method "
            f"(Optuna study in {note.storage})")


def training_line(config: ExperimentConfig) -> str | None:
    """The trainable methods' budget and early stopping, when they share it (else where to find it); ``None``
    without trainable methods."""
    budgets = {(m.train.epochs, m.train.patience) for m in map(config.method_config, config.methods)
               if m.kind == "trainable"}
    if not budgets:
        return None
    if len(budgets) > 1:
        return "training: epochs and early-stopping patience differ per method (config.json)"
    epochs, patience = budgets.pop()
    stopping = (f"stops early after {patience} epochs without a better val mAP" if patience < epochs
                else "no early stopping (patience ≥ epochs)")
    return f"training: at most {epochs} epochs, {stopping}"


def aggregate(runs: Sequence[Mapping[str, Any]]) -> dict[str, dict[str, dict[str, float]]]:
    """``{method: {metric: {"mean", "std", "n"}}}`` over seeds; std is the sample std (0 for one seed)."""
    grouped: dict[str, dict[str, list[float]]] = {}
    for run in runs:
        for name, value in run["metrics"].items():
            grouped.setdefault(run["method"], {}).setdefault(name, []).append(float(value))
    return {method: {name: {"mean": float(np.mean(v)), "std": float(np.std(v, ddof=1)) if len(v) > 1 else 0.0,
                            "n": len(v)} for name, v in metrics.items()}
            for method, metrics in grouped.items()}


def header_lines(info: Mapping[str, Any], config: ExperimentConfig | None = None) -> list[str]:
    """What a results table stands on, one fact per line: data, features, input level, seeds, selection, and
    with the experiment's ``config`` the training budget and whether the methods were tuned."""
    clips = ", ".join(f"{s} {n}" for s, n in info["clips"].items())
    lines = [f"data: {info['dataset']} ({clips} clips; source {info['source']})",
             f"features: {info['weights']}", input_line(info),
             f"seeds: {len(info['seeds'])} ({', '.join(map(str, info['seeds']))}); values are mean ± sample std over "
             "seeds", SELECTION_RULE]
    if config is not None:
        lines += [line for line in (training_line(config), tuning_line(config)) if line is not None]
    return lines


def noise_marks(summary: Mapping[str, Mapping[str, Mapping[str, float]]], metric: str) -> dict[str, str]:
    """``{method: "best" | "within_std" | ""}`` for one metric (higher is better; methods without it omitted).

    ``within_std``: best mean − the method's mean ≤ max(std of the best, std of the method).
    Several methods sharing the best mean are all ``best``.
    """
    stats = {m: s[metric] for m, s in summary.items() if metric in s}
    if not stats:
        return {}
    top = max(v["mean"] for v in stats.values())
    leader = max(stats.values(), key=lambda v: (v["mean"], -v["std"]))
    marks = {}
    for method, v in stats.items():
        gap = top - v["mean"]
        marks[method] = BEST if gap == 0 else WITHIN_NOISE if gap <= max(leader["std"], v["std"]) else ""
    return marks


def _cell(stats: Mapping[str, float] | None, mark: str = "") -> str:
    if stats is None:
        return "—"
    text = f"{stats['mean']:.3f}" + (f" ± {stats['std']:.3f}" if stats["n"] > 1 else "")
    return f"**{text}**" if mark == BEST else f"{text} ≈" if mark == WITHIN_NOISE else text


def markdown_table(summary: Mapping[str, Mapping[str, Mapping[str, float]]], info: Mapping[str, Any],
                   config: ExperimentConfig | None = None) -> str:
    """The results table with its header (:func:`header_lines`) and legend; P@k is the mean of the a2v and v2a
    values; the partial-observation columns say what they drop (seconds or entries, by input level)."""
    marks = {key: noise_marks(summary, key) for key, _ in TABLE_COLUMNS}
    unit, legend = DROPPED[input_level(info)]
    titles = [title.replace(" s dropped", f" {unit} dropped" if unit else " dropped") for _, title in TABLE_COLUMNS]
    lines = [f"> {line}  " for line in header_lines(info, config)]
    lines += ["", "| method | " + " | ".join(titles) + " |", "|---|" + "---:|" * len(TABLE_COLUMNS)]
    for method, stats in summary.items():
        cells = (_cell(stats.get(key), marks[key].get(method, "")) for key, _ in TABLE_COLUMNS)
        lines.append(f"| {method} | " + " | ".join(cells) + " |")
    lines += ["", NOISE_LEGEND + legend]
    return "\n".join(lines) + "\n"


def write_csv(path: Path, summary: Mapping[str, Mapping[str, Mapping[str, float]]], info: Mapping[str, Any]) -> None:
    """One row per method: every metric's mean and std, plus the data, weights and seed columns."""
    names = sorted({name for stats in summary.values() for name in stats})
    marks = {key: noise_marks(summary, key) for key, _ in TABLE_COLUMNS}
    fields = ["method", *(f"{n}_{part}" for n in names for part in ("mean", "std")),
              *(f"{key}_mark" for key in marks), "seeds", "dataset",
              *(f"{s}_clips" for s in SPLITS), "weights", "random_weights"]
    with open(path, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=fields)
        writer.writeheader()
        for method, stats in summary.items():
            row: dict[str, Any] = {"method": method, "seeds": len(info["seeds"]), "dataset": info["dataset"],
                                   "weights": info["weights"], "random_weights": info["random_weights"]}
            row.update({f"{s}_clips": n for s, n in info["clips"].items()})
            for name, value in stats.items():
                row[f"{name}_mean"], row[f"{name}_std"] = value["mean"], value["std"]
            row.update({f"{key}_mark": by_method.get(method, "") for key, by_method in marks.items()})
            writer.writerow(row)


def _by_method(runs: Sequence[Mapping[str, Any]]) -> dict[str, list[Mapping[str, Any]]]:
    grouped: dict[str, list[Mapping[str, Any]]] = {}
    for run in runs:
        grouped.setdefault(run["method"], []).append(run)
    return grouped


def _seeds_note(runs: Sequence[Mapping[str, Any]]) -> str:
    """What the curves average over, said on the figure: ``mean over 3 seeds (0, 1, 2)``."""
    seeds = sorted({int(r["seed"]) for r in runs})
    return f"mean over {len(seeds)} seed{'s' * (len(seeds) != 1)} ({', '.join(map(str, seeds))})"


def _suptitle(fig: plt.Figure, title: str, note: str, width_in: float) -> None:
    """A title wrapped to the figure's width (nothing cut off), with ``note`` on its own line."""
    chars = max(40, int(width_in * 11))
    fig.suptitle("\n".join([*textwrap.wrap(title, chars), note]), fontsize=9)


def mean_over_seeds(curves: Sequence[Sequence[float]]) -> np.ndarray:
    """Per-epoch mean of one curve per seed, ``[longest]``: each epoch averages the seeds that trained it
    (early stopping ends seeds at different epochs)."""
    padded = np.full((len(curves), max(len(c) for c in curves)), np.nan)
    for row, curve in zip(padded, curves):
        row[:len(curve)] = curve
    return np.nanmean(padded, axis=0)


def plot_losses(runs: Sequence[Mapping[str, Any]], path: Path, title: str) -> None:
    """One panel per trained method: each loss term and the weighted total vs epoch (mean over seeds).

    A term has the same colour in every panel; ``total`` (black, dashed, drawn over the terms so a
    one-term method's single term stays visible under it) is the objective actually minimised
    (with learned task weights it includes their terms). One legend, outside the panels.
    """
    trained = {m: rs for m, rs in _by_method(runs).items() if rs[0]["kind"] == "trainable"}
    cols = max(1, min(3, len(trained)))
    rows = max(1, -(-len(trained) // cols))
    width = 4.2 * cols
    fig, axes = plt.subplots(rows, cols, figsize=(width, 3.0 * rows + 0.9), squeeze=False, layout="constrained")
    styles = {term: {"color": f"C{i}", "lw": 2.2} for i, term in enumerate(LOSS_TERMS)}
    styles["total"] = {"color": "black", "lw": 1.2, "ls": "--"}
    shown: dict[str, Any] = {}
    for ax, (method, rs) in zip(axes.flat, trained.items()):
        for term in (*LOSS_TERMS, "total"):
            curves = [[epoch[term] for epoch in r["history"]] for r in rs if term in r["history"][0]]
            if curves:
                mean = mean_over_seeds(curves)
                (shown[term],) = ax.plot(np.arange(1, len(mean) + 1), mean, label=term, **styles[term])
        ax.set_title(method, fontsize=9)
        ax.set(xlabel="epoch", ylabel="loss")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    for ax in list(axes.flat)[len(trained):]:
        ax.axis("off")
    if not trained:
        axes[0, 0].text(0.5, 0.5, "no trainable method in this run", ha="center", va="center")
    else:
        order = [t for t in (*LOSS_TERMS, "total") if t in shown]
        fig.legend([shown[t] for t in order], order, loc="outside lower center", ncols=len(order), fontsize=8)
    _suptitle(fig, title, f"loss curves, {_seeds_note(runs)}", width)
    fig.savefig(path, dpi=110, format="png")
    plt.close(fig)


def plot_pr_curves(runs: Sequence[Mapping[str, Any]], path: Path, title: str) -> None:
    """Interpolated precision-recall curves on test, a2v and v2a, one line per method (mean over seeds).

    Methods differ in colour, line style and marker, and their markers are staggered along the
    curve, so curves that lie on top of each other stay distinguishable; the legend sits below.
    """
    width = 10.5
    fig, axes = plt.subplots(1, 2, figsize=(width, 5.0), sharey=True, layout="constrained")
    lines = ("-", "--", "-.", ":")
    markers = ("o", "s", "^", "v", "D", "x", "+", "*", "<", ">")
    by_method = _by_method(runs)
    for ax, direction in zip(axes, ("a2v", "v2a")):
        for i, (method, rs) in enumerate(by_method.items()):
            recall = np.asarray(rs[0]["curves"][direction]["recall"])
            step = max(len(by_method), len(recall) // 6)
            ax.plot(recall, np.mean([r["curves"][direction]["precision"] for r in rs], axis=0), label=method,
                    color=f"C{i % 10}", ls=lines[i % len(lines)], marker=markers[i % len(markers)],
                    markevery=(i * step // len(by_method), step), markersize=4, lw=1.4, alpha=0.9)
        ax.set(title={"a2v": "audio → visual", "v2a": "visual → audio"}[direction], xlabel="recall",
               ylabel="precision", xlim=(0, 1), ylim=(0, 1))
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside lower center", ncols=min(len(labels), 6), fontsize=8)
    _suptitle(fig, title, f"precision-recall on test, {_seeds_note(runs)}", width)
    fig.savefig(path, dpi=110, format="png")
    plt.close(fig)
