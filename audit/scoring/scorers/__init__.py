"""Toxicity scorers: one small interface, a transformers and a detoxify implementation.

Importing this package is cheap; torch, transformers and detoxify load only with a scorer.
"""

from audit.scoring.scorers.base import ToxicityScorer
from audit.scoring.scorers.loader import load_scorer, parse_scorer

__all__ = ["ToxicityScorer", "load_scorer", "parse_scorer"]
