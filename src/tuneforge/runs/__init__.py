"""Iterate: the runs of a folder as tables (runs ls) and side by side (runs compare)."""
