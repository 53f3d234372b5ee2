import json
import logging

import pytest

from embedkit import EmbedderSpec, SpecError
from embedkit.spec import ARGUMENT, ASSUMED, load_spec, match_family


def test_rule1_arguments_win(minilm_dir):
    spec = load_spec(minilm_dir, {"pooling": "cls", "normalize": False, "max_length": 128})
    assert (spec.pooling, spec.normalize, spec.query_max_length, spec.passage_max_length) == ("cls", False, 128, 128)
    for f in ("pooling", "normalize", "query_max_length", "passage_max_length"):
        assert spec.provenance[f] == ARGUMENT


def test_max_length_does_not_override_specific_lengths(tiny_bert):
    spec = load_spec(tiny_bert, {"max_length": 64, "query_max_length": 16}, warn=False)
    assert (spec.query_max_length, spec.passage_max_length) == (16, 64)


def test_rule2_sentence_transformers_files(minilm_dir):
    spec = load_spec(minilm_dir)
    assert spec.pooling == "mean" and spec.normalize is True and spec.query_max_length == 256
    assert spec.provenance["pooling"] == "sentence-transformers (1_Pooling/config.json)"
    assert spec.provenance["query_max_length"] == "sentence-transformers (sentence_bert_config.json)"


def test_rule2_prompts_and_embedkit_section(tiny_copy):
    folder = tiny_copy("with-prompts")
    (folder / "modules.json").write_text(json.dumps([
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
    ]))
    (folder / "1_Pooling").mkdir()
    (folder / "1_Pooling" / "config.json").write_text(json.dumps({"pooling_mode": "lasttoken"}))
    (folder / "config_sentence_transformers.json").write_text(json.dumps({
        "prompts": {"query": "query: ", "document": ""},
        "embedkit": {"query_instruction_format": "{}: {}", "truncate_dim": 8},
    }))
    spec = load_spec(folder)
    assert spec.pooling == "last_token" and spec.normalize is False  # no Normalize module: ST does not normalize
    assert spec.query_instruction == "query: " and spec.passage_instruction is None
    assert spec.query_instruction_format == "{}: {}" and spec.truncate_dim == 8
    assert "prompts" in spec.provenance["query_instruction"]
    assert spec.provenance["truncate_dim"].startswith("saved embedkit spec")


def test_rule2_unsupported_pooling_mode(tiny_copy):
    folder = tiny_copy("max-pool")
    (folder / "modules.json").write_text(json.dumps([
        {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"}]))
    (folder / "1_Pooling").mkdir()
    (folder / "1_Pooling" / "config.json").write_text(json.dumps({"pooling_mode_max_tokens": True}))
    with pytest.raises(SpecError, match="pooling mode 'max_tokens' is not supported"):
        load_spec(folder)


def test_rule3_family_table(tiny_copy):
    folder = tiny_copy("bge-small-en-v1.5")
    spec = load_spec(folder)
    assert spec.pooling == "cls" and spec.normalize is True
    assert spec.query_instruction.startswith("Represent this sentence")
    assert spec.provenance["pooling"] == "family table (bge-en-v1.5)"
    e5 = load_spec(tiny_copy("multilingual-e5-small"))
    assert (e5.pooling, e5.query_instruction, e5.passage_instruction) == ("mean", "query: ", "passage: ")


def test_rule4_assumed_with_warning(tiny_bert, caplog):
    with caplog.at_level(logging.WARNING, logger="embedkit"):
        spec = load_spec(tiny_bert)
    assert spec.provenance["pooling"] == ASSUMED and spec.provenance["normalize"] == ASSUMED
    assert (spec.pooling, spec.normalize) == ("cls", True)
    assert "embedkit save" in caplog.text and "--pooling" in caplog.text
    assert spec.provenance["query_max_length"].startswith("model limit")
    assert spec.query_max_length == 128


def test_family_matching():
    from pathlib import Path

    assert match_family(Path("/m/bge-m3")).name == "bge-m3"
    assert match_family(Path("/m/my-model"), {"_name_or_path": "BAAI/bge-base-en-v1.5"}).name == "bge-en-v1.5"
    assert match_family(Path("/m/gte-Qwen2-1.5B-instruct")).values["pooling"] == "last_token"
    assert match_family(Path("/m/Qwen3-Embedding-0.6B")).values["pooling"] == "last_token"
    assert match_family(Path("/m/something-else")) is None


def test_spec_format_and_newline():
    spec = EmbedderSpec(query_instruction="Find", query_instruction_format="Instruct: {}\\nQuery: {}")
    assert spec.format_query("x") == "Instruct: Find\nQuery: x"
    assert spec.format_passage("x") == "x"
    assert EmbedderSpec().to_dict()["pooling"] == "cls"


def test_instruction_overrides_replace_one_side_only():
    from embedkit.spec import instruction_overrides

    assert instruction_overrides("query", "q: ") == {"query_instruction": "q: ", "query_instruction_format": None}
    assert instruction_overrides("passage", "p: ", "{}| {}") == {
        "passage_instruction": "p: ", "passage_instruction_format": "{}| {}"}
    assert instruction_overrides(None, "plain: ") == {}  # plain texts: Embedder.encode(instruction=...)
    assert instruction_overrides("query", None, "{}{}") == {}  # no instruction: the spec's stays
    with pytest.raises(SpecError, match="'query', 'passage' or None") as err:
        instruction_overrides("queries", "q: ")
    assert err.value.param == "side"

    spec = load_spec("minilm", instruction_overrides("query", "Q", "{} -> {}"))
    assert spec.format_query("cats") == "Q -> cats" and spec.provenance["query_instruction"] == ARGUMENT
    assert spec.format_passage("cats") == load_spec("minilm").format_passage("cats")
    kept = load_spec("minilm", instruction_overrides("passage", "P: "))  # format None: the spec's format stays
    assert kept.passage_instruction_format == load_spec("minilm").passage_instruction_format


def test_text_preparation_is_one_function_with_lower_casing_and_row_prompts():
    """Encode, bge-m3, training rows and the training-data summary all prepare text through EmbedderSpec.prepare*:
    the instruction is joined, then do_lower_case applies (the summary used to forget lower-casing)."""
    from embedkit.spec import EmbedderSpec

    spec = EmbedderSpec(query_instruction="Q: ", passage_instruction="P: ", do_lower_case=True)
    assert spec.prepare_query("Hello World") == "q: hello world"
    assert spec.prepare_query("Hello World", "Row prompt: ") == "row prompt: hello world"
    assert spec.prepare_passage("A Passage") == "p: a passage"
    assert spec.prepare("Text", "I ", "{}-{}") == "i -text"
    cased = EmbedderSpec(query_instruction="Q: ")
    assert cased.prepare_query("Hello") == "Q: Hello"


# ---------------------------------------------------------------------- sentence-transformers reader / writer pairs
def test_each_sentence_transformers_writer_is_read_back_by_its_reader(tmp_path):
    """Each ST file has a reader and a writer (as ST's modules own their configs): what one writes, the other reads."""
    from embedkit.spec import sentence_transformers as st

    spec = EmbedderSpec(pooling="mean", normalize=False, query_instruction="q: ", passage_instruction="p: ",
                        query_max_length=64, passage_max_length=64, truncate_dim=16, do_lower_case=True)
    warnings = st.write_sentence_transformers_files(tmp_path, spec, hidden_size=32)
    assert any("truncate_dim=16" in w for w in warnings)
    assert st.read_modules(tmp_path) == {"pooling": ("mean", "sentence-transformers (1_Pooling/config.json)"),
                                         "normalize": (False, "sentence-transformers (modules.json)")}
    assert not (tmp_path / "2_Normalize").exists()
    sbert = st.read_transformer_config(tmp_path)
    assert {k: v for k, (v, _) in sbert.items()} == {"query_max_length": 64, "passage_max_length": 64,
                                                     "do_lower_case": True}
    saved = st.read_model_config(tmp_path)
    assert {k: v for k, (v, _) in saved.items()} == spec.to_dict()  # the embedkit section holds every field
    assert json.loads((tmp_path / "config_sentence_transformers.json").read_text())["prompts"] == {
        "query": "q: ", "document": "p: "}
    everything = st.read_sentence_transformers_spec(tmp_path)
    assert {k: v for k, (v, _) in everything.items()} == spec.to_dict()


# ---------------------------------------------------------------------- config.json read once
def test_embedder_parses_config_json_once(tiny_bert, tmp_path, monkeypatch):
    """``Embedder(path)`` wants config.json in the folder check (twice), the spec, the token limit (twice) and the
    tokenizer and model loaders: embedkit parses it once and transformers once (one AutoConfig for tokenizer and
    model). It was read six times. tokenizer_config.json: embedkit reads it once (transformers reads its own)."""
    import builtins
    import shutil
    from collections import Counter
    from pathlib import Path

    from embedkit import Embedder
    from embedkit.folder import layout

    folder = tmp_path / "m"
    shutil.copytree(tiny_bert, folder)
    # a folder written less than 2 s ago is never cached (a same-size rewrite in the same clock tick would go
    # unnoticed): let this fresh copy count as settled, as any folder is a moment after it was written
    monkeypatch.setattr(layout, "_RACY_NS", -1)
    ours, theirs = Counter(), Counter()
    read_bytes, real_open = Path.read_bytes, builtins.open

    def counting_read_bytes(self):
        ours[self.name] += self.parent == folder
        return read_bytes(self)

    def counting_open(file, *args, **kwargs):
        theirs[Path(file).name] += Path(file).parent == folder
        return real_open(file, *args, **kwargs)

    monkeypatch.setattr(Path, "read_bytes", counting_read_bytes)
    monkeypatch.setattr(builtins, "open", counting_open)
    Embedder(folder, pooling="cls", show_progress=False)
    assert ours["config.json"] == 1 and ours["tokenizer_config.json"] == 1
    assert theirs["config.json"] == 1  # transformers' AutoConfig, shared by AutoTokenizer and AutoModel


def test_cached_json_sees_every_change(tmp_path, monkeypatch):
    from embedkit.errors import CheckpointError
    from embedkit.folder import layout

    path = tmp_path / "config.json"
    path.write_text('{"hidden_size": 32}')
    assert layout.read_json_cached(path) == {"hidden_size": 32}
    path.write_text('{"hidden_size": 64}')  # same size, same clock tick: a "racy" file is never trusted
    assert layout.read_json_cached(path) == {"hidden_size": 64}

    monkeypatch.setattr(layout, "_RACY_NS", -1)  # every file counts as settled
    first = layout.read_json_cached(path)
    first["hidden_size"] = 1  # callers get a copy
    assert layout.read_json_cached(path) == {"hidden_size": 64}
    path.write_text('{"hidden_size": 128}')
    assert layout.read_json_cached(path) == {"hidden_size": 128}
    path.write_text("[1]")
    with pytest.raises(CheckpointError, match="expected a JSON object"):
        layout.read_config(tmp_path)
    path.write_text("{")
    for _ in range(2):  # errors are not cached
        with pytest.raises(CheckpointError, match="invalid JSON"):
            layout.read_json_cached(path)
