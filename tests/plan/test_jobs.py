"""Job settings over a cluster's defaults, sweep.resources rules, and one job array per job shape."""
from __future__ import annotations

import pytest

from specc.plan.jobs import job_groups

SWEEP = {
    "resources": {"cluster": "local", "partition": "main", "time": "02:00:00"},
    "sweep": {"matrix": {"model": [{"path": "/m/1b", "size": "1B"}, {"path": "/m/3b", "size": "3B"}],
                         "model.lora.rank": [4, 16]},
              "name": "{model.size}_r{model.lora.rank}", "control": True},
}


def test_one_shape_is_one_array_and_controls_are_eval_only_jobs_of_their_own(write_spec, plan_spec):
    plan = plan_spec(write_spec(SWEEP))
    groups = job_groups(plan)
    assert [(g.name, g.kind, [r.name for r in g.runs]) for g in groups] == [
        ("array", "train", ["1B_r4", "1B_r16", "3B_r4", "3B_r16"]),
        ("control_array", "control", ["control_1B", "control_3B"])]
    control = groups[1].resources
    assert control.time == "00:30:00" and "until its evaluation is estimated" in control.time_source
    assert groups[0].resources.time == "02:00:00" and "every training run has one shape" in groups[0].why


def test_a_rule_gives_a_shape_its_own_array_time_and_signal_lead(write_spec, plan_spec):
    spec = {**SWEEP, "sweep": {**SWEEP["sweep"], "resources": [
        {"when": {"model.size": "3B"}, "set": {"time": "06:00:00", "cpus": 1, "signal_lead_s": 300}}]}}
    plan = plan_spec(write_spec(spec))
    groups = job_groups(plan)
    assert [(g.name, [r.name for r in g.runs], g.resources.time, g.resources.signal_lead_s) for g in groups] == [
        ("array_1", ["1B_r4", "1B_r16"], "02:00:00", 180), ("array_2", ["3B_r4", "3B_r16"], "06:00:00", 300),
        ("control_array_1", ["control_1B"], "00:30:00", 180), ("control_array_2", ["control_3B"], "00:30:00", 300)]
    assert "time 06:00:00 vs 02:00:00" in groups[1].why and "cpus 1 vs 2" in groups[1].why
    assert dict(next(r for r in plan.runs if r.name == "3B_r4").provenance)["resources.time"] == "sweep.resources[0]"


def test_a_bad_rule_is_reported_at_its_line(write_spec, spec_problems):
    spec = {**SWEEP, "sweep": {**SWEEP["sweep"], "resources": [
        {"when": {"model.size": "3B"}, "set": {"time": "six hours"}}, {"when": {"model.sise": "1B"}, "set": {"cpus": 2}}]}}
    issues = spec_problems(write_spec(spec))
    assert any("sweep.resources[0]" in i.message and "six hours" in i.message for i in issues), issues
    assert any("'model.sise' is not a spec field" in i.message for i in issues), issues


def test_the_catalog_sets_job_defaults_and_the_spec_adds_to_and_overrides_them(write_spec, plan_spec, tmp_path):
    (tmp_path / "clusters.yaml").write_text("""clusters:
  lab:
    partitions: {gpu: {max_time: "1-00:00:00", gpus_per_node: 4, cpus_per_node: 16, mem_gb: 128}}
    defaults:
      account: lab-acct
      setup: ["module load cuda/12.4"]
      env: {HF_HOME: /scratch/hf, OMP_NUM_THREADS: "4"}
      extra_sbatch: {gres-flags: enforce-binding}
""")
    path = write_spec({"resources": {"cluster": "lab", "partition": "gpu", "time": "01:00:00",
                                     "env": {"OMP_NUM_THREADS": "8"}, "setup": ["source ~/venvs/x/bin/activate"],
                                     "mail": {"user": "me@lab.org"}}})
    res = plan_spec(path).runs[0].resources
    assert (res.account, res.mail_user, res.mail_type) == ("lab-acct", "me@lab.org", "END,FAIL")
    assert res.setup == ("module load cuda/12.4", "source ~/venvs/x/bin/activate")
    assert dict(res.env) == {"HF_HOME": "/scratch/hf", "OMP_NUM_THREADS": "8"}
    assert dict(res.extra_sbatch) == {"gres-flags": "enforce-binding"}
    assert dict(res.settings_from) == {"account": "cluster lab", "mail": "spec", "env.HF_HOME": "cluster lab",
                                       "env.OMP_NUM_THREADS": "spec", "extra_sbatch.gres-flags": "cluster lab",
                                       "setup.1": "cluster lab", "setup.2": "spec"}


@pytest.mark.parametrize("section, value, message", [
    ("mail", {"user": "a@b", "type": ["SOMETIMES"]}, "Input should be 'NONE'"),
    ("extra_sbatch", {"comment": False}, "leave the option out"),
    ("env", {"A": True}, "write the value as a string"),
])
def test_job_settings_are_checked_at_their_line(write_spec, spec_problems, section, value, message):
    issues = spec_problems(write_spec({"resources": {section: value}}))
    assert any(message in i.message and i.path.startswith(f"resources.{section}") for i in issues), issues
