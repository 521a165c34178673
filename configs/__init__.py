"""Experiment configs: `get_config(arg)` per data set and stage (`arg='tiny'` shrinks for tests)."""
