"""Runner preflight: refuse a template/runner combination before submission, with the reason.

``preflight(spec, configs, beam_args)`` works out the features the template needs (batch or
streaming, state and timers, unbounded reads, ...), looks up the runner's profile
(``capabilities.PROFILES``) and checks what the runner needs to start here: the Prism binary,
a job-server jar of the same Beam version, a reachable job endpoint or worker pool, a Docker
engine for DOCKER environments. Every problem is collected and reported at once; nothing is
submitted. Where a sensible default exists (the Prism binary built by ``scripts/runners.sh``,
LOOPBACK workers for a job service on this machine) it is filled in and said so.
"""

from __future__ import annotations

import dataclasses
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from apache_beam.options.pipeline_options import FlinkRunnerOptions, PipelineOptions

from beam_etl import registry
from beam_etl.ops import guarantees
from beam_etl.runners import locate
from beam_etl.runners.capabilities import BEAM_VERSION, FEATURES, RunnerProfile, profile_for
from beam_etl.runners.direct import QUALIFIED_NAME
from beam_etl.spec import PipelineSpec, TemplateError

LOOPBACK_HOSTS = {"localhost", "127.0.0.1", "::1", "0.0.0.0"}
WORKER_POOL_HINT = ("start one with: python -m apache_beam.runners.worker.worker_pool_main --service_port=50000 "
                    "(see docs/runners.md)")
_JOB_SERVER_COORDINATES = {
    "flink": "org.apache.beam:beam-runners-flink-{engine}-job-server:{version}",
    "spark": "org.apache.beam:beam-runners-spark-3-job-server:{version}",
}


FN_API_RUNNER = QUALIFIED_NAME  # DirectRunner's batch engine, options provisioned, no Prism attempt


class PreflightError(TemplateError):
    """The runner cannot run this template here; the message lists every reason."""


@dataclasses.dataclass
class PreflightReport:
    """What the preflight found: the runner, the features needed, options it added, notes."""

    runner: str
    profile: RunnerProfile | None
    features: dict[str, list[str]]
    added_args: list[str] = dataclasses.field(default_factory=list)
    notes: list[str] = dataclasses.field(default_factory=list)
    problems: list[str] = dataclasses.field(default_factory=list)
    prism_binary: Path | None = None  # start this Prism as the run's job service (runners.services)

    def describe(self) -> str:
        """One paragraph for the console: runner, features, environment, notes."""
        needed = ", ".join(self.features) or "batch"
        lines = [f"preflight: {self.runner} OK for features [{needed}]"]
        lines += [f"  note: {n}" for n in self.notes]
        return "\n".join(lines)


def required_features(spec: PipelineSpec, configs: Mapping[str, Any], streaming: bool) -> dict[str, list[str]]:
    """feature -> the transforms (or option) that need it, in FEATURES order."""
    needed: dict[str, list[str]] = {"streaming": ["option --streaming"]} if streaming else {"batch": ["template"]}
    for _section, _, t in spec.transforms():
        entry = registry.lookup(t.type)
        if entry is None:
            continue
        for feature in entry.features(configs.get(t.name)):
            needed.setdefault(feature, []).append(f"{t.name} ({t.type})")
    for source, steps in guarantees.regrouping_steps(spec, configs).items():
        needed.setdefault(guarantees.FEATURE, []).append(
            f"exactly_once source {source} feeding the regrouping step(s) {', '.join(steps)}")
    return {f: needed[f] for f in FEATURES if f in needed}


def _batch_only_transforms(spec: PipelineSpec, configs: Mapping[str, Any]) -> list[str]:
    names = []
    for _section, _, t in spec.transforms():
        entry = registry.lookup(t.type)
        if entry is not None and not entry.supports_streaming(configs.get(t.name)):
            names.append(f"{t.name} ({t.type})")
    return names


def _is_loopback(endpoint: str | None) -> bool:
    parts = locate.split_endpoint(endpoint or "")
    return parts is not None and parts[0] in LOOPBACK_HOSTS


def _check_endpoint(report: PreflightReport, what: str, endpoint: str, hint: str) -> None:
    if locate.split_endpoint(endpoint) is None:
        report.problems.append(f"{what} {endpoint!r} is not host:port")
    elif not locate.reachable(endpoint):
        report.problems.append(f"{what} {endpoint} is not reachable (nothing listens there); {hint}")


def _check_environment(report: PreflightReport, opts: dict[str, Any], local_job_service: bool) -> None:
    """DOCKER needs an engine; EXTERNAL needs a reachable worker pool; LOOPBACK needs a local job service."""
    profile = report.profile
    assert profile is not None
    env = (opts.get("environment_type") or "").upper()
    if not env:
        env = profile.default_environment
        if env == "DOCKER" and shutil.which("docker") is None:
            if local_job_service:
                report.added_args.append("--environment_type=LOOPBACK")
                report.notes.append("no Docker engine here and the job service is on this machine: "
                                    "workers run in this process (--environment_type=LOOPBACK)")
                return
            report.problems.append(
                f"{report.runner} defaults to DOCKER workers but no Docker engine is installed here; pass "
                "--environment_type=EXTERNAL --environment_config=HOST:PORT of a Beam worker pool the cluster "
                f"can reach ({WORKER_POOL_HINT})")
            return
    if env == "DOCKER" and shutil.which("docker") is None:
        report.problems.append("--environment_type=DOCKER needs a Docker engine and none is installed here; use "
                               f"LOOPBACK for a job service on this machine or EXTERNAL with a worker pool "
                               f"({WORKER_POOL_HINT})")
    elif env == "EXTERNAL":
        config = opts.get("environment_config")
        if not config:
            report.problems.append(f"--environment_type=EXTERNAL needs --environment_config=HOST:PORT of a Beam "
                                   f"worker pool; {WORKER_POOL_HINT}")
        else:
            _check_endpoint(report, "worker pool (--environment_config)", config, WORKER_POOL_HINT)
    elif env == "LOOPBACK" and not local_job_service:
        report.notes.append("LOOPBACK workers run in this process: the cluster must be able to connect back to "
                            "this machine")


def _check_prism(report: PreflightReport, opts: dict[str, Any]) -> None:
    location = opts.get("prism_location")
    if location:
        if "://" in str(location):
            report.notes.append(f"--prism_location {location} is a URL: Beam downloads it at run time")
        elif not shutil.which(str(location)) and not Path(str(location)).is_file():
            report.problems.append(f"--prism_location {location} does not exist; build Prism with "
                                   "scripts/runners.sh prism")
        return
    found = locate.find_prism()
    if found is None:
        report.problems.append(
            f"Prism is not built on this machine (looked for {locate.prism_path()}); build it with "
            f"scripts/runners.sh prism (go install github.com/apache/beam/sdks/v2/go/cmd/prism@v{BEAM_VERSION}), "
            "or pass --prism_location=PATH")
        return
    report.prism_binary = found
    report.notes.append(f"Prism binary {found}, one job service per run")


def _check_job_server_jar(report: PreflightReport, opts: dict[str, Any], engine: str) -> None:
    """FlinkRunner/SparkRunner without --job_endpoint start Beam's job server from a jar of the same version."""
    flink_version = str(opts.get("flink_version") or FlinkRunnerOptions.PUBLISHED_FLINK_VERSIONS[-1])
    wanted_engine = f"flink-{flink_version}" if engine == "flink" else "spark-3"
    coordinates = _JOB_SERVER_COORDINATES[engine].format(engine=flink_version, version=BEAM_VERSION)
    given = opts.get(f"{engine}_job_server_jar")
    if given:
        if "://" not in str(given) and not Path(str(given)).is_file():
            report.problems.append(f"--{engine}_job_server_jar {given} does not exist")
            return
        jar = locate.parse_jar_name(str(given))
        if jar and jar.version != BEAM_VERSION:
            report.problems.append(
                f"job-server jar {Path(str(given)).name} is Beam {jar.version} but this SDK is Beam "
                f"{BEAM_VERSION}: Beam's job server and SDK must be the same release ({coordinates})")
        elif jar is None:
            report.notes.append(f"cannot read a Beam version from {given}; make sure it is Beam {BEAM_VERSION}")
        return
    jars = [j for j in locate.find_job_server_jars(engine) if j.engine == wanted_engine]
    same = [j for j in jars if j.version == BEAM_VERSION]
    if same:
        report.added_args.append(f"--{engine}_job_server_jar={same[0].path}")
        report.notes.append(f"job-server jar {same[0].path}")
        return
    other = f" (found only other Beam versions: {', '.join(j.path.name for j in jars)})" if jars else ""
    report.problems.append(
        f"{report.runner} needs Beam's job server {coordinates}{other}. Beam would download it from Maven "
        f"Central at run time; put the jar in {locate.runners_dir() / 'jars'} (scripts/runners.sh jobservers "
        f"fetches it where the registry serves it), pass --{engine}_job_server_jar=PATH, or point "
        "--job_endpoint=HOST:PORT at a running job server (docs/runners.md)")


def _check_cluster_master(report: PreflightReport, opts: dict[str, Any], engine: str) -> bool:
    """Checks a non-local Flink/Spark master; returns True when the run is local/embedded."""
    if engine == "flink":
        master = str(opts.get("flink_master") or "[auto]")
        if master in ("[auto]", "[local]"):
            return True
        _check_endpoint(report, "Flink master (--flink_master, the JobManager REST address)",
                        master.removeprefix("http://").removeprefix("https://").rstrip("/"),
                        "start the cluster or fix the address")
        return _is_loopback(master.split("//")[-1])
    master = str(opts.get("spark_master_url") or "local[4]")
    if master.startswith("local"):
        return True
    if master.startswith("spark://"):
        address = master.removeprefix("spark://")
        _check_endpoint(report, "Spark master (--spark_master_url)", address, "start the cluster or fix the URL")
        return _is_loopback(address)
    return False


def preflight(spec: PipelineSpec, configs: Mapping[str, Any], beam_args: list[str]) -> PreflightReport:
    """Checks that the runner named in ``beam_args`` can run ``spec`` here; raises PreflightError if not."""
    opts = PipelineOptions(beam_args).get_all_options(drop_default=False, retain_unknown_options=True)
    runner = str(opts.get("runner") or "DirectRunner")
    streaming = bool(opts.get("streaming"))
    report = PreflightReport(runner=runner, profile=profile_for(runner),
                             features=required_features(spec, configs, streaming))
    profile = report.profile
    if profile is None:
        report.notes.append(f"{runner} is not in beam_etl's runner matrix (DirectRunner, PrismRunner, "
                            "PortableRunner, FlinkRunner, SparkRunner): only the template was checked")
        return report
    report.runner = profile.name
    for feature in profile.missing(frozenset(report.features)):
        users = ", ".join(report.features[feature])
        report.problems.append(f"{profile.name} does not support {feature} (needed by {users}): "
                               f"{profile.why_not.get(feature, 'not supported')}")
    if streaming:
        batch_only = _batch_only_transforms(spec, configs)
        if batch_only:
            report.problems.append("--streaming was given but these transforms are correct on bounded input only "
                                   f"(global-window buffering or one-shot file finalisation): {', '.join(batch_only)}")
    job_endpoint = opts.get("job_endpoint")
    if runner.rsplit(".", 1)[-1].lower() in ("directrunner", "direct") and not streaming:
        # DirectRunner first tries to download Prism, then falls back to this same in-process engine
        report.added_args.append(f"--runner={FN_API_RUNNER}")
    if profile.portable:
        local_service = True
        if job_endpoint and job_endpoint != "embed":
            _check_endpoint(report, "job service (--job_endpoint)", str(job_endpoint),
                            "start the job server first or fix the address")
            local_service = _is_loopback(str(job_endpoint))
        elif profile.name == "PortableRunner" and not job_endpoint:
            report.problems.append("PortableRunner needs --job_endpoint=HOST:PORT of a running job service "
                                   "(a Flink/Spark job server or Prism: scripts/runners.sh prism-server)")
        elif profile.name == "PrismRunner":
            _check_prism(report, opts)
        elif profile.name in ("FlinkRunner", "SparkRunner"):
            engine = profile.name.removesuffix("Runner").lower()
            if not job_endpoint:
                _check_job_server_jar(report, opts, engine)
            local_service = _check_cluster_master(report, opts, engine) and local_service
        _check_environment(report, opts, local_service)
    if report.problems:
        raise PreflightError(f"preflight refused {profile.name} for pipeline {spec.name!r}:\n  - "
                             + "\n  - ".join(report.problems))
    return report
