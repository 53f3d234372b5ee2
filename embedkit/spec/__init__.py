"""The embedding recipe (:class:`EmbedderSpec`) and how it is resolved for a model folder.

Resolution order, per field, never silent (``spec.provenance`` records which rule decided each field):

1. arguments the user passes;
2. the checkpoint's own sentence-transformers files (``modules.json``, ``1_Pooling/config.json``, ``2_Normalize``,
   ``sentence_bert_config.json``, ``config_sentence_transformers.json`` prompts and its ``embedkit`` section);
3. a small table of known model families, matched on the folder name and ``config.json``;
4. otherwise CLS pooling + L2 normalization (the BGE convention), with a warning naming what was assumed.

Modules: :mod:`.model` (the dataclass, validation, text preparation), :mod:`.families` (the family table),
:mod:`.sentence_transformers` (one reader / writer per sentence-transformers file), :mod:`.resolve` (resolution).
"""

from __future__ import annotations

from .families import FAMILIES, Family, match_family
from .model import ARGUMENT, ASSUMED, DEFAULT, POOLING_MODES, EmbedderSpec
from .resolve import (
    describe,
    instruction_overrides,
    load_spec,
    model_max_length_from_config,
    model_token_limit,
    resolve_spec,
)
from .sentence_transformers import (
    ST_EXTRA_KEY,
    read_json_object,
    read_sentence_transformers_spec,
    sentence_transformers_files,
    st_prompt,
    write_sentence_transformers_files,
)

__all__ = [
    "ARGUMENT",
    "ASSUMED",
    "DEFAULT",
    "FAMILIES",
    "POOLING_MODES",
    "ST_EXTRA_KEY",
    "EmbedderSpec",
    "Family",
    "describe",
    "instruction_overrides",
    "load_spec",
    "match_family",
    "model_max_length_from_config",
    "model_token_limit",
    "read_json_object",
    "read_sentence_transformers_spec",
    "resolve_spec",
    "sentence_transformers_files",
    "st_prompt",
    "write_sentence_transformers_files",
]
