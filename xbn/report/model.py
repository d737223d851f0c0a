"""The data every writer formats: observations, diffs and run metadata."""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd

from ..compare import DEFAULT_K, diff_table, observations_frame
from ..explain import explain_diffs
from ..runner import RunResult


@dataclass
class Report:
    result: RunResult
    obs: pd.DataFrame
    diffs: pd.DataFrame
    reference: str
    k: float

    @classmethod
    def build(cls, result: RunResult, reference: str = "numpy", k: float = DEFAULT_K) -> Report:
        obs = observations_frame(result.observations)
        diffs = diff_table(obs, reference, k)
        diffs = explain_diffs(diffs, obs, result.scenarios, reference, k)
        return cls(result, obs, diffs, reference, k)

    @property
    def frameworks(self) -> list[str]:
        return list(self.result.frameworks)
