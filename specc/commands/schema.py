"""`specc schema`: the spec's JSON Schema, for editor completion."""
from __future__ import annotations

import json
import sys

from specc.cli import app


@app.command()
def schema():
    """Print the spec's JSON Schema (for editor completion through the YAML language server)."""
    from specc.spec.model import Spec

    s = Spec.model_json_schema()
    s["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    s["title"] = "specc experiment spec"
    sys.stdout.write(json.dumps(s, indent=2, sort_keys=True) + "\n")
