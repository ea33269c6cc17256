"""Scoring stage: every successful generation scored once for toxicity, stored as a table.

``analysis/toxicity_scores.parquet`` holds ``sample_id, prompt_id, scorer, <one column per
label>``. A re-run scores only the generations it lacks, chunk by chunk (an interrupted scoring
keeps what it finished), and loads no model when it lacks none; error rows are never scored.
The toxicity analysis is a pure function of this table.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from audit.errors import RunDirError
from audit.spec import ToxicitySpec
from audit.store.schema import Manifest
from audit.store.tables import RunStore, error_mask
from audit.terminal import transformers_bars_off

logger = logging.getLogger(__name__)

SCORES_TABLE = "toxicity_scores"
KEYS = ["sample_id", "prompt_id", "scorer"]
#: Texts scored between two saves of the table.
CHUNK_TEXTS = 2048


@dataclass(frozen=True)
class ScoringInput:
    """What scoring reads: the run, its generations and the scorer asked for."""

    store: RunStore
    manifest: Manifest
    generations: pd.DataFrame
    spec: ToxicitySpec
    #: Checkpoint files the user vouched for on the command line (``--trust-checkpoint``).
    trusted: tuple[Path, ...] = ()


def successful(generations: pd.DataFrame) -> pd.DataFrame:
    """Rows with a generation: error rows and missing texts left out."""
    valid = generations[~error_mask(generations)]
    return valid[valid["generation"].notna()].reset_index(drop=True)


def read_scores(store: RunStore) -> pd.DataFrame:
    """Every stored score, of every scorer (labels of other scorers are null)."""
    stored = store.analysis_if_present(SCORES_TABLE, KEYS)
    return pd.DataFrame(columns=KEYS) if stored is None else stored


def scores_of(scores: pd.DataFrame, scorer: str) -> pd.DataFrame:
    """``sample_id, prompt_id, <labels>`` of one scorer, from the scores table."""
    mine = scores[scores["scorer"] == scorer] if len(scores) else scores
    labels = [c for c in mine.columns if c not in KEYS and mine[c].notna().any()]
    return mine[["sample_id", "prompt_id", *labels]].reset_index(drop=True)


def score_toxicity(stage: ScoringInput) -> pd.DataFrame:
    """Score every successful generation the table lacks for ``stage.spec.scorer``, store the
    table, and return all of it. The scorer loads only when something needs scoring."""
    spec = stage.spec
    try:
        table = read_scores(stage.store)
    except RunDirError as error:  # the stage's own table: everything in it can be made anew
        logger.warning("%s; scoring every generation anew", error)
        table = pd.DataFrame(columns=KEYS)
    generations = successful(stage.generations)
    if generations.empty:
        return table
    mine = table[table["scorer"] == spec.scorer] if len(table) else table
    done = set(mine[["sample_id", "prompt_id"]].astype(str).itertuples(index=False, name=None))
    keys = generations[["sample_id", "prompt_id"]].astype(str).itertuples(index=False, name=None)
    todo = generations[[key not in done for key in keys]]
    return _score_into(stage, todo, table) if len(todo) else table


def _score_into(stage: ScoringInput, todo: pd.DataFrame, table: pd.DataFrame) -> pd.DataFrame:
    """Score ``todo`` chunk by chunk, storing the table after each: an interrupted scoring
    keeps what it finished, and the next run goes on from there."""
    from tqdm.auto import tqdm

    from audit.scoring.scorers import load_scorer

    spec = stage.spec
    probe_dir, origin = _probe_location(stage)
    with transformers_bars_off(only_off_a_terminal=True):
        scorer = load_scorer(spec, probe_dir, origin=origin, trusted=stage.trusted)
    chunk = max(CHUNK_TEXTS, spec.batch_size)
    starts = range(0, len(todo), chunk)
    for start in tqdm(
        starts,
        desc=f"scoring toxicity ({spec.scorer})",
        unit="chunk",
        disable=None if len(starts) > 1 else True,
    ):
        part = todo.iloc[start : start + chunk]
        new = scorer.score(part["generation"].tolist())
        new.insert(0, "scorer", spec.scorer)
        new.insert(0, "prompt_id", part["prompt_id"].astype(str).to_numpy())
        new.insert(0, "sample_id", part["sample_id"].astype(str).to_numpy())
        table = pd.concat([table, new], ignore_index=True) if len(table) else new
        stage.store.write_analysis(SCORES_TABLE, table)
    return table


def _probe_location(stage: ScoringInput) -> tuple[Path, str]:
    """Where relative scorer paths resolve from, and which file to name in errors."""
    manifest = stage.manifest
    probe_path = manifest.probe_path
    probe_dir = manifest.probe.get("probe_dir")
    if probe_path:
        return Path(probe_dir or Path(probe_path).parent), str(probe_path)
    origin = f"{stage.store.manifest_path} (probe)"
    return Path(probe_dir or Path.cwd()), origin
