"""The report's task scores: runs × task metrics with their 95% intervals (control rows included), the
first wrong answers of each run, and a plot of each task metric against the swept factor."""
from __future__ import annotations

import json
from pathlib import Path

from specc.evaluate.stats import ENTRY_FIELDS
from specc.lifecycle.rundata import RunData

WRONG_SHOWN = 3


def task_metrics(runs: list[RunData]) -> list[tuple[str, str]]:
    """(task, metric) pairs any run scored, in the order the runs list them."""
    seen: dict[tuple[str, str], None] = {}
    for run in runs:
        for task, entry in ((run.summary or {}).get("eval") or {}).items():
            metric = next((k for k in entry if k not in ENTRY_FIELDS), None)
            if metric:
                seen[(task, metric)] = None
    return list(seen)


def score_text(run: RunData, task: str, metric: str, percent: bool = True) -> str:
    entry = ((run.summary or {}).get("eval") or {}).get(task) or {}
    mean, ci, n = entry.get(metric), entry.get("ci95") or [None, None], entry.get("n")
    if mean is None:
        return "—"
    scale, unit = (100, "%") if percent else (1, "")
    text = f"{mean * scale:.1f}{unit}"
    if ci[0] is not None and ci[1] is not None:
        text += f" [{ci[0] * scale:.1f}, {ci[1] * scale:.1f}]"
    return text + (f" n={n}" if n is not None else "")


def task_rows(runs: list[RunData]) -> tuple[list[str], list[list[str]]]:
    """Header and rows of the task table: controls first, then the training runs."""
    pairs = task_metrics(runs)
    header = ["run", "kind", *(f"eval.{t}.{m}" for t, m in pairs)]
    ordered = [r for r in runs if r.kind == "control"] + [r for r in runs if r.kind != "control"]
    rows = [[r.name, r.kind, *(score_text(r, t, m) for t, m in pairs)] for r in ordered
            if (r.summary or {}).get("eval")]
    return header, rows


def wrong_answers(run: RunData, task: str, limit: int = WRONG_SHOWN) -> list[dict]:
    path = run.dir / "eval" / f"{task}.samples.jsonl"
    out = []
    try:
        for line in path.read_text(encoding="utf-8").splitlines():
            sample = json.loads(line)
            if sample.get("score") is not None and sample["score"] < 1:
                out.append(sample)
                if len(out) >= limit:
                    break
    except (OSError, ValueError):
        return []
    return out


def task_markdown(runs: list[RunData]) -> list[str]:
    header, rows = task_rows(runs)
    if not rows:
        return []
    lines = ["## Task scores", "", "Mean score in %, with its 95% interval and the number of examples scored; "
             "control runs are the base model, untrained, on the same prompts.", "",
             "| " + " | ".join(header) + " |", "|---" * len(header) + "|"]
    lines += ["| " + " | ".join(f"`{c}`" if i == 0 else c for i, c in enumerate(row)) + " |" for row in rows]
    wrong = [(r, t, wrong_answers(r, t)) for r in runs for t, _ in task_metrics([r])]
    wrong = [(r, t, w) for r, t, w in wrong if w]
    if wrong:
        lines += ["", "### First wrong answers", ""]
        for run, task, samples in wrong:
            lines.append(f"`{run.name}`, task `{task}` (all in `{run.name}/eval/{task}.samples.jsonl`):")
            lines.append("")
            for s in samples:
                lines.append(f"- line {s['index'] + 1}: expected `{_inline(s['reference'])}`, got "
                             f"`{_inline(s['prediction'])}`")
            lines.append("")
    return lines + [""]


def _inline(text: str) -> str:
    return text.replace("`", "'").replace("\n", "⏎")[:120]


def swept_factor(runs: list[RunData]) -> str | None:
    """The first sweep axis whose value differs between the training runs."""
    points = [(r.config.get("sweep_point") or {}) for r in runs if r.kind == "train"]
    for key in (points[0] if points else {}):
        if len({json.dumps(p.get(key), sort_keys=True) for p in points}) > 1:
            return key
    return None


def plot_task_metrics(runs: list[RunData], out_dir: Path, experiment: str) -> list[Path]:
    """One plot per task metric: each training run's score with its 95% interval, against the swept factor
    (or by run), the control run as a horizontal band."""
    pairs = task_metrics(runs)
    if not pairs:
        return []
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    factor = swept_factor(runs)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for task, metric in pairs:
        fig, ax = plt.subplots(figsize=(6.4, 4.0))
        trained = [r for r in runs if r.kind == "train" and ((r.summary or {}).get("eval") or {}).get(task)]
        labels = [_factor_label((r.config.get("sweep_point") or {}).get(factor)) if factor else r.name for r in trained]
        for i, r in enumerate(trained):
            entry = r.summary["eval"][task]
            mean, ci = entry.get(metric), entry.get("ci95") or [None, None]
            if mean is None:
                continue
            err = [[max(0.0, mean - ci[0])], [max(0.0, ci[1] - mean)]] if None not in ci else None
            ax.errorbar([i], [mean], yerr=err, fmt="o", capsize=4, color="C0", label="adapter" if i == 0 else None)
        for k, c in enumerate(r for r in runs if r.kind == "control"):
            entry = ((c.summary or {}).get("eval") or {}).get(task) or {}
            if entry.get(metric) is not None:
                ax.axhline(entry[metric], color=f"C{k + 1}", linestyle="--", label=f"control {c.name}")
                lo, hi = entry.get("ci95") or [None, None]
                if lo is not None and hi is not None:
                    ax.axhspan(lo, hi, color=f"C{k + 1}", alpha=0.15)
        ax.set_xticks(range(len(trained)), labels, rotation=30 if len(trained) > 4 else 0)
        ax.set_xlabel(factor or "run")
        ax.set_ylabel(f"{metric} ({task})")
        ax.set_title(f"{experiment}: eval.{task}.{metric} (95% intervals)")
        ax.legend(loc="best")
        fig.tight_layout()
        path = out_dir / f"eval_{task}_{metric}.png"
        fig.savefig(path, dpi=100)
        plt.close(fig)
        paths.append(path)
    return paths


def _factor_label(value) -> str:
    if isinstance(value, dict):
        return ", ".join(f"{k}={v}" for k, v in list(value.items())[:2])
    return str(value)
