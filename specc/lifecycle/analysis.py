"""What `specc plan` learns from the local model and data: model check and dataset analysis.

Only for what is here: a model directory or data file that is not on this machine is reported as
such (with what *is* there), never guessed at. `builtin:` models and data resolve (and are built on
first use) exactly as `specc run` resolves them. The tokenizer is the model's own, so lengths,
truncation, windows and packing are what training will see.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from specc.errors import UserError
from specc.estimate.result import RunFacts

PADDING_WASTE = 0.5        # warn when more than half of each batch is padding
TRUNCATED_TOKENS = 0.5     # warn when most tokens are cut off


@dataclass
class ModelReport:
    path: str
    resolved: Path | None
    ok: bool
    problem: str = ""
    hint: str = ""
    params: int | None = None
    arch: dict = field(default_factory=dict)
    available: list[str] = field(default_factory=list)


def _candidates(parent: Path, limit: int = 20) -> list[str]:
    """Model directories (those with a config.json) under a directory."""
    try:
        return sorted(p.name for p in parent.iterdir() if p.is_dir() and (p / "config.json").is_file())[:limit]
    except OSError:
        return []


def check_model(path: str) -> ModelReport:
    from specc.model_check import check_model_dir, param_count

    try:
        if path.startswith("builtin:"):
            from specc.data.sources import resolve_model_path

            resolved = resolve_model_path(path)
        else:
            resolved = Path(path)
        config = check_model_dir(resolved)
    except (UserError, ValueError) as exc:
        parent = Path(path).parent if not path.startswith("builtin:") else None
        return ModelReport(path, None, False, getattr(exc, "message", str(exc)), getattr(exc, "hint", "") or "",
                           available=_candidates(parent) if parent and parent.is_dir() else [])
    arch = {k: config.get(k) for k in ("hidden_size", "num_hidden_layers", "num_attention_heads", "vocab_size",
                                       "intermediate_size", "max_position_embeddings", "num_key_value_heads",
                                       "head_dim", "tie_word_embeddings") if k in config}
    return ModelReport(path, resolved, True, params=param_count(config), arch=arch)


@dataclass
class DataAnalysis:
    key: tuple
    runs: list[str]
    splits: dict[str, int]                  # split → samples
    report: object | None                   # TokenizationReport of train
    truncated_token_share: float | None     # tokens cut off by max_length (stride null)
    packing_efficiency: float | None
    batches_per_epoch: int | None
    steps: int | None
    steps_source: str
    tokens_per_epoch: int | None
    tokens: float | None                    # what the run feeds in total
    eval_batches: int | None
    warnings: list[str]
    problem: str = ""


def _data_paths(config: dict) -> dict[str, Path | None]:
    from specc.engine.config import from_dict
    from specc.engine.prepare import resolve_data_paths

    return resolve_data_paths(from_dict(config, "plan"))


_TOKENIZED: dict = {}


def analyze_data(config: dict, model_dir: Path) -> DataAnalysis:
    """Tokenize the run's data with the model's tokenizer and size the run as prepare_data will."""
    d, t = config["data"], config["training"]
    key = (str(model_dir), d.get("train"), d.get("valid"), d.get("test"), d["format"], d["max_length"], d.get("stride"),
           d.get("packing", True), t["batch_size"], t["grad_accum"], t.get("max_steps"), t.get("epochs"),
           t.get("seed"), t.get("eval_examples"))
    if key not in _ANALYSED:   # a sweep's runs mostly share their data and batching
        _ANALYSED[key] = _analyze(config, model_dir, key)
    return _ANALYSED[key]


_ANALYSED: dict = {}


def clear_caches() -> None:
    """Forget tokenized data (one `specc plan` reuses it across a sweep's runs; the next one starts afresh)."""
    _ANALYSED.clear()
    _TOKENIZED.clear()


def _analyze(config: dict, model_dir: Path, key: tuple) -> DataAnalysis:
    from specc.data.batches import BatchPlan, eval_batches, eval_example_indices
    from specc.data.jsonl import load_dataset
    from specc.data.sources import load_tokenizer
    from specc.data.tokenize import pad_token_id, tokenize_split

    d, t = config["data"], config["training"]
    try:
        paths = _data_paths(config)
        missing = [f"{s}: {p}" for s, p in paths.items() if p is not None and not Path(p).is_file()]
        if missing:
            return DataAnalysis(key, [], {}, None, None, None, None, None, "", None, None, None, [],
                                problem="not on this machine: " + "; ".join(missing))
        stats = tuple(sorted((k, str(v), Path(v).stat().st_mtime_ns, Path(v).stat().st_size)
                             for k, v in paths.items() if v is not None))
        tok_key = (str(model_dir), stats, d["format"], d["max_length"], d.get("stride"))
        if tok_key not in _TOKENIZED:
            tokenizer = load_tokenizer(model_dir)
            examples, dataset = load_dataset(paths, d["format"])
            seqs, report = tokenize_split(tokenizer, examples["train"], d["format"], d["max_length"], d.get("stride"))
            lost = None
            if report.n_truncated:
                _, full = tokenize_split(tokenizer, examples["train"], d["format"], max(report.length_max, 2), None)
                lost = 1 - report.n_unique_tokens / full.n_tokens if full.n_tokens else None
            _TOKENIZED[tok_key] = (tokenizer, dataset, seqs, report, lost, examples.get("valid"))
        tokenizer, dataset, seqs, report, lost, valid_examples = _TOKENIZED[tok_key]
    except UserError as exc:
        return DataAnalysis(key, [], {}, None, None, None, None, None, "", None, None, None, [],
                            problem=str(exc))
    pad = pad_token_id(tokenizer)
    plan = BatchPlan(seqs, batch_size=t["batch_size"], max_length=d["max_length"], packing=d.get("packing", True),
                     pad_id=pad, seed=t.get("seed", 0))
    eff = plan.packing_efficiency(0)
    per_epoch = plan.batches_per_epoch(0)
    if t.get("max_steps"):
        steps, source = int(t["max_steps"]), "declared (training.max_steps)"
        tokens = report.n_tokens * steps * t["grad_accum"] / max(per_epoch, 1)   # the steps' share of epochs
    else:
        epochs = float(t["epochs"])
        steps, source = plan.steps_for_epochs(epochs, t["grad_accum"]), plan.steps_source(epochs, t["grad_accum"])
        tokens = report.n_tokens * epochs
    n_eval = None
    if valid_examples:
        chosen = [valid_examples[i] for i in eval_example_indices(len(valid_examples), t.get("eval_examples"))]
        valid_seqs, _ = tokenize_split(tokenizer, chosen, d["format"], d["max_length"], d.get("stride"))
        n_eval = len(eval_batches(valid_seqs, batch_size=t["batch_size"], max_length=d["max_length"],
                                  packing=d.get("packing", True), pad_id=pad))
    warnings = list(report.warnings)
    if lost is not None and lost > TRUNCATED_TOKENS:
        warnings.append(f"{lost:.0%} of the training tokens are cut off at max_length={d['max_length']}: most of the "
                        "data is never trained on. Raise max_length or set a stride.")
    if eff < 1 - PADDING_WASTE:
        warnings.append(f"{1 - eff:.0%} of each batch is padding (packing efficiency {eff:.0%}): most compute is "
                        + ("wasted. Turn packing on (data.packing: true)." if not d.get("packing", True)
                           else "wasted. Lower max_length toward the p90 length."))
    return DataAnalysis(key, [], {s.name: s.n_examples for s in dataset.splits}, report, lost, eff, per_epoch, steps,
                        source, report.n_tokens, tokens, n_eval, warnings)


def facts_from_analysis(config: dict, a: DataAnalysis) -> RunFacts | None:
    if a.problem or a.steps is None:
        return None
    return RunFacts(a.steps, a.steps_source, a.tokens, f"{a.tokens:,.0f} tokens from the tokenized data "
                    f"({a.tokens_per_epoch:,} per epoch)", a.tokens / a.steps if a.steps else None,
                    bool(config["data"].get("valid")), a.eval_batches, a.tokens_per_epoch, exact=True)
