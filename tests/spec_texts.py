"""Spec texts and YAML writing shared by the tests of the spec language, the CLI and the lifecycle."""
from __future__ import annotations

import io

from ruamel.yaml import YAML

# Four different mistakes on four lines: a bad value, two unknown keys (typos) and a bad memory size.
FOUR_MISTAKES = """\
experiment: four-mistakes
hypothesis:
  statement: four different mistakes, four lines
model:
  path: /models/base
  quantization: int4
data:
  train: /data/train.jsonl
training:
  max_steps: 100
  lerning_rate: 1.0e-4
resources:
  mem: 16GB
trainig: {}
"""


def dump_yaml(data: dict) -> str:
    """A spec dict as block-style YAML, keys in their given order."""
    yaml = YAML(typ="safe", pure=True)
    yaml.default_flow_style = False
    yaml.sort_base_mapping_type_on_output = False
    buf = io.StringIO()
    yaml.dump(data, buf)
    return buf.getvalue()
