"""Resource choice (specc/slurm/choose.py) against canned `sinfo` output: no cluster needed."""
from __future__ import annotations

import textwrap

import pytest

from specc.slurm.choose import choose, parse_gres, parse_sinfo_nodes, parse_slurm_time
from specc.slurm.submit import PlannedJob

CATALOG = """
clusters:
  here:
    partitions:
      quick: {max_time: "01:00:00", gpus_per_node: 2, gpu_type: a100, cpus_per_node: 32, mem_gb: 500, nodes: 2, starts_fast: true}
      gpu: {max_time: "3-00:00:00", gpus_per_node: 4, gpu_type: a100, cpus_per_node: 48, mem_gb: 1000, nodes: 4}
      big: {max_time: "2-00:00:00", gpus_per_node: 8, gpu_type: h100, cpus_per_node: 96, mem_gb: 2000, nodes: 2}
    gpu_types: {a100: {memory_gb: 40}, h100: {memory_gb: 80}}
  there:
    partitions:
      ailab: {max_time: "3-00:00:00", gpus_per_node: 8, gpu_type: b200, cpus_per_node: 112, mem_gb: 2000, nodes: 4}
    gpu_types: {b200: {memory_gb: 141}}
"""

# host|partition|avail|state|CPUs A/I/O/T|memory MB|allocated MB|gres|gres used|time limit (sinfo -N -O ...)
IDLE = {
    "quick": ["q1|quick*|up|idle|0/32/0/32|512000|0|gpu:a100:2(S:0)|gpu:a100:0(IDX:N/A)|1:00:00"],
    "gpu": ["g1|gpu|up|mix|16/32/0/48|1024000|65536|gpu:a100:4(S:0-1)|gpu:a100:1(IDX:0)|3-00:00:00"],
    "big": ["b1|big|up|idle|0/96/0/96|2048000|0|gpu:h100:8(S:0-1)|gpu:h100:0(IDX:N/A)|2-00:00:00",
            "b2|big|up|idle|0/96/0/96|2048000|0|gpu:h100:8(S:0-1)|gpu:h100:0(IDX:N/A)|2-00:00:00"],
}
FULL = {  # every GPU in use
    "quick": ["q1|quick*|up|mix|4/28/0/32|512000|8192|gpu:a100:2(S:0)|gpu:a100:2(IDX:0-1)|1:00:00"],
    "gpu": ["g1|gpu|up|alloc|48/0/0/48|1024000|1024000|gpu:a100:4(S:0-1)|gpu:a100:4(IDX:0-3)|3-00:00:00"],
    "big": ["b1|big|up|mix|8/88/0/96|2048000|65536|gpu:h100:8(S:0-1)|gpu:h100:8(IDX:0-7)|2-00:00:00",
            "b2|big|up|drain|0/96/0/96|2048000|0|gpu:h100:8(S:0-1)|gpu:h100:0(IDX:N/A)|2-00:00:00"],
}


def sinfo_from(table: dict, calls: list | None = None):
    def sinfo(partitions):
        if calls is not None:
            calls.append(list(partitions))
        return "\n".join(line for p in partitions for line in table.get(p, [])) + "\n"
    return sinfo


@pytest.fixture
def plan_with(write_spec, plan_spec, tmp_path):
    (tmp_path / "clusters.yaml").write_text(CATALOG)

    def make(resources=None, test=None, **extra):
        res = {"cluster": "here", "partition": None, "gpus": 1, "cpus": 8, "mem": "64G", "time": "12:00:00"}
        res.update(resources or {})
        overrides = {"resources": res, **extra}
        if test is not False:
            overrides["stages"] = {"test": {"max_steps": 5, "time": "00:15:00", **(test or {})}}
        plan = plan_spec(write_spec(overrides))
        from specc.spec.clusters import load_catalog
        return plan, plan.runs[0], load_catalog(plan.spec_path, None)[0]

    return make


def test_parse_sinfo_lines():
    nodes = parse_sinfo_nodes("\n".join(IDLE["quick"] + IDLE["gpu"]) + "\n\n")
    q, g = nodes
    assert (q.name, q.partition, q.available, q.state) == ("q1", "quick", "up", "idle")   # the default's '*' is dropped
    assert (q.cpus_idle, q.cpus_total, q.mem_mb, q.gpus, q.time_limit_s) == (32, 32, 512000, {"a100": 2}, 3600)
    assert (g.state, g.cpus_idle, g.mem_alloc_mb, g.gpus_used, g.time_limit_s) == ("mix", 32, 65536, {"a100": 1}, 3 * 86400)
    # The local cluster's real output (no GRES, padded last column).
    [local] = parse_sinfo_nodes("localhost|debug|up|idle|0/2/0/2|24105|0|(null)|(null)|30:00               \n")
    assert (local.gpus, local.gpus_used, local.time_limit_s, local.mem_mb) == ({}, {}, 1800, 24105)


@pytest.mark.parametrize("text, expected", [
    ("gpu:a100:4(S:0-1)", {"a100": 4}), ("gpu:4", {"": 4}), ("gpu:a100:2,gpu:h100:1", {"a100": 2, "h100": 1}),
    ("gpu:a100:2(IDX:0,1),shard:8", {"a100": 2}), ("(null)", {}), ("", {}), ("gpu:a100:0(IDX:N/A)", {"a100": 0}),
])
def test_parse_gres(text, expected):
    assert parse_gres(text) == expected


@pytest.mark.parametrize("text, seconds", [
    ("30:00", 1800), ("1:00:00", 3600), ("3-00:00:00", 259200), ("1-12", 129600), ("2-01:30", 178200),
    ("45", 2700), ("infinite", None), ("UNLIMITED", None),
])
def test_parse_slurm_time(text, seconds):
    assert parse_slurm_time(text) == seconds


def test_test_stage_prefers_a_partition_that_starts_at_once(plan_with):
    _, run, catalog = plan_with()
    d = choose(run, "test", catalog, sinfo=sinfo_from(IDLE), here="here")
    assert d.chosen.partition == "quick"
    assert "first choice" in d.why and "start at once" in d.why and "has room now" in d.why


def test_full_run_prefers_the_largest_gpus(plan_with):
    _, run, catalog = plan_with()
    d = choose(run, None, catalog, sinfo=sinfo_from(IDLE), here="here")
    assert [v.partition for v in d.verdicts] == ["big", "gpu", "quick"]   # h100 (80 GB) first; quick-start last
    assert d.chosen.partition == "big"
    assert not d.verdicts[2].fits and "12:00:00 > limit 01:00:00" in d.verdicts[2].problems[0]


def test_takes_the_first_choice_with_room_else_queues_on_the_first_that_fits(plan_with):
    _, run, catalog = plan_with()
    busy_big = dict(IDLE, big=FULL["big"])
    d = choose(run, None, catalog, sinfo=sinfo_from(busy_big), here="here")
    assert d.chosen.partition == "gpu"
    assert "choice 2 of 3" in d.why and "big" in d.why and "no room now" in d.why
    d = choose(run, None, catalog, sinfo=sinfo_from(FULL), here="here")
    assert d.chosen.partition == "big" and d.chosen.room is False
    assert "queued" in d.why and "no choice has room now" in d.why


def test_the_specs_choices_keep_their_order_and_misfits_are_skipped_with_a_reason(plan_with):
    _, run, catalog = plan_with(resources={"time": "2-12:00:00", "partition": "gpu",
                                           "choices": [{"partition": "big"}, {"partition": "gpu"}]})
    calls = []
    d = choose(run, None, catalog, sinfo=sinfo_from(IDLE, calls), here="here")
    assert calls == [["big", "gpu"]]                    # one sinfo call for every local choice
    assert d.chosen.partition == "gpu"                  # big's limit is 2 days
    assert "big" in d.why and "2-12:00:00 > limit 2-00:00:00" in d.why


def test_memory_and_gpus_that_do_not_fit_a_node(plan_with):
    _, run, catalog = plan_with(resources={"gpus": 8, "mem": "900G", "cpus": 40, "partition": "big",
                                           "choices": [{"partition": "gpu"}, {"partition": "big"}]}, test=False)
    d = choose(run, None, catalog, sinfo=sinfo_from(IDLE), here="here")
    gpu = d.verdicts[0]
    assert not gpu.fits and any("8 GPU(s) per node > 4" in p for p in gpu.problems)
    assert d.chosen.partition == "big"


def test_live_view_catches_what_the_catalog_does_not(plan_with):
    _, run, catalog = plan_with(test={"choices": [{"partition": "quick"}, {"partition": "gpu"}]})
    drained = dict(IDLE, quick=["q1|quick|down|down*|0/0/32/32|512000|0|gpu:a100:2|gpu:a100:0|1:00:00"])
    d = choose(run, "test", catalog, sinfo=sinfo_from(drained), here="here")
    assert d.chosen.partition == "gpu" and "partition quick is down" in d.why
    missing = {k: v for k, v in IDLE.items() if k != "quick"}
    d = choose(run, "test", catalog, sinfo=sinfo_from(missing), here="here")
    assert d.chosen.partition == "gpu" and "sinfo does not know partition quick" in d.why


def test_other_clusters_are_judged_from_the_catalog_only_and_never_chosen(plan_with):
    _, run, catalog = plan_with(resources={"partition": "gpu",
                                           "choices": [{"cluster": "there", "partition": "ailab"}, {"partition": "gpu"}]})
    calls = []
    d = choose(run, None, catalog, sinfo=sinfo_from(IDLE, calls), here="here")
    assert calls == [["gpu"]]                            # sinfo is never asked about another cluster
    there = d.verdicts[0]
    assert there.fits and there.room is None and not there.live and "judged from the catalog only" in there.detail
    assert d.chosen.label == "here/gpu" and "there/ailab" in d.why
    # Submitting from `there`: now ailab is local (and sinfo answers for it).
    d = choose(run, None, catalog, sinfo=sinfo_from({"ailab": ["a1|ailab|up|idle|0/112/0/112|2048000|0|gpu:b200:8|gpu:b200:0|3-00:00:00"]}),
               here="there")
    assert d.chosen.label == "there/ailab"


def test_nothing_fits_here_says_where_it_would(plan_with):
    _, run, catalog = plan_with(resources={"partition": "gpu", "time": "2-12:00:00", "gpus": 4,
                                           "choices": [{"partition": "big"}, {"cluster": "there", "partition": "ailab"}]},
                                test=False)
    d = choose(run, None, catalog, sinfo=sinfo_from(IDLE), here="here")
    assert d.chosen is None
    assert "no choice on this cluster (here) fits" in d.why and "run `specc submit` on there" in d.why


def test_without_sinfo_the_catalog_decides_and_says_so(plan_with):
    _, run, catalog = plan_with()

    def broken(_):
        raise RuntimeError("sinfo did not answer within 15 s")

    d = choose(run, "test", catalog, sinfo=broken, here="here")
    assert d.chosen.partition == "quick" and d.chosen.room is None
    assert "sinfo unavailable (sinfo did not answer within 15 s): judged from the catalog only" in d.why
    d = choose(run, "test", catalog, sinfo=None, here="here")
    assert d.chosen.partition == "quick" and "judged from the catalog only" in d.why


def test_a_partition_with_another_gpu_type_gets_its_own_gres(plan_with, tmp_path):
    plan, run, catalog = plan_with(resources={"partition": "gpu", "choices": [{"partition": "big"}, {"partition": "gpu"}]})
    d = choose(run, None, catalog, sinfo=sinfo_from(IDLE), here="here")
    job = PlannedJob("full", tmp_path / "train.sbatch", [run], d)
    assert job.choice_args() == ["--partition=big", "--gres=gpu:h100:1"]   # the script says gpu:a100:1
    d = choose(run, None, catalog, sinfo=sinfo_from(dict(IDLE, big=FULL["big"])), here="here")
    assert PlannedJob("full", tmp_path / "train.sbatch", [run], d).choice_args() == ["--partition=gpu"]


def test_a_requested_gpu_type_rules_out_other_types(plan_with):
    _, run, catalog = plan_with(resources={"partition": "gpu", "gpu_type": "a100",
                                           "choices": [{"partition": "big"}, {"partition": "gpu"}]})
    d = choose(run, None, catalog, sinfo=sinfo_from(IDLE), here="here")
    assert d.chosen.partition == "gpu" and "GPU type a100 ≠ h100" in d.why


def test_qos_follows_the_time_limit(write_spec, plan_spec, tmp_path):
    (tmp_path / "clusters.yaml").write_text(textwrap.dedent("""
        clusters:
          q:
            partitions:
              p: {max_time: "3-00:00:00", cpus_per_node: 8, mem_gb: 64}
            qos: {short: {max_time: "1-00:00:00"}, long: {max_time: "3-00:00:00"}}
    """))
    plan = plan_spec(write_spec({"resources": {"cluster": "q", "partition": "p", "cpus": 2, "mem": "4G", "time": "1-12:00:00"}}))
    from specc.spec.clusters import load_catalog
    d = choose(plan.runs[0], None, load_catalog(plan.spec_path, None)[0],
               sinfo=sinfo_from({"p": ["n1|p|up|idle|0/8/0/8|65536|0|(null)|(null)|3-00:00:00"]}), here="q")
    assert d.chosen.qos == "long" and d.chosen.label == "q/p (QoS long)"
