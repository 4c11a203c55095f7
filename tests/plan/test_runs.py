"""The planner: sweep expansion, control runs, naming, profiles and cross-field checks."""
from __future__ import annotations

from pathlib import Path

import pytest

from specc.plan.steps import count_steps
from specc.plan.sweep import run_name
from specc.spec.validate import load_spec

SPECS = Path(__file__).resolve().parents[2] / "specs"

SWEEP = {
    "model": {"path": "/models/1b", "size": "1B", "lora": {"rank": 64, "alpha": 128}},
    "stages": {"test": {"max_steps": 20, "time": "00:10:00"}},
    "sweep": {
        "matrix": {
            "model": [{"path": "/models/1b", "size": "1B"}, {"path": "/models/3b", "size": "3B"}],
            "model.lora.rank": [4, 16],
        },
        "name": "{model.size}_rank{model.lora.rank}",
    },
}


# --- cross-field checks -----------------------------------------------------------------------

def test_warmup_must_be_shorter_than_the_run(write_spec, spec_problems, line_of):
    path = write_spec({"training": {"max_steps": 100, "schedule": {"warmup_steps": 100}}})
    [issue] = spec_problems(path)
    assert issue.path == "training.schedule.warmup_steps"
    assert issue.line == line_of(path.read_text(), "warmup_steps")
    assert "warmup_steps (100) must be < total steps (100" in issue.message


def test_warmup_checked_against_steps_counted_from_epochs(write_spec, spec_problems):
    path = write_spec({"training": {"epochs": 1, "schedule": {"warmup_steps": 30}}, "data": {"samples": 100}},
                      drop=["training.max_steps"])
    [issue] = spec_problems(path)   # 100 samples / batch 4 = 25 steps
    assert "total steps (25" in issue.message


def test_test_stage_must_be_shorter_than_the_full_run(write_spec, spec_problems, line_of):
    path = write_spec({"stages": {"test": {"max_steps": 100, "time": "00:10:00"}}})
    [issue] = spec_problems(path)
    assert issue.path == "stages.test.max_steps"
    text = path.read_text()
    assert issue.line == line_of(text[text.index("stages:"):], "max_steps: 100") + line_of(text, "stages:") - 1
    assert "must be shorter than the full run (100)" in issue.message


@pytest.mark.parametrize("axis", ["model.lora.ranks", "trainig.lr", "nonsense", "model.lora.rank.x", ""])
def test_sweep_axis_must_be_a_field(write_spec, spec_problems, line_of, axis):
    path = write_spec({"sweep": {"matrix": {axis: [1, 2]}, "name": "r{model.lora.rank}"}})
    [issue] = spec_problems(path)
    assert f"sweep axis {axis!r} is not a spec field" in issue.message
    if axis:
        assert issue.line == line_of(path.read_text(), f"{axis}:")


def test_sweep_cannot_vary_the_experiment(write_spec, spec_problems):
    [issue] = spec_problems(write_spec({"sweep": {"matrix": {"experiment": ["a", "b"]}, "name": "{experiment}"}}))
    assert "cannot sweep over 'experiment'" in issue.message


def test_duplicate_run_names_after_expansion(write_spec, spec_problems, line_of):
    path = write_spec({**SWEEP, "sweep": {**SWEEP["sweep"], "name": "{model.size}"}})
    issues = spec_problems(path)
    assert sorted(i.message.split("'")[1] for i in issues) == ["1B", "3B"]
    assert all("produced twice" in i.message and i.path == "sweep.name" for i in issues)
    assert all(i.line == line_of(path.read_text(), "name: '{model.size}'") for i in issues)


def test_naming_template_must_name_fields(write_spec, spec_problems):
    [issue] = spec_problems(write_spec({**SWEEP, "sweep": {**SWEEP["sweep"], "name": "{model.sise}_{model.lora.rank}"}}))
    assert "naming template names 'model.sise'" in issue.message


def test_run_names_must_be_slugs(write_spec, spec_problems):
    sweep = {"matrix": {"model.size": ["a b", "$(touch CANARY)"]}, "name": "{model.size}"}
    issues = spec_problems(write_spec({"sweep": sweep}))
    assert len(issues) == 2 and all("is not a slug" in i.message for i in issues)


def test_bad_sweep_values_are_reported_once_at_their_line(write_spec, spec_problems):
    text = """\
experiment: bad-values
hypothesis: {statement: s}
model: {path: /m, size: 1B}
data: {train: /d, valid: /v}
training: {max_steps: 100}
sweep:
  matrix:
    model:
      - {path: /a, size: 1B, sise: 3}
      - {path: /b, size: 3B}
    model.lora.rank: [4, 0, 8]
    training.lr: [0.1, 2]
  name: "{model.size}_{model.lora.rank}_{training.lr}"
"""
    issues = spec_problems(write_spec(text=text))
    got = {(i.line, i.path) for i in issues}
    assert got == {(9, "model.sise"), (11, "model.lora.rank"), (12, "training.lr")}, issues
    sise = next(i for i in issues if i.path == "model.sise")
    assert sise.col == text.splitlines()[8].index("sise") + 1 and "did you mean 'size'?" in sise.message


# --- sweeps and controls ------------------------------------------------------------------------

def test_sweep_merges_mappings_into_the_model_section(write_spec, plan_spec):
    plan = plan_spec(write_spec(SWEEP))
    assert [r.name for r in plan.runs] == ["1B_rank4", "1B_rank16", "3B_rank4", "3B_rank16"]
    run = plan.runs[2]
    assert (run.spec.model.path, run.spec.model.size, run.spec.model.lora.rank) == ("/models/3b", "3B", 4)
    assert run.spec.model.lora.alpha == 128   # kept from the base spec: the sweep value is merged, not replaced
    assert run.config["sweep_point"] == {"model": {"path": "/models/3b", "size": "3B"}, "model.lora.rank": 4}
    assert [r.index for r in plan.runs] == [0, 1, 2, 3]


def test_control_runs_one_per_distinct_base(write_spec, plan_spec):
    plan = plan_spec(write_spec({**SWEEP, "sweep": {**SWEEP["sweep"], "control": True}}))
    controls = [r for r in plan.runs if r.kind == "control"]
    assert [r.name for r in controls] == ["control_1B", "control_3B"]
    assert [r.spec.model.path for r in controls] == ["/models/1b", "/models/3b"]
    assert all(r.schedule is None and r.test_resources is None and r.steps.steps == 0 for r in controls)
    assert all(r.config["kind"] == "control" for r in controls)
    assert [r.index for r in plan.runs] == list(range(6))


def test_control_runs_need_evaluation_data(write_spec, spec_problems):
    path = write_spec({**SWEEP, "sweep": {**SWEEP["sweep"], "control": True}}, drop=["data.valid"])
    [issue] = spec_problems(path)
    assert "control runs evaluate the base model" in issue.message


def test_seeds_sweep_gives_twelve_plus_two_runs(plan_spec):
    plan = plan_spec(SPECS / "lora-rank-sweep.yaml")
    train = [r for r in plan.runs if r.kind == "train"]
    assert len(train) == 12 and len(plan.runs) == 14
    assert [r.name for r in train[:6]] == [f"1B_rank{r}" for r in (4, 8, 16, 32, 64, 128)]
    assert {r.spec.model.path.split("/")[-1] for r in train[6:]} == {"Llama-3.2-3B-Instruct"}
    assert [r.name for r in plan.runs[12:]] == ["control_1B", "control_3B"]
    # epochs over 10,000 declared samples at the fast profile's 8 × 4: 2 × ceil(10000 / 8) / 4
    assert {r.steps.steps for r in train} == {625}


def test_run_name_formats_whole_floats_as_ints():
    assert run_name("{a.b}_{c}", {"a": {"b": 4.0}, "c": 1e-4}) == "4_0.0001"
    with pytest.raises(KeyError):
        run_name("{a.zz}", {"a": {}})


# --- profiles and provenance --------------------------------------------------------------------

def test_profile_sets_batch_accum_and_length(write_spec, plan_spec):
    path = write_spec({"profile": "balanced"}, drop=["training.batch_size", "training.grad_accum"])
    run = plan_spec(path).runs[0]
    assert (run.spec.training.batch_size, run.spec.training.grad_accum, run.spec.data.max_length) == (4, 8, 2048)
    assert run.config["provenance"] == {"data.max_length": "profile:balanced", "training.batch_size": "profile:balanced",
                                        "training.grad_accum": "profile:balanced"}


def test_explicit_fields_override_the_profile(write_spec, plan_spec):
    path = write_spec({"profile": "balanced", "training": {"batch_size": 2}, "data": {"max_length": 512}},
                      drop=["training.grad_accum"])
    run = plan_spec(path).runs[0]
    assert (run.spec.training.batch_size, run.spec.training.grad_accum, run.spec.data.max_length) == (2, 8, 512)
    assert run.config["provenance"] == {"data.max_length": "spec", "training.batch_size": "spec",
                                        "training.grad_accum": "profile:balanced"}
    assert run.config["training"]["batch_size"] == 2 and run.config["data"]["max_length"] == 512


def test_custom_profile_falls_back_to_defaults(write_spec, plan_spec):
    run = plan_spec(write_spec(drop=["training.batch_size", "training.grad_accum"])).runs[0]
    assert run.config["provenance"]["training.batch_size"] == "default"
    assert run.config["provenance"]["data.max_length"] == "default"
    assert (run.spec.training.batch_size, run.spec.training.grad_accum, run.spec.data.max_length) == (4, 1, 512)


def test_swept_profile_fields_say_sweep(write_spec, plan_spec):
    path = write_spec({"profile": "fast", "sweep": {"matrix": {"training.batch_size": [1, 2]}, "name": "b{training.batch_size}"}},
                      drop=["training.batch_size"])
    runs = plan_spec(path).runs
    assert [r.spec.training.batch_size for r in runs] == [1, 2]
    assert runs[0].config["provenance"] == {"data.max_length": "profile:fast", "training.batch_size": "sweep",
                                            "training.grad_accum": "spec"}


# --- steps ---------------------------------------------------------------------------------------

def test_steps_counted_from_the_train_file(tmp_path, write_spec):
    (tmp_path / "train.jsonl").write_text('{"text": "a"}\n' * 10 + "\n")
    path = write_spec({"data": {"train": "train.jsonl", "packing": False}, "training": {"epochs": 3}},
                      drop=["training.max_steps"])
    spec = load_spec(path).spec
    spec = spec.model_copy(update={"data": spec.data.model_copy(update={"max_length": 128})})
    count = count_steps(spec, tmp_path)
    # ceil(10 / 4) batches × 3 epochs; without the model's tokenizer a line count is an estimate (an example
    # left without targets is dropped), and the run counts exactly
    assert count.steps == 9 and count.source.startswith("estimated: 10 lines")


def test_steps_unknown_until_run_start(write_spec, plan_spec):
    path = write_spec({"training": {"epochs": 1, "schedule": {"warmup_steps": 0}}}, drop=["training.max_steps"])
    plan = plan_spec(path)
    assert plan.runs[0].steps.steps is None and plan.runs[0].schedule is None
    assert plan.runs[0].config["training"]["total_steps"] is None


def test_packed_estimate(write_spec, plan_spec):
    path = write_spec({"training": {"epochs": 3}, "data": {"samples": 8000, "avg_tokens": 500, "max_length": 2048}},
                      drop=["training.max_steps"])
    run = plan_spec(path).runs[0]
    # 8000 × 500 / 2048 = 1954 rows = 489 batches of 4 per epoch (the last one partial, as BatchPlan makes
    # them); × 3 epochs / accumulation 1 = 1467 steps
    assert run.steps.steps == 1467 and run.steps.source.startswith("estimated")


# --- continuation ---------------------------------------------------------------------------------

def test_continuation_extends_from_the_current_lr(plan_spec):
    run = plan_spec(SPECS / "continuation.yaml").runs[0]
    s = run.schedule
    assert (s.start_step, s.start_lr, s.total_steps, s.kind) == (1000, 1e-3, 10000, "cosine")
    assert run.config["schedule"]["start_step"] == 1000


def test_continuation_at_step_must_precede_the_new_total(write_spec, spec_problems):
    cont = {"from_run": "runs/x/main", "at_step": 100}
    [issue] = spec_problems(write_spec({"continuation": cont}))
    assert issue.path == "continuation.at_step" and "< the new total (100 steps)" in issue.message


def test_continuation_of_a_constant_schedule_says_how_it_decays(write_spec, plan_spec):
    cont = {"from_run": "runs/x/main", "at_step": 50}
    run = plan_spec(write_spec({"continuation": cont, "training": {"schedule": {"kind": "constant"}}})).runs[0]
    assert run.config["schedule"]["kind"] == "cosine"


def test_restart_is_a_fresh_schedule(write_spec, plan_spec):
    cont = {"from_run": "runs/x/main", "at_step": 50, "strategy": "restart"}
    run = plan_spec(write_spec({"continuation": cont})).runs[0]
    assert run.schedule.start_step == 0 and run.schedule.start_lr is None and run.schedule.total_steps == 100


# --- kernel choices (model.attention, compile, liger, loss_chunk) ------------------------------

def test_kernel_choices_reach_the_config_only_when_chosen(write_spec, plan_spec):
    """Defaults leave config.json as it was (older compiled configs stay valid and identical); a choice is written."""
    from specc.engine.config import from_dict

    plain = plan_spec(write_spec()).runs[0].config["model"]
    assert not {"attention", "compile", "liger", "loss_chunk"} & set(plain)
    chosen = plan_spec(write_spec({"model": {"attention": "flex", "compile": True, "loss_chunk": 1024}})).runs[0].config
    assert chosen["model"]["attention"] == "flex" and chosen["model"]["compile"] is True
    assert chosen["model"]["loss_chunk"] == 1024 and "liger" not in chosen["model"]
    cfg = from_dict(dict(chosen), "test")
    assert (cfg.model.attention, cfg.model.compile, cfg.model.liger, cfg.model.loss_chunk) == ("flex", True, False, 1024)
    assert from_dict(plan_spec(write_spec()).runs[0].config, "test").model.attention == "auto"


def test_kernel_choices_are_validated(write_spec, spec_problems):
    issues = spec_problems(write_spec({"model": {"attention": "flash", "loss_chunk": 4},
                                       "resources": {"memory_headroom": 1.5}}))
    by_path = {i.path: i for i in issues}
    assert set(by_path) == {"model.attention", "model.loss_chunk", "resources.memory_headroom"}
    assert "sdpa_varlen" in by_path["model.attention"].message
