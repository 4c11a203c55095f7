"""PNG plots of an experiment's runs (matplotlib, Agg: no display needed).

- loss.png: train loss (raw, faint; 50-step average, solid) and validation loss (markers) per run, with
  a vertical line where a run was resumed (dotted) or extended (dash-dot): metrics.jsonl's event lines;
- lr.png: the learning rate each step actually used, with the same markers;
- throughput_memory.png: tokens/s (20-step average) and process/GPU memory against training time.
"""
from __future__ import annotations

from pathlib import Path

MAX_LEGEND = 12


def _plt():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    plt.rcParams.update({"figure.dpi": 110, "axes.grid": True, "grid.alpha": 0.3, "axes.spines.top": False,
                         "axes.spines.right": False, "font.size": 10, "legend.fontsize": 8, "legend.frameon": False})
    return plt


def _avg(values: list[float], window: int) -> list[float]:
    """Centred moving average (no lag: a fast-falling loss is drawn where it is), narrower at the ends."""
    half = max(0, window // 2)
    prefix = [0.0]
    for v in values:
        prefix.append(prefix[-1] + v)
    out = []
    for i in range(len(values)):
        k = min(half, i, len(values) - 1 - i)
        out.append((prefix[i + k + 1] - prefix[i - k]) / (2 * k + 1))
    return out


def _colors(n: int):
    plt = _plt()
    cmap = plt.get_cmap("tab10" if n <= 10 else "tab20")
    return [cmap(i % cmap.N) for i in range(n)]


STYLES = ("-", "--", "-.", ":")


def _style(i: int) -> dict:
    """Runs with identical curves (same schedule, same memory) stay visible: dashes and widths differ."""
    return {"linestyle": STYLES[i % len(STYLES)], "linewidth": 2.2 - 0.3 * (i % len(STYLES))}


def _legend(ax, n: int) -> None:
    if n == 0:
        return
    if n <= MAX_LEGEND:
        ax.legend(loc="best")
    else:
        ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), ncol=1 + n // 25)


def _runs_with(runs: list, key: str) -> list:
    """The runs with at least one numeric `key` in their metrics lines."""
    return [r for r in runs if any(isinstance(x.get(key), (int, float)) for x in r.records)]


def _save(fig, path: Path, tight: bool = True) -> Path:
    if tight:
        fig.tight_layout()
    fig.savefig(path, bbox_inches="tight")
    _plt().close(fig)
    return path


def _steps(records):
    return [r for r in records if isinstance(r.get("loss"), (int, float)) and "step" in r]


# metrics.jsonl event → how its marker is drawn and named in the legend
MARKED_EVENTS = {"resumed": (":", "resumed (from a checkpoint)"), "extended": ("-.", "extended (more steps)"),
                 "init_from": ("--", "initialised from another run")}


def restart_markers(records: list[dict]) -> list[tuple[int, str]]:
    """(step, event) where the run was resumed, extended or re-initialised, from metrics.jsonl's event lines.
    An init_from at step 0 is where the run begins anyway: not marked."""
    out = []
    for r in records:
        event, step = r.get("event"), r.get("step")
        if event in MARKED_EVENTS and isinstance(step, (int, float)) and not (event == "init_from" and step == 0):
            out.append((int(step), event))
    return out


def draw_markers(ax, runs: list, colors) -> list[tuple[str, int, str]]:
    """Vertical lines at every run's restart points, one legend entry per kind; returns (run, step, event)."""
    drawn, labelled = [], set()
    for run, color in zip(runs, colors):
        for step, event in restart_markers(run.records):
            style, label = MARKED_EVENTS[event]
            ax.axvline(step, color=color, linestyle=style, linewidth=1.1, alpha=0.8, label="_nolegend_")
            if event not in labelled:   # the legend names the kind, in grey: the line's colour is its run's
                ax.plot([], [], color="0.35", linestyle=style, linewidth=1.1, label=label)
                labelled.add(event)
            drawn.append((run.name, step, event))
    return drawn


def loss_figure(runs: list, title: str):
    """The loss figure (fig, (train axes, validation axes), markers drawn), or None without data."""
    runs = [r for r in runs if _steps(r.records) or any("val_loss" in x for x in r.records)]
    if not runs:
        return None
    plt = _plt()
    fig, (ax_t, ax_v) = plt.subplots(1, 2, figsize=(12, 4.5), sharey=False)
    colors = _colors(len(runs))
    for i, (run, color) in enumerate(zip(runs, colors)):
        steps = _steps(run.records)
        if steps:
            xs, ys = [s["step"] for s in steps], [s["loss"] for s in steps]
            if len(xs) > 1:
                ax_t.plot(xs, ys, color=color, alpha=0.18, linewidth=0.8)
            ax_t.plot(xs, _avg(ys, max(1, min(51, len(ys) // 15))), color=color, label=run.name, **_style(i))
        vals = [(r["step"], r["val_loss"]) for r in run.records if isinstance(r.get("val_loss"), (int, float))]
        if vals:
            ax_v.plot(*zip(*vals), color=color, marker="o", markersize=3.5, label=run.name, **_style(i))
            best = min(vals, key=lambda v: v[1])
            ax_v.scatter([best[0]], [best[1]], s=70, facecolors="none", edgecolors=color, linewidths=1.5, zorder=3)
    markers = draw_markers(ax_t, runs, colors)
    draw_markers(ax_v, runs, colors)
    ax_t.set(title="Train loss (faint: per step; solid: centred moving average)", xlabel="step", ylabel="loss (nats/token)")
    ax_v.set(title="Validation loss (circle: best)", xlabel="step", ylabel="val loss (nats/token)")
    for ax, label in ((ax_t, "loss"), (ax_v, "val loss")):
        lo, hi = ax.dataLim.y0, ax.dataLim.y1
        if ax.has_data() and lo > 0 and hi / lo > 20:   # a loss that falls by orders of magnitude
            from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

            ax.set_yscale("log")
            ax.yaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
            ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
            ax.yaxis.set_minor_formatter(NullFormatter())
            ax.set_ylabel(f"{label} (nats/token, log scale)")
    kinds = len({event for _, _, event in markers})
    _legend(ax_t, len(runs) + kinds)
    if len(runs) <= MAX_LEGEND and ax_v.has_data():
        ax_v.legend(loc="best")
    fig.suptitle(title, fontsize=12)
    fig.tight_layout()
    return fig, (ax_t, ax_v), markers


def plot_loss(runs: list, path: Path, title: str) -> Path | None:
    """runs: objects with .name and .records (metrics.jsonl lines)."""
    made = loss_figure(runs, title)
    if made is None:
        return None
    return _save(made[0], path, tight=False)


def plot_lr(runs: list, path: Path, title: str) -> Path | None:
    runs = _runs_with(runs, "lr")
    if not runs:
        return None
    fig, ax = _plt().subplots(figsize=(8, 3.8))
    curves = [[(r["step"], r["lr"]) for r in run.records if isinstance(r.get("lr"), (int, float))] for run in runs]
    if len(runs) > 1 and all(c == curves[0] for c in curves):
        ax.plot(*zip(*curves[0]), color="tab:blue", linewidth=1.8, label=f"all {len(runs)} runs (identical)")
        n = 1
    else:
        for i, (run, color, pts) in enumerate(zip(runs, _colors(len(runs)), curves)):
            ax.plot(*zip(*pts), color=color, label=run.name, **_style(i))
        n = len(runs)
    markers = draw_markers(ax, runs, _colors(len(runs)))
    ax.set(title=f"{title}: learning rate as run", xlabel="step", ylabel="learning rate")
    ax.set_ylim(bottom=0)
    ax.ticklabel_format(axis="y", style="sci", scilimits=(-3, 3))
    _legend(ax, n + len({event for _, _, event in markers}))
    return _save(fig, path)


def plot_throughput_memory(runs: list, path: Path, title: str) -> Path | None:
    runs = _runs_with(runs, "step_s")
    if not runs:
        return None
    fig, (ax_t, ax_m) = _plt().subplots(1, 2, figsize=(12, 4.2))
    any_mem = False
    longest = max(sum(r["step_s"] for r in run.records if isinstance(r.get("step_s"), (int, float))) for run in runs)
    unit, div = ("h", 3600) if longest > 3 * 3600 else ("min", 60) if longest > 180 else ("s", 1)
    for i, (run, color) in enumerate(zip(runs, _colors(len(runs)))):
        steps = [r for r in run.records if isinstance(r.get("step_s"), (int, float)) and r["step_s"] > 0]
        clock, t = [], 0.0
        for r in steps:
            t += r["step_s"]
            clock.append(t / div)
        window = max(1, min(20, len(steps) // 5))
        tok = [r.get("tokens", 0) for r in steps]
        sec = [r["step_s"] for r in steps]
        rate = [sum(tok[max(0, i - window + 1):i + 1]) / sum(sec[max(0, i - window + 1):i + 1]) for i in range(len(steps))]
        ax_t.plot(clock, rate, color=color, label=run.name, **_style(i))
        mem = [(c, r["mem_mb"] / 1024) for c, r in zip(clock, steps) if isinstance(r.get("mem_mb"), (int, float))]
        if mem:
            any_mem = True
            ax_m.plot(*zip(*mem), color=color, label=run.name, **_style(i))
    xlabel = f"training time ({unit}, sum of step times)"
    ax_t.set(title=f"Throughput (moving average over {window} steps)" if len(runs) == 1 else "Throughput (moving average)",
             xlabel=xlabel, ylabel="tokens / s")
    ax_t.set_ylim(bottom=0)
    ax_m.set(title="Memory (GPU allocated, or process RSS on a CPU)", xlabel=xlabel, ylabel="GB")
    if any_mem:
        ax_m.set_ylim(bottom=0)
        _legend(ax_m, len(runs))
    _legend(ax_t, len(runs))
    fig.suptitle(title, fontsize=12)
    return _save(fig, path)


def plot_experiment(runs: list, out_dir: Path, title: str) -> list[Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    made = [plot_loss(runs, out_dir / "loss.png", title), plot_lr(runs, out_dir / "lr.png", title),
            plot_throughput_memory(runs, out_dir / "throughput_memory.png", title)]
    return [p for p in made if p is not None]
