"""The spec's `evaluation` section: the tasks a run is judged on, scored from generated text.

    evaluation:
      control: true                  # add a control run of each base model (as sweep.control does)
      select_best_by: eval.capitalize.exact_match     # or val_loss (the default): what decides best/
      tasks:
        - name: capitalize
          split: test                # test (default) or valid
          limit: 200                 # examples (default: all)
          max_new_tokens: 8
          stop: ["\\n"]               # stop strings (eos always stops)
          decoding: {temperature: 0.0, top_p: 1.0, seed: 0}   # greedy unless temperature > 0
          metric: exact_match        # contains | regex | numeric | choice | custom
          normalize: [strip, lowercase, whitespace, punctuation]
          every: 50                  # also score `every_limit` examples every 50 training steps
          every_limit: 32

A metric's result is the mean per-example score in [0, 1]; summary.json carries it as
`eval.<task>.<metric>` (the name an expectation uses). `custom: "package.module:function"` is the
spec author's own code, imported from the spec's directory or the environment, called as
`function(prediction, reference, example) -> float`.
"""
from __future__ import annotations

import re
from typing import Literal

from pydantic import Field, field_validator, model_validator

from specc.spec.fields import SLUG, Strict

Metric = Literal["exact_match", "contains", "regex", "numeric", "choice", "custom"]
Normalize = Literal["strip", "lowercase", "whitespace", "punctuation"]
CUSTOM_TARGET = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*:[A-Za-z_][A-Za-z0-9_]*$")


class Decoding(Strict):
    temperature: float = Field(0.0, ge=0, le=10, description="0 = greedy")
    top_p: float = Field(1.0, gt=0, le=1)
    seed: int = Field(0, ge=0, lt=2**32, description="for sampling (temperature > 0)")


class Task(Strict):
    name: str = Field(min_length=1, max_length=64, description="a slug: results go to RUN_DIR/eval/<name>.json")
    split: Literal["test", "valid"] = "test"
    limit: int | None = Field(None, ge=1, description="score this many examples (a fixed sample); null = all")
    max_new_tokens: int = Field(32, ge=1, le=8192)
    stop: list[str] = Field(default_factory=list, description="generation stops at the first of these strings")
    decoding: Decoding = Field(default_factory=Decoding)
    metric: Metric = "exact_match"
    normalize: list[Normalize] = Field(default_factory=lambda: ["strip"],
                                       description="exact_match/contains/choice: applied to prediction and reference")
    pattern: str | None = Field(None, description="regex: a pattern whose first group is the answer")
    tolerance: float = Field(0.0, ge=0, description="numeric: |prediction - reference| <= tolerance scores 1")
    options: list[str] | None = Field(None, min_length=2, description="choice: the answers a prediction may pick "
                                                                      "(default: the example's own 'options' list)")
    custom: str | None = Field(None, description="custom: 'package.module:function(prediction, reference, example)'")
    prompt_field: str | None = Field(None, description="format text: the JSONL key holding the prompt")
    reference_field: str | None = Field(None, description="format text: the JSONL key holding the reference")
    every: int | None = Field(None, ge=1, description="also score during training, every N steps")
    every_limit: int = Field(32, ge=1, description="examples scored during training (a fixed subset)")

    @field_validator("name")
    @classmethod
    def _slug(cls, v: str) -> str:
        if not SLUG.match(v) or v in (".", ".."):
            raise ValueError(f"task name {v!r} must be a slug: letters, digits, '.', '_', '-'")
        return v

    @field_validator("stop")
    @classmethod
    def _stops(cls, v: list[str]) -> list[str]:
        if any(s == "" for s in v):
            raise ValueError("an empty stop string would stop before the first token")
        return v

    @model_validator(mode="after")
    def _metric_needs(self):
        if self.metric == "regex":
            if not self.pattern:
                raise ValueError("metric regex needs `pattern`, whose first group is the answer")
            try:
                compiled = re.compile(self.pattern)
            except re.error as exc:
                raise ValueError(f"pattern {self.pattern!r} is not a valid regular expression: {exc}") from None
            if compiled.groups < 1:
                raise ValueError(f"pattern {self.pattern!r} has no group: put the answer in ( ... )")
        elif self.pattern is not None:
            raise ValueError(f"`pattern` is only for metric regex (this task's metric is {self.metric})")
        if self.metric == "custom":
            if not self.custom or not CUSTOM_TARGET.match(self.custom):
                raise ValueError("metric custom needs `custom: \"package.module:function\"`")
        elif self.custom is not None:
            raise ValueError(f"`custom` is only for metric custom (this task's metric is {self.metric})")
        if self.options is not None and self.metric != "choice":
            raise ValueError(f"`options` is only for metric choice (this task's metric is {self.metric})")
        if (self.prompt_field is None) != (self.reference_field is None):
            raise ValueError("give prompt_field and reference_field together (for format text)")
        return self

    @property
    def metric_key(self) -> str:
        """The name summary.json and expectations use: eval.<task>.<metric>."""
        return f"eval.{self.name}.{self.metric}"


class Evaluation(Strict):
    tasks: list[Task] = Field(default_factory=list)
    control: bool = Field(False, description="add a control run of each base model: the same tasks, no training")
    select_best_by: str = Field("val_loss", description="val_loss, or a task metric eval.<task>.<metric> (the task "
                                                        "needs `every`): what decides best/")

    @model_validator(mode="after")
    def _names(self):
        names = [t.name for t in self.tasks]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ValueError(f"task names must be unique: {', '.join(dup)}")
        if self.select_best_by != "val_loss":
            task = next((t for t in self.tasks if t.metric_key == self.select_best_by), None)
            if task is None:
                known = ", ".join(["val_loss", *(t.metric_key for t in self.tasks)])
                raise ValueError(f"select_best_by {self.select_best_by!r} names no task metric (choose one of: {known})")
            if task.every is None:
                raise ValueError(f"select_best_by {self.select_best_by!r}: task {task.name!r} needs `every` "
                                 "(best/ is decided on the scores taken during training)")
        return self
