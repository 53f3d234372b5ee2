"""Checkpoint lifecycle: inspect, save, slim, convert, manifests and safe loading.

Example:
    >>> from embedkit.checkpoint import save, inspect_folder, verify_manifest
    >>> save("out/checkpoint-1500", "my-model", pooling="cls")
    >>> verify_manifest("my-model").ok
    True
"""

from ..folder.layout import check_model_folder, classify_file, find_tokenizer_files, find_weight_files
from ..folder.safe_load import load_state_dict
from .convert import ConvertReport, convert
from .inspect import InspectReport, inspect_folder
from .manifest import generate_keypair, verify_manifest, write_manifest
from .save import SaveResult, save, save_reranker
from .slim import SlimReport, slim

__all__ = [
    "save", "save_reranker", "SaveResult", "slim", "SlimReport", "convert", "ConvertReport", "inspect_folder",
    "InspectReport",
    "write_manifest", "verify_manifest", "generate_keypair", "load_state_dict",
    "check_model_folder", "classify_file", "find_tokenizer_files", "find_weight_files",
]
