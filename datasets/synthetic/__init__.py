"""Dependency-free procedural data set (numpy only) for tests and smoke runs."""
