"""A run's job settings: the spec's resources over its cluster's defaults, with where each value came from.

Scalars (account, constraint, exclusive, mail): the spec's, else the cluster's. Mappings (env,
extra_sbatch): the cluster's, then the spec's, a key the spec also sets taking the spec's value.
Setup lines: the cluster's first (module loads), then the spec's (activating an environment).
"""
from __future__ import annotations

from specc.spec.clusters import Cluster
from specc.spec.jobenv import JobSettings


def resolve_job_settings(spec: JobSettings, cluster_name: str, cluster: Cluster | None) -> dict:
    """The ResolvedResources fields for the job settings (account ... extra_sbatch, settings_from)."""
    defaults = cluster.defaults if cluster is not None else JobSettings()
    where = f"cluster {cluster_name}"
    sources: dict[str, str] = {}

    def pick(field: str):
        mine, theirs = getattr(spec, field), getattr(defaults, field)
        if mine is not None:
            sources[field] = "spec"
            return mine
        if theirs is not None:
            sources[field] = where
        return theirs

    account, constraint, exclusive, mail = (pick(f) for f in ("account", "constraint", "exclusive", "mail"))
    env: dict[str, str] = {}
    extra: dict[str, str] = {}
    for target, field in ((env, "env"), (extra, "extra_sbatch")):
        for source, section in ((where, defaults), ("spec", spec)):
            for key, value in getattr(section, field).items():
                target[key] = value
                sources[f"{field}.{key}"] = source
    setup = [*defaults.setup, *spec.setup]
    for i in range(len(setup)):
        sources[f"setup.{i + 1}"] = where if i < len(defaults.setup) else "spec"
    return {"account": account, "constraint": constraint, "exclusive": bool(exclusive),
            "mail_user": mail.user if mail else None, "mail_type": ",".join(mail.type) if mail else None,
            "env": tuple(env.items()), "setup": tuple(setup), "extra_sbatch": tuple(extra.items()),
            "settings_from": tuple(sources.items())}
