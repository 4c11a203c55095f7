"""Bad evaluation input: a clear error before training, or a counted and reported skip; never a lost adapter."""
from __future__ import annotations

import json

import pytest

from tests.evaluate.test_generation import _backend, _quickstart, builtin  # noqa: F401  (fixture)
from tests.test_cli import specc

pytest.importorskip("transformers")


def test_a_custom_scorer_that_does_not_import_stops_the_run_before_training(tmp_path):
    spec = _quickstart(tmp_path, **{"      metric: exact_match\n      normalize: [strip]":
                                    "      metric: custom\n      custom: \"nosuch_scorer:score\"",
                                    "eval.capitalize.exact_match": "eval.capitalize.custom"})
    r = specc("run", str(spec), "--backend", "torch", cwd=tmp_path, env={"OMP_NUM_THREADS": "1"})
    assert r.returncode == 1 and "Traceback" not in r.stderr
    assert "custom scorer 'nosuch_scorer:score' does not import" in r.stderr
    assert not (tmp_path / "runs" / "quickstart" / "main" / "checkpoints").exists()   # nothing trained


def test_a_scorer_that_raises_on_some_examples_keeps_the_others(builtin, tmp_path):
    from specc.evaluate.runner import score_task
    from specc.spec.evaluation import Task

    model, tok, examples, _ = builtin
    (tmp_path / "picky.py").write_text("def score(prediction, reference, example):\n"
                                       "    if reference.startswith(('A', 'B', 'C', 'D')):\n"
                                       "        raise ValueError('cannot judge ' + reference)\n"
                                       "    return 1.0\n")
    task = Task(name="picky", max_new_tokens=4, stop=["\n"], metric="custom", custom="picky:score")
    result = score_task(_backend("torch", model), tok, task, "prompt_completion", examples, adapter="base",
                        context=None, spec_dir=tmp_path)
    bad = [e for e in examples if e["completion"].startswith(("A", "B", "C", "D"))]
    assert bad and len(result.errors) == len(bad) and result.estimate.n == len(examples) - len(bad)
    assert result.estimate.mean == 1.0 and "cannot judge" in result.errors[0]["error"]
    assert result.to_dict()["scorer_errors"] == len(bad)
    assert sum(s["score"] is None for s in result.samples) == len(bad)


def test_prompts_longer_than_the_context_are_skipped_and_counted(builtin):
    from specc.evaluate.runner import score_task
    from specc.spec.evaluation import Task

    from specc.data.tokenize import prompt_token_ids

    model, tok, _, _ = builtin
    examples = [{"prompt": "Capitalize:\n" + " ".join(["river"] * k) + "\n", "completion": "River"} for k in range(1, 9)]
    prompts = prompt_token_ids(tok, [e["prompt"] for e in examples])
    task = Task(name="cap", max_new_tokens=4, stop=["\n"])
    context = sorted(len(p) for p in prompts)[len(prompts) // 2] + 4     # about half the prompts fit
    result = score_task(_backend("torch", model), tok, task, "prompt_completion", examples, adapter="base",
                        context=context)
    too_long = sum(len(p) + 4 > context for p in prompts)
    assert 0 < too_long < len(prompts)
    assert len(result.skipped) == too_long and result.estimate.n == len(prompts) - too_long
    assert "exceeds the model's context" in result.skipped[0]["reason"]
    assert result.to_dict()["skipped"] == too_long


def test_format_text_without_prompt_fields_is_a_spec_error(write_spec, spec_problems):
    issues = spec_problems(write_spec({"data": {"format": "text", "test": "/data/t.jsonl"},
                                       "evaluation": {"tasks": [{"name": "t"}]}}))
    assert any("give prompt_field and reference_field" in i.message for i in issues)
    issues = spec_problems(write_spec({"evaluation": {"tasks": [{"name": "t", "split": "test"}]}}))
    assert any("data.test is not set" in i.message for i in issues)


def test_eval_results_say_which_adapter_and_decoding(tmp_path):
    spec = _quickstart(tmp_path)
    assert specc("run", str(spec), "--backend", "torch", cwd=tmp_path, env={"OMP_NUM_THREADS": "1"}).returncode == 0
    run = tmp_path / "runs" / "quickstart" / "main"
    for adapter, label in (("final", "final (step 40)"), (str(run / "best"), str(run / "best"))):
        r = specc("eval", str(run), "--adapter", adapter, cwd=tmp_path, env={"OMP_NUM_THREADS": "1"})
        assert r.returncode == 0, r.stderr[-2000:]
        result = json.loads((run / "eval" / "capitalize.json").read_text())
        assert result["adapter"] == label and result["decoding"] == {"temperature": 0.0, "top_p": 1.0, "seed": 0}
    r = specc("eval", str(run), "--base", cwd=tmp_path, env={"OMP_NUM_THREADS": "1"})
    assert r.returncode == 0 and (run / "eval" / "base" / "capitalize.json").is_file()
    assert json.loads((run / "summary.json").read_text())["eval_base"]["capitalize"]["adapter"] == "base model"
    r = specc("eval", str(run), "--task", "nosuch", cwd=tmp_path)
    assert r.returncode == 1 and "no task 'nosuch'" in r.stderr


def test_eval_scores_an_adapter_directory_written_for_another_tool(tmp_path):
    """`specc eval --adapter PATH` takes a PEFT directory (here the run's own export) and scores what best/ scores."""
    spec = _quickstart(tmp_path)
    env = {"OMP_NUM_THREADS": "1"}
    assert specc("run", str(spec), "--backend", "torch", cwd=tmp_path, env=env).returncode == 0
    run = tmp_path / "runs" / "quickstart" / "main"
    best = json.loads((run / "eval" / "capitalize.json").read_text())
    r = specc("export", str(run), "--adapter", "best", "--format", "peft", "--out", str(tmp_path / "peft"), cwd=tmp_path,
              env=env)
    assert r.returncode == 0, r.stderr[-2000:]
    r = specc("eval", str(run), "--adapter", str(tmp_path / "peft"), "--backend", "mlx", cwd=tmp_path, env=env)
    assert r.returncode == 0, r.stderr[-2000:]
    again = json.loads((run / "eval" / "capitalize.json").read_text())
    assert again["adapter"] == str(tmp_path / "peft") and again["mean"] == best["mean"]


@pytest.mark.parametrize("backend", ["mlx", "torch"])
def test_a_damaged_adapter_copy_is_refused_not_scored(tmp_path, backend):
    """best/ holds the ecosystem's adapter file and specc's canonical copy; `specc eval` checks they agree
    (an mlx copy once came out scrambled: a wrong adapter scored with no error)."""
    import numpy as np
    from safetensors.numpy import load_file, save_file

    if backend == "mlx":
        pytest.importorskip("mlx.core")
    spec = _quickstart(tmp_path, steps=20)
    r = specc("run", str(spec), "--backend", backend, cwd=tmp_path, env={"OMP_NUM_THREADS": "1"})
    assert r.returncode == 0, r.stderr[-3000:]
    run = tmp_path / "runs" / "quickstart" / "main"
    r = specc("eval", str(run), "--backend", backend, cwd=tmp_path, env={"OMP_NUM_THREADS": "1"})
    assert r.returncode == 0, r.stderr[-3000:]
    copy = run / "best" / "adapter_state.safetensors"
    arrays = load_file(str(copy))
    key = sorted(arrays)[0]
    arrays[key] = np.ascontiguousarray(arrays[key][::-1])      # same shape, other values
    save_file(arrays, str(copy))
    r = specc("eval", str(run), "--backend", backend, cwd=tmp_path, env={"OMP_NUM_THREADS": "1"})
    assert r.returncode == 1 and "Traceback" not in r.stderr, r.stderr[-2000:]
    assert "adapter_state.safetensors and the adapter files beside it disagree" in r.stderr
