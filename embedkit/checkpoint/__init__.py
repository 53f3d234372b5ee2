"""Checkpoint lifecycle: what a model folder holds and how to turn it into something every consumer loads."""

from .layout import check_model_folder, find_tokenizer_files, find_weight_files

__all__ = ["check_model_folder", "find_tokenizer_files", "find_weight_files"]
