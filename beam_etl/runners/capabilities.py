"""What each runner can do, as the preflight sees it.

A template needs a set of *features* (from its options and from what each registered transform
declares); a runner profile says which it supports and, for each one it lacks, why and what to
use instead. The figures come from Beam's capability matrix for portable runners (2.75) and from
running the templates here; ``docs/runners.md`` prints this table.
"""

from __future__ import annotations

import dataclasses

import apache_beam

BEAM_VERSION = apache_beam.__version__

# feature -> one-line meaning
FEATURES: dict[str, str] = {
    "batch": "bounded input, run to completion",
    "streaming": "unbounded input (--streaming): windows, triggers, watermarks",
    "state_and_timers": "stateful DoFns with timers (streaming dedup, streaming aggregation)",
    "unbounded_sdf": "splittable DoFns that checkpoint an unbounded read (Kafka, polling sources)",
    "bundle_finalization": "a callback after a bundle's output is durably committed (source acks/offsets)",
    "durable_checkpoints": "streaming state that survives a restarted job (checkpoints/savepoints)",
}


@dataclasses.dataclass(frozen=True)
class RunnerProfile:
    """One runner: its names, how it is reached and what it supports."""

    name: str
    aliases: tuple[str, ...]
    supports: frozenset[str]
    why_not: dict[str, str]
    portable: bool
    default_environment: str
    tested_here: bool
    notes: str = ""

    def missing(self, features: frozenset[str]) -> list[str]:
        """The features in ``features`` this runner lacks, in FEATURES order."""
        return [f for f in FEATURES if f in features and f not in self.supports]


_ALL = frozenset(FEATURES)

PROFILES: tuple[RunnerProfile, ...] = (
    RunnerProfile(
        name="DirectRunner",
        aliases=("direct", "fnapirunner", "bundlebaseddirectrunner", "switchingdirectrunner"),
        supports=frozenset({"batch", "state_and_timers", "bundle_finalization"}),
        why_not={
            "streaming": "Beam's Python DirectRunner runs unbounded reads only through TestStream; a polling "
                         "source emits nothing until it ends. Use --runner=PrismRunner (or Flink).",
            "unbounded_sdf": "the in-process FnApiRunner does not resume a checkpointed unbounded read; "
                             "use --runner=PrismRunner (or Flink).",
            "durable_checkpoints": "the in-process runner keeps no state across restarts; use FlinkRunner with "
                                   "--checkpointing_interval.",
        },
        portable=False, default_environment="in-process", tested_here=True,
        notes="in-process FnApiRunner; the default",
    ),
    RunnerProfile(
        name="PrismRunner",
        aliases=("prism",),
        supports=_ALL - {"durable_checkpoints"},
        why_not={"durable_checkpoints": "Prism keeps job state in memory only; use FlinkRunner with "
                                        "--checkpointing_interval for state that survives a restart."},
        portable=True, default_environment="LOOPBACK", tested_here=True,
        notes="Beam's Go runner, built from the Go module by scripts/runners.sh prism",
    ),
    RunnerProfile(
        name="PortableRunner",
        aliases=("portable",),
        supports=_ALL,
        why_not={},
        portable=True, default_environment="DOCKER", tested_here=True,
        notes="any job service given by --job_endpoint (tested against Prism's job service); the "
              "features are those of the runner behind the endpoint",
    ),
    RunnerProfile(
        name="FlinkRunner",
        aliases=("flink",),
        supports=frozenset({"batch", "streaming", "state_and_timers", "unbounded_sdf", "durable_checkpoints"}),
        why_not={
            "bundle_finalization": "Beam's portable Flink runner does not call bundle finalizers, so a "
                                   "source that acknowledges in finalize never acknowledges; use PrismRunner "
                                   "or a source that commits through the sink.",
        },
        portable=True, default_environment="DOCKER", tested_here=False,
        notes="needs Beam's Flink job server (jar or running endpoint)",
    ),
    RunnerProfile(
        name="SparkRunner",
        aliases=("spark",),
        supports=frozenset({"batch", "state_and_timers"}),
        why_not={
            "streaming": "Beam's portable Spark runner runs batch only (its streaming mode is experimental and "
                         "has no timers); use FlinkRunner or PrismRunner for streaming templates.",
            "unbounded_sdf": "the portable Spark runner cannot checkpoint an unbounded splittable read.",
            "bundle_finalization": "the portable Spark runner does not call bundle finalizers.",
            "durable_checkpoints": "the portable Spark runner has no streaming checkpoints.",
        },
        portable=True, default_environment="DOCKER", tested_here=False,
        notes="needs Beam's Spark job server (jar or running endpoint)",
    ),
)


def profile_for(runner: str) -> RunnerProfile | None:
    """The profile for a --runner value (class name, short name or dotted path), or None."""
    key = runner.rsplit(".", 1)[-1].lower()
    for profile in PROFILES:
        if key == profile.name.lower() or key in profile.aliases:
            return profile
    return None


def capability_table() -> str:
    """The runner x feature table in Markdown, for docs and ``--runners``."""
    head = "| feature | " + " | ".join(p.name for p in PROFILES) + " |"
    rule = "|---|" + "---|" * len(PROFILES)
    rows = [head, rule]
    for feature in FEATURES:
        cells = ["yes" if feature in p.supports else "**no**" for p in PROFILES]
        rows.append(f"| `{feature}` | " + " | ".join(cells) + " |")
    return "\n".join(rows)
