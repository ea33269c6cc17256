"""Scoring stage: model-based scores of stored generations, written as tables of the run
(``toxicity``: detoxify or a transformers text classifier, ``scorers/``). The analyses are pure
functions of these tables."""
