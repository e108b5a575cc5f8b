"""Stages that reshape records without a model: explode, combine, cross, seeds, lists, preference pairs."""
