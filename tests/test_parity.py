"""Side by side with the real peers: sentence-transformers and FlagEmbedding, same model, same texts."""

import numpy as np
import pytest

from embedkit import Embedder

TOL = 1e-5


def _max_diff(a, b) -> float:
    return float(np.abs(np.asarray(a, dtype=np.float32) - np.asarray(b, dtype=np.float32)).max())


def test_minilm_matches_sentence_transformers(minilm, st_minilm, hostile_texts):
    ours = minilm.encode(hostile_texts)
    theirs = st_minilm.encode(hostile_texts, convert_to_numpy=True)
    assert ours.shape == theirs.shape == (len(hostile_texts), 384)
    assert _max_diff(ours, theirs) <= TOL


def test_minilm_query_instruction_matches_st_prompt(minilm_dir, st_minilm, hostile_texts):
    m = Embedder(minilm_dir, query_instruction="query: ", passage_instruction="passage: ", show_progress=False)
    assert _max_diff(m.encode_queries(hostile_texts), st_minilm.encode(hostile_texts, prompt="query: ")) <= TOL
    assert _max_diff(m.encode_corpus(hostile_texts), st_minilm.encode(hostile_texts, prompt="passage: ")) <= TOL


def _flag_model(path, pooling, **kw):
    from FlagEmbedding import FlagModel

    return FlagModel(str(path), pooling_method=pooling, use_fp16=False, devices="cpu", **kw)


@pytest.mark.parametrize("pooling", ["cls", "mean"])
def test_tiny_bert_matches_flagembedding(tiny_bert, hostile_texts, pooling):
    instruction = "Represent this sentence for searching: "
    flag = _flag_model(tiny_bert, pooling, query_instruction_for_retrieval=instruction,
                       query_max_length=24, passage_max_length=40)
    ours = Embedder(tiny_bert, pooling=pooling, normalize=True, query_instruction=instruction,
                    query_max_length=24, passage_max_length=40, show_progress=False)
    assert _max_diff(ours.encode_queries(hostile_texts), flag.encode_queries(hostile_texts)) <= TOL
    assert _max_diff(ours.encode_corpus(hostile_texts), flag.encode_corpus(hostile_texts)) <= TOL
    assert _max_diff(ours.encode(hostile_texts), flag.encode(hostile_texts)) <= TOL


def test_tiny_bert_instruction_format_and_truncation_match_flagembedding(tiny_bert, hostile_texts):
    fmt = "<instruct>{}\\n<query>{}"  # a literal backslash-n means newline, in both
    flag = _flag_model(tiny_bert, "cls", query_instruction_for_retrieval="find it", query_instruction_format=fmt,
                       truncate_dim=16, query_max_length=32)
    ours = Embedder(tiny_bert, pooling="cls", normalize=True, query_instruction="find it",
                    query_instruction_format=fmt, truncate_dim=16, query_max_length=32, show_progress=False)
    a, b = ours.encode_queries(hostile_texts), flag.encode_queries(hostile_texts)
    assert a.shape == b.shape == (len(hostile_texts), 16)
    assert _max_diff(a, b) <= TOL
    assert np.allclose(np.linalg.norm(a, axis=1), 1.0, atol=1e-5)
