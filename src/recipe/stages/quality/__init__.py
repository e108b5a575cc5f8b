"""Stages that keep the good records: dedup, filters and judges."""
