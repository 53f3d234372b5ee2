"""embedkit save: HF + sentence-transformers layout, loaded back by the real peers."""

import json
import os

import numpy as np
import pytest
import torch

from embedkit import CheckpointError, Embedder, EmbedderSpec
from embedkit.checkpoint.manifest import verify_manifest
from embedkit.checkpoint.save import save
from embedkit.cli import main

TEXTS = ["hello world", "", "  \n", "the quick brown fox " * 30, "中文 测试", "what is bge"]
TOL = 1e-5


def _diff(a, b):
    return float(np.abs(np.asarray(a) - np.asarray(b)).max())


@pytest.fixture(scope="module")
def saved_tiny(tiny_bert, tmp_path_factory):
    dst = tmp_path_factory.mktemp("save") / "tiny-saved"
    result = save(tiny_bert, dst, pooling="cls", normalize=True, query_instruction="query: ", max_length=48)
    return dst, result


def test_layout_files(saved_tiny):
    dst, result = saved_tiny
    for name in ("config.json", "model.safetensors", "tokenizer.json", "modules.json", "sentence_bert_config.json",
                 "1_Pooling/config.json", "config_sentence_transformers.json", "README.md",
                 "embedkit-manifest.json"):
        assert (dst / name).is_file(), name
    assert (dst / "2_Normalize").is_dir()
    modules = json.loads((dst / "modules.json").read_text())
    assert [m["type"].rsplit(".", 1)[-1] for m in modules] == ["Transformer", "Pooling", "Normalize"]
    pool = json.loads((dst / "1_Pooling/config.json").read_text())
    assert pool["pooling_mode_cls_token"] is True and pool["word_embedding_dimension"] == 32
    cst = json.loads((dst / "config_sentence_transformers.json").read_text())
    assert cst["prompts"] == {"query": "query: ", "document": ""}
    assert result.sentence_transformers and verify_manifest(dst).ok
    card = (dst / "README.md").read_text()
    for lib in ("embedkit", "sentence_transformers", "FlagEmbedding", "transformers"):
        assert lib in card


def test_sentence_transformers_and_flagembedding_load_our_save(saved_tiny):
    from FlagEmbedding import FlagModel
    from sentence_transformers import SentenceTransformer

    dst, _ = saved_tiny
    ours = Embedder(dst, show_progress=False)
    assert (ours.spec.pooling, ours.spec.query_instruction, ours.spec.query_max_length) == ("cls", "query: ", 48)
    st = SentenceTransformer(str(dst), device="cpu", local_files_only=True)
    assert _diff(st.encode(TEXTS, prompt_name="query"), ours.encode_queries(TEXTS)) <= TOL
    assert _diff(st.encode(TEXTS, prompt_name="document"), ours.encode_corpus(TEXTS)) <= TOL
    flag = FlagModel(str(dst), pooling_method="cls", query_instruction_for_retrieval="query: ", use_fp16=False,
                     devices="cpu", query_max_length=48, passage_max_length=48)
    assert _diff(flag.encode_queries(TEXTS), ours.encode_queries(TEXTS)) <= TOL


def test_minilm_save_roundtrip_with_sentence_transformers(minilm_dir, st_minilm, tmp_path):
    from sentence_transformers import SentenceTransformer

    dst = tmp_path / "minilm-saved"
    save(minilm_dir, dst, query_instruction="query: ")
    ours = Embedder(dst, show_progress=False)
    st = SentenceTransformer(str(dst), device="cpu", local_files_only=True)
    assert _diff(st.encode(TEXTS, prompt_name="query"), ours.encode_queries(TEXTS)) <= TOL
    assert _diff(st.encode(TEXTS), st_minilm.encode(TEXTS)) <= TOL  # same vectors as the original package


def test_format_bin_really_writes_pytorch_model_bin(tiny_bert, tmp_path):
    from transformers import AutoModel

    dst = tmp_path / "bin"
    save(tiny_bert, dst, pooling="mean", format="bin")
    assert (dst / "pytorch_model.bin").is_file() and not (dst / "model.safetensors").exists()
    AutoModel.from_pretrained(str(dst), local_files_only=True)
    a = Embedder(dst, show_progress=False).encode(TEXTS)
    b = Embedder(tiny_bert, pooling="mean", show_progress=False).encode(TEXTS)
    assert _diff(a, b) == 0.0
    both = tmp_path / "both"
    save(tiny_bert, both, pooling="mean", format="both")
    assert (both / "pytorch_model.bin").is_file() and (both / "model.safetensors").is_file()


def test_dtype_bf16_keeps_cosine(minilm_dir, tmp_path):
    dst = tmp_path / "bf16"
    save(minilm_dir, dst, dtype="bf16")
    a = Embedder(dst, show_progress=False).encode(TEXTS)
    b = Embedder(minilm_dir, show_progress=False).encode(TEXTS)
    assert float((a * b).sum(1).min()) >= 0.999


def test_no_sentence_transformers_flag(tiny_bert, tmp_path):
    dst = tmp_path / "hf-only"
    result = save(tiny_bert, dst, pooling="cls", normalize=True, sentence_transformers=False)
    assert not (dst / "modules.json").exists() and not result.sentence_transformers
    assert (dst / "model.safetensors").is_file()


def test_st_step_failure_keeps_hf_checkpoint(tiny_bert, tmp_path, monkeypatch, caplog):
    import embedkit.spec

    def broken(*args, **kwargs):  # the failure FlagEmbedding issue #716 hit while re-reading the model
        raise OSError(19, "No such device")

    monkeypatch.setattr(embedkit.spec, "write_sentence_transformers_files", broken)
    dst = tmp_path / "st-fails"
    result = save(tiny_bert, dst, pooling="cls", normalize=True)
    assert not result.sentence_transformers
    assert any("No such device" in w for w in result.warnings) and "No such device" in caplog.text
    assert not (dst / "modules.json").exists()
    assert verify_manifest(dst).ok
    Embedder(dst, pooling="cls", show_progress=False).encode("still loads")


def test_save_model_object_for_the_trainer(tiny_bert, tmp_path):
    from transformers import AutoModel, AutoTokenizer

    model = AutoModel.from_pretrained(str(tiny_bert), local_files_only=True)
    tok = AutoTokenizer.from_pretrained(str(tiny_bert), local_files_only=True)
    spec = EmbedderSpec(pooling="mean", normalize=True, query_instruction="q: ", query_max_length=32,
                        passage_max_length=64)
    dst = tmp_path / "from-object"
    save(model, dst, spec=spec, tokenizer=tok, dtype="bf16")
    assert model.dtype == torch.float32  # the caller's model is not modified
    loaded = Embedder(dst, show_progress=False)
    assert loaded.spec.to_dict() == spec.to_dict()


def test_m3_heads_are_copied_and_checked(tiny_copy, tmp_path):
    src = tiny_copy("m3ish")
    torch.save(torch.nn.Linear(32, 1).state_dict(), src / "sparse_linear.pt")
    dst = tmp_path / "m3-out"
    save(src, dst, pooling="cls", normalize=True)
    assert (dst / "sparse_linear.pt").is_file()


# ---------------------------------------------------------------------- bad input: clear error, nothing written
def _assert_nothing_written(dst):
    assert not dst.exists()
    assert not [p for p in dst.parent.iterdir() if p.name.startswith(f".{dst.name}.")]


def test_destination_exists_needs_overwrite(saved_tiny, tiny_bert):
    dst, _ = saved_tiny
    before = (dst / "model.safetensors").read_bytes()
    with pytest.raises(CheckpointError, match="already exists") as info:
        save(tiny_bert, dst, pooling="cls")
    assert "--overwrite" in info.value.hint
    assert (dst / "model.safetensors").read_bytes() == before


def test_overwrite_replaces_atomically(tiny_bert, tmp_path):
    dst = tmp_path / "ow"
    save(tiny_bert, dst, pooling="cls", normalize=True)
    save(tiny_bert, dst, pooling="mean", normalize=True, overwrite=True)
    assert Embedder(dst, show_progress=False).spec.pooling == "mean"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ow"]


def test_destination_inside_source(tiny_copy):
    src = tiny_copy("src-model")
    with pytest.raises(CheckpointError, match="inside the source"):
        save(src, src / "out", pooling="cls")
    assert not (src / "out").exists()


@pytest.mark.parametrize("case", ["not-a-folder", "empty", "truncated-header", "config-not-json", "shape-mismatch"])
def test_bad_sources(case, tiny_copy, tmp_path):
    if case == "not-a-folder":
        src = tmp_path / "file.bin"
        src.write_bytes(b"x")
    elif case == "empty":
        src = tmp_path / "empty"
        src.mkdir()
    else:
        src = tiny_copy(case)
        if case == "truncated-header":
            data = (src / "model.safetensors").read_bytes()
            (src / "model.safetensors").write_bytes(data[:100])
        elif case == "config-not-json":
            (src / "config.json").write_text("{not json")
        elif case == "shape-mismatch":
            cfg = json.loads((src / "config.json").read_text())
            cfg["intermediate_size"] = 128
            (src / "config.json").write_text(json.dumps(cfg))
    dst = tmp_path / "out"
    with pytest.raises(CheckpointError) as info:
        save(src, dst, pooling="cls", normalize=True)
    assert info.value.hint
    _assert_nothing_written(dst)


def test_cli_save(tiny_bert, tmp_path, capsys):
    dst = tmp_path / "cli-saved"
    rc = main(["save", str(tiny_bert), str(dst), "--pooling", "mean", "--normalize", "--query-instruction",
               "query: ", "--max-length", "40", "--format", "both"])
    assert rc == 0, capsys.readouterr().err
    assert "saved" in capsys.readouterr().out
    spec = Embedder(dst, show_progress=False).spec
    assert (spec.pooling, spec.query_instruction, spec.passage_max_length) == ("mean", "query: ", 40)
    assert main(["save", str(tiny_bert), str(dst)]) == 2
    assert "already exists" in capsys.readouterr().err
    assert os.path.isdir(dst)
