"""Stages that ask a model: generation, dialogue, rewrites, reward scores, and the structured-output parsing they share."""
