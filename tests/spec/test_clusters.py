"""The clusters catalog: built-in, beside the spec, or named by resources.catalog."""
from __future__ import annotations

import pytest

from specc.spec.clusters import builtin_catalog, load_catalog
from specc.spec.model import parse_time

CUSTOM = """\
clusters:
  mine:
    partitions:
      small: {max_time: "02:00:00", gpus_per_node: 2, gpu_type: l40, cpus_per_node: 8, mem_gb: 64}
    qos:
      quick: {max_time: "01:00:00"}
      slow: {max_time: "1-00:00:00"}
    gpu_types:
      l40: {memory_gb: 48}
"""


def test_builtin_catalog_has_the_seeds_clusters():
    catalog = builtin_catalog()
    assert {"local", "della", "ailab"} <= set(catalog.clusters)
    della = catalog.clusters["della"]
    assert set(della.qos) == {"short", "long"}
    assert della.partitions["gpu-test"].starts_fast


@pytest.mark.parametrize("time, qos", [
    ("00:10:00", "short"), ("12:00:00", "short"), ("1-00:00:00", "short"),
    ("1-00:00:01", "long"), ("2-12:00:00", "long"), ("3-00:00:00", "long"), ("3-00:00:01", None),
])
def test_della_qos_by_duration(time, qos):
    """short covers ≤ 24 h, long ≤ 72 h; nothing covers more."""
    assert builtin_catalog().clusters["della"].qos_for(parse_time(time)) == qos


def test_catalog_beside_the_spec_replaces_the_builtin(tmp_path):
    (tmp_path / "clusters.yaml").write_text(CUSTOM)
    catalog, source = load_catalog(tmp_path / "spec.yaml", None)
    assert set(catalog.clusters) == {"mine"} and source == str(tmp_path / "clusters.yaml")
    assert catalog.clusters["mine"].qos_for(3600) == "quick"


def test_explicit_catalog_is_relative_to_the_spec(tmp_path):
    (tmp_path / "cat").mkdir()
    (tmp_path / "cat" / "c.yaml").write_text(CUSTOM)
    catalog, source = load_catalog(tmp_path / "spec.yaml", "cat/c.yaml")
    assert "mine" in catalog.clusters and source.endswith("cat/c.yaml")


def test_no_catalog_beside_means_builtin(tmp_path):
    catalog, source = load_catalog(tmp_path / "spec.yaml", None)
    assert source == "builtin" and "della" in catalog.clusters


def test_spec_uses_a_custom_catalog(tmp_path, write_spec, plan_spec):
    (tmp_path / "clusters.yaml").write_text(CUSTOM)
    path = write_spec({"resources": {"cluster": "mine", "partition": "small", "gpus": 2, "time": "00:30:00"}})
    run = plan_spec(path).runs[0]
    assert (run.resources.partition, run.resources.qos, run.resources.gpu_type) == ("small", "quick", "l40")


def test_invalid_catalog_reports_the_catalog_file_and_line(tmp_path, write_spec, spec_problems):
    bad = CUSTOM.replace('quick: {max_time: "01:00:00"}', 'quick: {max_time: "an hour"}').replace(
        "gpus_per_node: 2", "gpus_per_node: -1")
    (tmp_path / "clusters.yaml").write_text(bad)
    issues = spec_problems(write_spec({"resources": {"cluster": "mine", "partition": "small"}}))
    assert {i.file for i in issues} == {str(tmp_path / "clusters.yaml")}
    assert {(i.path, i.line) for i in issues} == {("clusters.mine.qos.quick.max_time", 6),
                                                 ("clusters.mine.partitions.small.gpus_per_node", 4)}


def test_catalog_names_with_control_characters_are_rejected(tmp_path, write_spec, spec_problems):
    (tmp_path / "clusters.yaml").write_text(CUSTOM.replace("      small:", '      "sm\\nall":'))
    [issue] = spec_problems(write_spec({"resources": {"cluster": "mine", "partition": "small"}}))
    assert issue.line == 4 and "control characters" in issue.message
    assert "\n" not in str(issue)


def test_missing_explicit_catalog(write_spec, spec_problems):
    [issue] = spec_problems(write_spec({"resources": {"catalog": "nowhere.yaml"}}))
    assert issue.message == "file not found" and issue.file.endswith("nowhere.yaml")
