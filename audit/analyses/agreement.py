"""Agreement of two runs of the same model on the same images: a reproduction check.

When a run repeats another with the same model (a new run of idefics-9b-instruct beside the
card's published generations), the share of paired images whose generation is identical, per
prompt, says how closely the setting was reproduced: greedy decoding with the same prompt,
weights and stopping gives identical text. Surrounding whitespace does not count; anything else
does. Each image gives one pair per prompt, so the share is a binomial proportion over images,
with a Wilson interval.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from audit.analyses.stats import wilson_interval
from audit.analyses.table import ALL, MIN_GROUP_SIZE, estimate, insufficient, records_table

METRIC = "identical generation"


def same_model(model_a: str, model_b: str) -> bool:
    """Whether two runs name one model: the same id, or the same last path part (a hub id and
    a local copy of it in a folder of that name)."""

    def last(model: str) -> str:
        return model.strip().rstrip("/").rsplit("/", 1)[-1].casefold()

    return model_a.strip() == model_b.strip() or last(model_a) == last(model_b) != ""


def generation_agreement(pairs: pd.DataFrame, axes: Sequence[str]) -> pd.DataFrame:
    """Per prompt, overall and per group: the share of pairs with identical generations.

    ``pairs``: one row per image and prompt with ``prompt_id``, ``generation_a``,
    ``generation_b`` and the group columns ``axes``."""
    records = []
    identical = (
        pairs["generation_a"]
        .astype(str)
        .str.strip()
        .eq(pairs["generation_b"].astype(str).str.strip())
    )
    pairs = pairs.assign(_identical=identical.to_numpy())
    for prompt_id, rows in pairs.groupby("prompt_id", sort=True):
        subsets = [(ALL, ALL, rows)] + [
            (axis, str(group), part)
            for axis in axes
            if axis in rows
            for group, part in rows.groupby(axis, sort=True)
        ]
        for axis, group, part in subsets:
            n, k = len(part), int(part["_identical"].sum())
            if n < MIN_GROUP_SIZE:
                records.append(insufficient(str(prompt_id), axis, group, METRIC, n))
                continue
            low, high = wilson_interval(np.array([k]), np.array([n]))
            records.append(
                estimate(str(prompt_id), axis, group, METRIC, k / n, (low[0], high[0]), n)
            )
    return records_table(records)
