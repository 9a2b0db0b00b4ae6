"""The shakeout.dev API: pydantic models, the single source of truth of the CRD schemas.

This package is pure: it imports neither kopf nor kubernetes (checked by import-linter).
"""

from shakeout.api.common import GROUP, VERSION, Condition, LabelSelector
from shakeout.api.experiment import Experiment, ExperimentSpec
from shakeout.api.run import ExperimentRun, ExperimentRunSpec, ExperimentRunStatus, Phase
from shakeout.api.switch import ChaosSwitch, ChaosSwitchSpec

__all__ = [
    "GROUP",
    "VERSION",
    "ChaosSwitch",
    "ChaosSwitchSpec",
    "Condition",
    "Experiment",
    "ExperimentRun",
    "ExperimentRunSpec",
    "ExperimentRunStatus",
    "ExperimentSpec",
    "LabelSelector",
    "Phase",
]
