"""Stages that read inputs and write results: JSONL, Parquet and Hugging Face datasets."""
