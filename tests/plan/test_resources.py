"""Resources resolved against the catalog at compile time: a spec that asks for too much fails here."""
from __future__ import annotations

import pytest

from specc.plan.resources import mem_gb

DELLA = {"resources": {"cluster": "della", "partition": "gpu", "gpus": 1, "cpus": 8, "mem": "64G", "time": "04:00:00"}}


def della(**resources):
    return {"resources": {**DELLA["resources"], **resources}}


def test_della_run_resolves(write_spec, plan_spec):
    res = plan_spec(write_spec(DELLA)).runs[0].resources
    assert (res.cluster, res.partition, res.qos, res.gpu_type, res.time) == ("della", "gpu", "short", "a100", "04:00:00")
    assert res.time_source == "resources.time" and res.choices == (("della", "gpu", "short"),)


@pytest.mark.parametrize("time, qos", [("12:00:00", "short"), ("1-00:00:00", "short"), ("1-00:00:01", "long"),
                                       ("3-00:00:00", "long")])
def test_qos_chosen_by_duration(write_spec, plan_spec, time, qos):
    assert plan_spec(write_spec(della(time=time))).runs[0].resources.qos == qos


@pytest.mark.parametrize("field, value, message", [
    ("gpus", 5, "5 GPUs requested, partition gpu has 4 per node × 1 node(s)"),
    ("cpus", 64, "64 CPUs per task requested, partition gpu nodes have 48"),
    ("mem", "2T", "memory 2T requested, partition gpu nodes have 1000 GB"),
    ("mem", "1100000", "memory 1100000 requested"),   # SLURM's default unit is MB: 1,100,000 MB > 1000 GB
    ("nodes", 41, "41 nodes requested, partition gpu has 40"),
    ("gpu_type", "h100", "GPU type 'h100' requested, partition gpu has 'a100'"),
    ("time", "3-00:00:01", "time limit 3-00:00:01 exceeds partition gpu's maximum 3-00:00:00"),
])
def test_asking_more_than_the_partition_allows_fails(write_spec, spec_problems, line_of, field, value, message):
    path = write_spec(della(**{field: value}))
    issues = spec_problems(path)
    mine = [i for i in issues if i.path == f"resources.{field}"]
    assert mine and message in mine[0].message, issues
    assert mine[0].line == line_of(path.read_text(), f"{field}:")


def test_time_over_the_qos_maximum(write_spec, spec_problems, line_of):
    path = write_spec(della(qos="short", time="2-00:00:00"))
    [issue] = spec_problems(path)
    assert issue.path == "resources.qos" and "exceeds QoS short's maximum 1-00:00:00" in issue.message
    assert issue.line == line_of(path.read_text(), "qos: short")


def test_time_over_every_qos(write_spec, spec_problems, tmp_path):
    (tmp_path / "clusters.yaml").write_text(
        'clusters:\n  c:\n    partitions:\n      p: {max_time: "5-00:00:00", cpus_per_node: 8, mem_gb: 64}\n'
        '    qos:\n      short: {max_time: "1-00:00:00"}\n')
    [issue] = spec_problems(write_spec({"resources": {"cluster": "c", "partition": "p", "time": "2-00:00:00"}}))
    assert "exceeds every QoS of c (longest 1-00:00:00)" in issue.message and issue.path == "resources.time"


@pytest.mark.parametrize("field, value, message", [
    ("cluster", "nowhere", "cluster 'nowhere' is not in the catalog"),
    ("partition", "nope", "partition 'nope' is not in cluster 'della'"),
    ("qos", "vip", "QoS 'vip' is not defined for cluster 'della'"),
])
def test_unknown_names(write_spec, spec_problems, field, value, message):
    issues = spec_problems(write_spec(della(**{field: value})))
    assert any(i.path == f"resources.{field}" and message in i.message for i in issues), issues


def test_unknown_choice(write_spec, spec_problems):
    issues = spec_problems(write_spec(della(choices=[{"partition": "gpu"}, {"cluster": "x", "partition": "y"}])))
    assert any("choice x/y is not in the catalog" in i.message for i in issues)


def test_window_hours_sets_the_time_limit(write_spec, plan_spec):
    path = write_spec({"resources": {**DELLA["resources"], "time": None, "window_hours": 12, "partition": "pli"}})
    res = plan_spec(path).runs[0].resources
    assert res.time == "12:00:00" and res.time_source.startswith("resources.window_hours") and res.qos == "short"


def test_default_partition_and_time(write_spec, plan_spec):
    path = write_spec({"resources": {"cluster": "della", "gpus": 1, "cpus": 8, "mem": "64G"}},
                      drop=["resources.partition", "resources.time"])
    res = plan_spec(path).runs[0].resources
    # Full runs prefer the largest GPUs, then the longest limit; the fast-start test partition is skipped.
    assert res.partition == "gpu" and res.time == "3-00:00:00" and res.qos == "long"
    assert res.time_source == "partition gpu maximum"


def test_test_stage_prefers_a_partition_that_starts_fast(write_spec, plan_spec):
    run = plan_spec(write_spec({**DELLA, "stages": {"test": {"max_steps": 5, "time": "00:10:00"}}})).runs[0]
    assert run.test_resources.partition == "gpu-test" and run.test_resources.time == "00:10:00"
    assert run.resources.partition == "gpu"


def test_test_stage_partition_errors_point_at_the_stage(write_spec, spec_problems, line_of):
    path = write_spec({**DELLA, "stages": {"test": {"max_steps": 5, "partition": "nope"}}})
    [issue] = spec_problems(path)
    assert issue.path == "stages.test.partition" and "(test stage)" in issue.message
    assert issue.line == line_of(path.read_text(), "partition: nope")


def test_test_stage_time_over_its_partition(write_spec, spec_problems):
    [issue] = spec_problems(write_spec({**DELLA, "stages": {"test": {"max_steps": 5, "time": "02:00:00"}}}))
    assert issue.path == "stages.test.time" and "gpu-test's maximum 01:00:00" in issue.message


def test_signal_lead(write_spec, plan_spec):
    res = plan_spec(write_spec()).runs[0].resources
    assert res.signal_lead_s == 180 and res.signal_lead_source.startswith("default")
    res = plan_spec(write_spec({"resources": {"time": "00:08:00"}})).runs[0].resources
    assert res.signal_lead_s == 120   # a quarter of a short limit
    res = plan_spec(write_spec({"resources": {"signal_lead_s": 60}})).runs[0].resources
    assert (res.signal_lead_s, res.signal_lead_source) == (60, "resources.signal_lead_s")


@pytest.mark.parametrize("mem, gb", [("16G", 16), ("512M", 0.5), ("64000", 62.5), ("1T", 1024), ("1.5G", 1.5)])
def test_mem_units(mem, gb):
    assert mem_gb(mem) == pytest.approx(gb)


def test_all_resource_errors_are_reported_together(write_spec, spec_problems):
    issues = spec_problems(write_spec(della(gpus=8, cpus=100, mem="5T", time="3-00:00:01")))
    assert {i.path for i in issues} == {"resources.gpus", "resources.cpus", "resources.mem", "resources.time"}
