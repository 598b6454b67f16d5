"""Runner support: capability profiles, binary/jar lookup and the preflight check."""

from beam_etl.runners.capabilities import FEATURES, PROFILES, RunnerProfile, capability_table, profile_for
from beam_etl.runners.preflight import PreflightError, PreflightReport, preflight

__all__ = ["FEATURES", "PROFILES", "PreflightError", "PreflightReport", "RunnerProfile", "capability_table",
           "preflight", "profile_for"]
