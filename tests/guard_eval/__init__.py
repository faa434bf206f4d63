"""Offline labelled evaluation set for the guard scanners (see generate.py)."""
