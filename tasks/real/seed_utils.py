"""SEED-Bench hook: evaluate the image questions only (the paper reports SEED-image)."""

from __future__ import annotations


def keep_image_questions(dataset):
    """Rows with ``data_type == "image"``; an error if there are none (never a silent empty score)."""
    kept = dataset.filter(lambda data_type: data_type == "image", input_columns=["data_type"])
    if kept.num_rows == 0:
        raise ValueError(f"SEED-Bench: no image questions among {dataset.num_rows} rows; wrong or incomplete data?")
    return kept
