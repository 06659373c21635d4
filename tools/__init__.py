"""Maintenance scripts of the course (run from the repository root: ``python tools/NAME.py``)."""
