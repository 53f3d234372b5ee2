import logging
import shutil

import numpy as np
import pytest
import torch

from embedkit import CheckpointError, Embedder, EmbedkitError, SpecError


def test_single_string_and_empty_list(minilm, hostile_texts):
    one = minilm.encode(hostile_texts[0])
    assert one.shape == (384,) and one.dtype == np.float32
    np.testing.assert_allclose(one, minilm.encode(hostile_texts)[0], atol=1e-5)
    empty = minilm.encode([])
    assert empty.shape == (0, 384) and empty.dtype == np.float32
    assert minilm.dim == 384


def test_empty_and_whitespace_texts_encode(minilm):
    out = minilm.encode(["", " ", "\n\t"])
    assert out.shape == (3, 384)
    assert np.isfinite(out).all()


def test_batch_size_invariance(minilm, hostile_texts):
    a = minilm.encode(hostile_texts, batch_size=1)
    b = minilm.encode(hostile_texts, batch_size=64)
    assert np.abs(a - b).max() <= 1e-5


def test_order_is_restored(minilm, hostile_texts):
    rng = np.random.default_rng(0)
    perm = rng.permutation(len(hostile_texts))
    shuffled = [hostile_texts[i] for i in perm]
    out = minilm.encode(shuffled, batch_size=3)
    singles = np.stack([minilm.encode(t) for t in shuffled])
    assert np.abs(out - singles).max() <= 1e-5
    # duplicates land on identical rows
    base = minilm.encode(hostile_texts, batch_size=3)
    np.testing.assert_allclose(base[0], base[7], atol=1e-6)


def test_convert_to_torch(minilm):
    out = minilm.encode(["a", "b"], convert_to="torch")
    assert isinstance(out, torch.Tensor) and out.shape == (2, 384)
    with pytest.raises(SpecError, match="convert_to"):
        minilm.encode(["a"], convert_to="list")


def test_non_string_items_raise_type_error_naming_index(minilm):
    with pytest.raises(TypeError, match=r"texts\[2\] is int"):
        minilm.encode(["a", "b", 3])
    with pytest.raises(TypeError, match=r"texts\[0\] is NoneType"):
        minilm.encode_queries([None])
    with pytest.raises(TypeError, match="got bytes"):
        minilm.encode(b"bytes")


def test_truncate_dim(minilm_dir):
    m = Embedder(minilm_dir, truncate_dim=64, show_progress=False)
    out = m.encode(["hello", "world"])
    assert out.shape == (2, 64) and m.dim == 64
    np.testing.assert_allclose(np.linalg.norm(out, axis=1), 1.0, atol=1e-5)


def test_max_length_per_call_changes_long_text(minilm, hostile_texts):
    long = hostile_texts[6]
    assert not np.allclose(minilm.encode(long, max_length=8), minilm.encode(long))
    with pytest.raises(SpecError, match="exceeds"):
        minilm.encode(long, max_length=4096)


@pytest.mark.parametrize("bad", ["BAAI/bge-small-en-v1.5", "./no/such/folder"])
def test_not_a_local_folder(bad):
    with pytest.raises(CheckpointError, match="offline") as info:
        Embedder(bad)
    assert "tried" in info.value.message and info.value.hint


def test_a_file_is_not_a_folder(tmp_path):
    f = tmp_path / "model.safetensors"
    f.write_bytes(b"x")
    with pytest.raises(CheckpointError, match="is a file"):
        Embedder(f)


def test_missing_weights_and_tokenizer_are_listed(tiny_copy):
    folder = tiny_copy("incomplete")
    (folder / "model.safetensors").unlink()
    for name in ("tokenizer.json", "vocab.txt"):
        (folder / name).unlink()
    with pytest.raises(CheckpointError) as info:
        Embedder(folder)
    assert "weights" in info.value.message and "tokenizer" in info.value.message


def test_missing_config(tiny_copy):
    folder = tiny_copy("noconfig")
    (folder / "config.json").unlink()
    with pytest.raises(CheckpointError, match="config.json"):
        Embedder(folder)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"pooling": "max"}, "unknown pooling 'max'"),
        ({"max_length": 0}, "positive integer"),
        ({"query_max_length": -3}, "query_max_length must be a positive integer"),
        ({"passage_max_length": 10_000}, "exceeds what the model can take"),
        ({"truncate_dim": 33}, "larger than the model's hidden size 32"),
        ({"truncate_dim": 0}, "positive integer"),
        ({"query_instruction_format": "{}"}, "two"),
        ({"batch_size": 0}, "batch_size"),
        ({"dtype": "int3"}, "unknown dtype"),
    ],
)
def test_bad_arguments_fail_at_construction(tiny_bert, kwargs, match):
    with pytest.raises(SpecError, match=match) as info:
        Embedder(tiny_bert, **kwargs)
    assert isinstance(info.value, EmbedkitError)


def test_st_layout_without_normalize_folder_is_fine(minilm):
    # the packaged MiniLM lists 2_Normalize in modules.json but ships no such folder
    assert minilm.spec.normalize is True
    assert "modules.json" in minilm.spec.provenance["normalize"]


def test_broken_st_file_names_the_file(tiny_copy):
    folder = tiny_copy("broken-st")
    (folder / "modules.json").write_text("[{not json", encoding="utf-8")
    with pytest.raises(CheckpointError, match=r"modules.json: invalid JSON at line 1"):
        Embedder(folder)


def test_unsupported_st_module_is_refused(tiny_copy):
    folder = tiny_copy("dense-st")
    (folder / "modules.json").write_text(
        '[{"idx":0,"name":"0","path":"","type":"sentence_transformers.models.Transformer"},'
        '{"idx":1,"name":"1","path":"1_Dense","type":"sentence_transformers.models.Dense"}]', encoding="utf-8")
    with pytest.raises(SpecError, match="Dense"):
        Embedder(folder)


def test_copy_of_minilm_loads_from_any_folder(minilm_dir, tmp_path):
    dst = tmp_path / "copied"
    shutil.copytree(minilm_dir, dst)
    m = Embedder(dst, show_progress=False)
    assert m.spec.pooling == "mean"


def test_assumed_spec_warns(tiny_bert, caplog):
    with caplog.at_level(logging.WARNING, logger="embedkit"):
        Embedder(tiny_bert, show_progress=False)
    assert "assuming pooling='cls', normalize=True" in caplog.text
    assert "embedkit save" in caplog.text


def test_tiny_tokenizer_knows_its_words(tiny_bert):
    """Guard: the tiny tokenizer must map real words to real ids (transformers 5 ignores `vocab_file=`)."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(tiny_bert), local_files_only=True)
    ids = tok("the quick brown fox 中文")["input_ids"]
    assert tok.unk_token_id not in ids


def test_library_loading_shows_no_transformers_bar_unless_verbose():
    import os
    import subprocess
    import sys

    code = "from embedkit import Embedder; Embedder('minilm').encode('x')"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path), HF_HUB_OFFLINE="1")
    for name in ("EMBEDKIT_VERBOSE", "HF_HUB_DISABLE_PROGRESS_BARS", "TRANSFORMERS_VERBOSITY", "TQDM_DISABLE"):
        env.pop(name, None)
    quiet = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert quiet.returncode == 0 and "Loading weights" not in quiet.stderr, quiet.stderr[-2000:]
    loud = subprocess.run([sys.executable, "-c", code], env=dict(env, EMBEDKIT_VERBOSE="1"), capture_output=True,
                          text=True, timeout=300)
    assert loud.returncode == 0 and "Loading weights" in loud.stderr


# ---------------------------------------------------------------------- the backend protocol (issue 12)
def test_every_backend_declares_the_protocol(tiny_bert, tmp_path):
    """Each backend class declares its ``output`` kind; instances carry hidden_size / input_names / device / dtype
    and ``forward`` returns what ``output`` says: ``(hidden, mask)`` tensors or pooled float32 vectors."""
    import typing

    from embedkit.backends import OUTPUT_KINDS, PROTOCOL_ATTRIBUTES, HiddenBackend, PooledBackend
    from embedkit.backends.onnx_backend import OnnxBackend
    from embedkit.backends.torch_backend import TorchBackend
    from embedkit.checkpoint.save import save
    from embedkit.export.onnx import export_onnx

    for cls, kind in ((TorchBackend, "hidden"), (OnnxBackend, "pooled")):
        assert cls.output == kind and kind in OUTPUT_KINDS
        assert typing.get_args(typing.get_type_hints(cls)["output"]) == (kind,)
    src = tmp_path / "src"
    save(tiny_bert, src, pooling="mean", normalize=True)
    out = export_onnx(src, tmp_path / "onnx").path
    torch_model = Embedder(out, show_progress=False)
    onnx_model = Embedder(out, backend="onnx", show_progress=False)
    padded = {k: v for k, v in torch_model.tokenizer(["a cat", "the quick brown fox"], padding=True,
                                                    return_tensors="np").items()}
    for model, protocol in ((torch_model, HiddenBackend), (onnx_model, PooledBackend)):
        assert isinstance(model.backend, protocol)
        assert all(hasattr(model.backend, name) for name in PROTOCOL_ATTRIBUTES)
        assert model.backend.hidden_size == 32
    hidden, mask = torch_model.backend.forward(padded)
    assert isinstance(hidden, torch.Tensor) and hidden.shape[:2] == mask.shape and hidden.shape[2] == 32
    pooled = onnx_model.backend.forward(padded)
    assert isinstance(pooled, np.ndarray) and pooled.shape == (2, 32) and pooled.dtype == np.float32
    assert np.abs(onnx_model.encode(["a cat"]) - torch_model.encode(["a cat"])).max() <= 1e-5


def test_no_caller_probes_the_backend():
    """Callers branch on ``backend.output``; nothing probes ``pooled`` / ``model`` attributes to guess the kind."""
    import re
    from pathlib import Path

    import embedkit

    probe = re.compile(r"""(getattr|hasattr)\([^)]*backend[^)]*["'](pooled|model)["']""")
    found = [f"{p}:{i}" for p in sorted(Path(embedkit.__file__).parent.rglob("*.py"))
             for i, line in enumerate(p.read_text(encoding="utf-8").splitlines(), 1) if probe.search(line)]
    assert not found, found


def test_encode_methods_share_one_loop(minilm):
    """encode / encode_queries / encode_corpus differ only in text preparation and max length (one _encode_as)."""
    texts = ["a cat", "", "the quick brown fox"]
    assert np.array_equal(minilm.encode_queries(texts), minilm.encode(texts, max_length=minilm.spec.query_max_length))
    assert np.array_equal(minilm.encode_corpus(texts), minilm.encode(texts))
    assert isinstance(minilm.encode_corpus(texts, convert_to="torch"), torch.Tensor)
    with pytest.raises(SpecError, match="convert_to"):
        minilm.encode_queries(texts, convert_to="list")
