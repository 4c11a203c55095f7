"""Load a YAML spec safely, keeping the file:line:col of every node.

We compose the node graph with ruamel.yaml and build plain Python values ourselves, so no tag can
ever construct an object. Explicit tags, duplicate keys and anchors/aliases are rejected: an
experiment spec has no use for them, and aliases are how "billion laughs" bombs are built.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from pathlib import Path

from ruamel.yaml import YAML
from ruamel.yaml.error import MarkedYAMLError, YAMLError
from ruamel.yaml.nodes import MappingNode, ScalarNode, SequenceNode

from specc.errors import SpecError, SpecIssue

Path_ = tuple  # a field path: ("training", "schedule", "kind") or ("sweep", "matrix", "model", 0)

_DEFAULT_TAGS = {
    "tag:yaml.org,2002:str", "tag:yaml.org,2002:int", "tag:yaml.org,2002:float", "tag:yaml.org,2002:bool",
    "tag:yaml.org,2002:null", "tag:yaml.org,2002:map", "tag:yaml.org,2002:seq",
}
_MAX_NODES = 200_000
_INT = re.compile(r"^[-+]?(0|[1-9][0-9_]*)$|^0x[0-9a-fA-F_]+$|^0o[0-7_]+$")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def dotted(path: tuple) -> str:
    """A field path for messages; keys with control characters are escaped so an issue stays one line."""
    return ".".join(repr(p)[1:-1] if isinstance(p, str) and _CONTROL.search(p) else str(p) for p in path)


@dataclass
class Located:
    """Parsed YAML plus the (line, col) of every key and value, 1-based."""
    file: str
    data: object
    positions: dict[tuple, tuple[int, int]] = field(default_factory=dict)
    key_positions: dict[tuple, tuple[int, int]] = field(default_factory=dict)

    def where(self, path: tuple) -> tuple[int, int]:
        """Position of the node at `path`, or of its nearest ancestor that exists."""
        p = tuple(path)
        while p:
            if p in self.positions:
                return self.positions[p]
            p = p[:-1]
        return self.positions.get((), (1, 1))

    def where_key(self, path: tuple) -> tuple[int, int]:
        return self.key_positions.get(tuple(path)) or self.where(path)

    def issue(self, path: tuple, message: str, *, key: bool = False) -> SpecIssue:
        line, col = self.where_key(path) if key else self.where(path)
        return SpecIssue(self.file, line, col, message, dotted(path))


def load_yaml(path: Path, display: str | None = None) -> Located:
    """Parse a YAML file into plain values with positions; raise SpecError on anything unsafe."""
    name = display or str(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise SpecError([SpecIssue(name, 1, 1, "file not found")]) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise SpecError([SpecIssue(name, 1, 1, f"cannot read file: {exc}")]) from None
    return load_yaml_text(text, name)


def load_yaml_text(text: str, name: str) -> Located:
    yaml = YAML(typ="rt")
    try:
        node = yaml.compose(text)
    except MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line, col = (mark.line + 1, mark.column + 1) if mark else (1, 1)
        msg = " ".join(str(x) for x in (exc.context, exc.problem) if x)
        raise SpecError([SpecIssue(name, line, col, f"YAML syntax error: {msg}")]) from None
    except YAMLError as exc:
        raise SpecError([SpecIssue(name, 1, 1, f"YAML error: {exc}")]) from None
    located = Located(name, None)
    if node is None:
        raise SpecError([SpecIssue(name, 1, 1, "the spec is empty")])
    builder = _Builder(located)
    located.data = builder.build(node, ())
    if builder.issues:
        raise SpecError(builder.issues)
    return located


class _Builder:
    def __init__(self, located: Located):
        self.located = located
        self.issues: list[SpecIssue] = []
        self.seen: set[int] = set()
        self.count = 0

    def _issue(self, node, path, message):
        m = node.start_mark
        self.issues.append(SpecIssue(self.located.file, m.line + 1, m.column + 1, message, dotted(path)))

    def build(self, node, path):
        self.count += 1
        if self.count > _MAX_NODES:
            self._issue(node, path, f"spec has more than {_MAX_NODES} nodes; refusing to load it")
            return None
        if id(node) in self.seen:  # the composer reuses the node object for an alias
            self._issue(node, path, "YAML aliases (*name) are not allowed in specs; write the value out")
            return None
        self.seen.add(id(node))
        if getattr(node, "anchor", None):
            self._issue(node, path, f"YAML anchors (&{node.anchor}) are not allowed in specs")
        self.located.positions[path] = (node.start_mark.line + 1, node.start_mark.column + 1)
        if node.tag not in _DEFAULT_TAGS:
            self._issue(node, path, f"YAML tag {node.tag!r} is not allowed; specs hold plain values only")
            return None
        if isinstance(node, MappingNode):
            out: dict = {}
            for key_node, value_node in node.value:
                if not isinstance(key_node, ScalarNode) or key_node.tag not in _DEFAULT_TAGS:
                    self._issue(key_node, path, "mapping keys must be plain strings")
                    continue
                key = key_node.value
                key_path = path + (key,)
                if key in out:
                    first = self.located.key_positions[key_path]
                    self._issue(key_node, key_path, f"duplicate key {key!r} (first defined at line {first[0]})")
                    continue
                self.located.key_positions[key_path] = (key_node.start_mark.line + 1, key_node.start_mark.column + 1)
                out[key] = self.build(value_node, key_path)
            return out
        if isinstance(node, SequenceNode):
            return [self.build(item, path + (i,)) for i, item in enumerate(node.value)]
        return _scalar(node)


def _scalar(node: ScalarNode):
    tag, value = node.tag, node.value
    if node.style == ">":
        # The round-trip composer marks each fold of a folded block (">") with BEL; the folded text is
        # what the author meant (YAML 1.2 folding: the line break became the following space).
        value = value.replace("\a", "")
    if tag.endswith(":null"):
        return None
    if tag.endswith(":bool"):
        return value.lower() == "true"
    if tag.endswith(":int") and _INT.match(value):
        return int(value.replace("_", ""), 0)
    if tag.endswith(":float"):
        v = value.lower().replace("_", "")
        if v in (".inf", "+.inf"):
            return math.inf
        if v == "-.inf":
            return -math.inf
        if v == ".nan":
            return math.nan
        try:
            return float(v)
        except ValueError:
            return value
    return value
