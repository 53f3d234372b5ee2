"""Shared fixtures: tiny random models built once per session, the real bundled MiniLM, hostile texts."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")

import pytest  # noqa: E402

HOSTILE_TEXTS = [
    "The quick brown fox jumps over the lazy dog.",
    "",
    "   ",
    "\n\nleading and trailing newlines\n\n",
    "中文 测试 文本",
    "emoji 😀🚀 in text",
    " ".join(["a long text that goes past the max length"] * 40),
    "The quick brown fox jumps over the lazy dog.",
    "short",
    "Tabs\tand\tmixed   spaces, punctuation!?",
]

_TINY_WORDS = (
    "the quick brown fox jumps over lazy dog a long text that goes past max length short tabs and mixed spaces "
    "punctuation leading trailing newlines emoji in query passage represent this sentence for searching hello "
    "world what is bge cat"
).split()


def _write_tiny_tokenizer(folder: Path, model_max_length: int) -> None:
    from transformers import BertTokenizerFast

    letters = [chr(c) for c in range(ord("a"), ord("z") + 1)] + list("0123456789")
    punct = list(".,!?:;'\"-()")
    cjk = list("中文测试本")
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + sorted(set(_TINY_WORDS)) + letters + punct + cjk
    vocab += ["##" + ch for ch in letters]
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.txt").write_text("\n".join(dict.fromkeys(vocab)) + "\n", encoding="utf-8")
    tok = BertTokenizerFast(vocab=str(folder / "vocab.txt"), do_lower_case=True,
                            model_max_length=model_max_length)
    tok.save_pretrained(str(folder))


def build_tiny_bert(folder: Path, seed: int = 0, max_positions: int = 128) -> Path:
    """A random 2-layer BERT (hidden 32) with a ~100-token word-piece vocab, saved with its tokenizer."""
    import torch
    from transformers import BertConfig, BertModel

    _write_tiny_tokenizer(folder, model_max_length=max_positions)
    vocab_size = len((folder / "vocab.txt").read_text(encoding="utf-8").split("\n")) - 1
    torch.manual_seed(seed)
    config = BertConfig(vocab_size=vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                        intermediate_size=64, max_position_embeddings=max_positions)
    BertModel(config).eval().save_pretrained(str(folder))
    return folder


@pytest.fixture(scope="session")
def tiny_bert(tmp_path_factory) -> Path:
    """A tiny random BERT folder without any sentence-transformers files (spec falls back to assumptions)."""
    return build_tiny_bert(tmp_path_factory.mktemp("models") / "tiny-bert")


@pytest.fixture
def tiny_copy(tiny_bert, tmp_path):
    """Copy the tiny BERT under a new folder name (to test family-table and bad-folder cases)."""

    def make(name: str) -> Path:
        dst = tmp_path / name
        shutil.copytree(tiny_bert, dst)
        return dst

    return make


@pytest.fixture(scope="session")
def minilm_dir() -> Path:
    from embedkit.models import minilm_path

    return minilm_path()


@pytest.fixture(scope="session")
def minilm(minilm_dir):
    from embedkit import Embedder

    return Embedder(minilm_dir, device="cpu", show_progress=False)


@pytest.fixture(scope="session")
def st_minilm(minilm_dir):
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(str(minilm_dir), device="cpu", local_files_only=True)


@pytest.fixture
def hostile_texts() -> list[str]:
    return list(HOSTILE_TEXTS)


# ---------------------------------------------------------------------- manifest tests (test_*manifest.py)
@pytest.fixture
def folder(tmp_path):
    """A small model-like folder: top-level files, a sub-folder, a binary file."""
    d = tmp_path / "model"
    (d / "1_Pooling").mkdir(parents=True)
    (d / "config.json").write_text('{"hidden_size": 32}\n')
    (d / "1_Pooling" / "config.json").write_text('{"pooling_mode_cls_token": true}\n')
    (d / "model.safetensors").write_bytes(bytes(range(256)) * 9)
    (d / "vocab.txt").write_text("[PAD]\n[UNK]\nhello\n")
    return d


@pytest.fixture
def keys(tmp_path):
    from embedkit.checkpoint.manifest import generate_keypair

    return generate_keypair(tmp_path / "keys" / "release.key")
