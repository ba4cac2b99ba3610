"""Reliability checks: hostile inputs, crashes and load, each a command whose figures go in RELIABILITY.md."""
