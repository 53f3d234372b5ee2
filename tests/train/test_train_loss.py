"""Losses and GradCache, on real tensors and a tiny real model."""

import pytest
import torch
import torch.nn.functional as F

from embedkit.spec import EmbedderSpec
from embedkit.train.loss import contrastive_loss, gather_with_grad, group_scores, kd_loss
from embedkit.train.model import EmbedderTrainingModel, grad_cache_step


def _vecs(b=4, g=3, d=8, seed=0):
    torch.manual_seed(seed)
    return F.normalize(torch.randn(b, d), dim=-1), F.normalize(torch.randn(b * g, d), dim=-1)


def test_in_batch_loss_by_hand():
    q, p = _vecs()
    scores = q @ p.T / 0.05
    expected = sum(-torch.log_softmax(scores[i], -1)[i * 3] for i in range(4)) / 4
    assert torch.allclose(contrastive_loss(q, p, 3, 0.05, True), expected, atol=1e-5)


def test_group_only_loss_by_hand():
    q, p = _vecs()
    g = group_scores(q, p, 3, 0.05)
    expected = -torch.log_softmax(g, -1)[:, 0].mean()
    assert torch.allclose(contrastive_loss(q, p, 3, 0.05, False), expected, atol=1e-6)
    assert contrastive_loss(q, p, 3, 0.05, True) > contrastive_loss(q, p, 3, 0.05, False)  # more negatives


def test_kd_changes_loss_by_the_distillation_term():
    q, p = _vecs()
    enc = torch.nn.Identity()
    model = EmbedderTrainingModel(enc, EmbedderSpec(), group_size=3, temperature=0.05, kd_weight=0.5)
    teacher = torch.tensor([[5.0, 1.0, 0.0]] * 4)
    base = model.compute_loss(q, p, None)
    with_kd = model.compute_loss(q, p, teacher)
    kd = -(torch.softmax(teacher, -1) * torch.log_softmax(group_scores(q, p, 3, 0.05), -1)).sum(-1).mean()
    assert torch.allclose(with_kd - base, 0.5 * kd, atol=1e-5)
    assert torch.allclose(kd_loss(group_scores(q, p, 3, 0.05), teacher), kd, atol=1e-6)
    model.kd_loss = None
    assert torch.allclose(model.compute_loss(q, p, teacher), base)


def test_gather_is_identity_without_distributed():
    t = torch.randn(3, 2, requires_grad=True)
    assert gather_with_grad(t) is t


def _tiny_training_model(tiny_bert, dropout=0.0):
    from transformers import AutoModel

    enc = AutoModel.from_pretrained(str(tiny_bert), local_files_only=True, hidden_dropout_prob=dropout,
                                    attention_probs_dropout_prob=dropout)
    return EmbedderTrainingModel(enc, EmbedderSpec(pooling="mean"), group_size=2, temperature=0.05)


def _batch(tiny_bert, n=12, chunk=100):
    from transformers import AutoTokenizer

    from embedkit.train.trainer import GroupCollator

    tok = AutoTokenizer.from_pretrained(str(tiny_bert), local_files_only=True)
    words = "the quick brown fox jumps over lazy dog hello world what is bge cat".split()
    torch.manual_seed(0)
    items = [{"query": " ".join(words[i % 7: i % 7 + 1 + i % 4]),
              "passages": [" ".join(words[(i * 3 + j) % 10: (i * 3 + j) % 10 + 2 + (i + j) % 5]) for j in range(2)],
              "scores": torch.randn(2).tolist()} for i in range(n)]
    return GroupCollator(tok, 16, 16, chunk_size=chunk)(items)


def test_collator_chunks_restore_order(tiny_bert):
    model = _tiny_training_model(tiny_bert).eval()
    one = _batch(tiny_bert, chunk=100)
    many = _batch(tiny_bert, chunk=5)
    assert len(many["passage"]["chunks"]) == 5 and len(one["passage"]["chunks"]) == 1
    lengths = [c["input_ids"].shape[1] for c in many["passage"]["chunks"]]
    assert lengths == sorted(lengths, reverse=True) and lengths[0] > lengths[-1]  # less padding per chunk
    with torch.no_grad():
        assert torch.allclose(model.encode_batch(one["passage"]), model.encode_batch(many["passage"]), atol=1e-6)


def test_collator_chunks_are_the_tokenizers_own_padding(tiny_bert):
    """The collator goes through embedkit.batching's features stage: each chunk is exactly what the tokenizer gives
    for those texts padded to their longest, chunks are cut from the token-length order (longest first, ties in
    input order), and ``order`` maps the concatenated chunks back to input order."""
    from transformers import AutoTokenizer

    from embedkit.train.trainer import GroupCollator

    tok = AutoTokenizer.from_pretrained(str(tiny_bert), local_files_only=True)
    words = "the quick brown fox jumps over lazy dog hello world what is bge cat".split()
    items = [{"query": " ".join(words[i % 5: i % 5 + 1 + i % 6]),
              "passages": [" ".join(words[j % 4: j % 4 + 1 + (i * j) % 9]) for j in range(3)], "scores": None}
             for i in range(11)]
    batch = GroupCollator(tok, 6, 8, chunk_size=4)(items)
    assert "teacher_scores" not in batch
    for side, texts, max_length in (("query", [it["query"] for it in items], 6),
                                    ("passage", [p for it in items for p in it["passages"]], 8)):
        lengths = [len(ids) for ids in tok(texts, truncation=True, max_length=max_length)["input_ids"]]
        assert max(lengths) == max_length and min(lengths) < max_length  # some truncated, some padded
        order = sorted(range(len(texts)), key=lambda i: -lengths[i])
        chunks = batch[side]["chunks"]
        assert len(chunks) == -(-len(texts) // 4)
        for c, chunk in enumerate(chunks):
            rows = order[4 * c: 4 * c + 4]
            want = tok([texts[i] for i in rows], truncation=True, max_length=max_length, padding=True,
                       return_tensors="pt")
            assert set(chunk) == set(want) - {"offset_mapping"}
            for key, value in chunk.items():
                assert value.dtype == torch.int64 and torch.equal(value, want[key]), (side, c, key)
        assert [order[i] for i in batch[side]["order"].tolist()] == list(range(len(texts)))


@pytest.mark.parametrize("chunk", [1, 5])
def test_grad_cache_equals_full_batch_gradient(tiny_bert, chunk):
    model = _tiny_training_model(tiny_bert)
    batch = _batch(tiny_bert, chunk=chunk)
    model.train()
    loss = model(**_batch(tiny_bert, chunk=100))["loss"]
    loss.backward()
    full = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad()
    cached_loss = grad_cache_step(model, batch)
    assert torch.allclose(cached_loss, loss.detach(), atol=1e-5)
    worst = max(float((p.grad - full[n]).abs().max()) for n, p in model.named_parameters() if n in full)
    assert worst <= 1e-5, worst


def test_grad_cache_replays_dropout_masks(tiny_bert):
    """With dropout on, each chunk's re-forward must see the masks of its cached forward."""
    model = _tiny_training_model(tiny_bert, dropout=0.3)
    batch = _batch(tiny_bert, n=6, chunk=4)
    model.train()
    torch.manual_seed(1)
    model(**batch)["loss"].backward()
    full = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad()
    torch.manual_seed(1)
    grad_cache_step(model, batch)  # same chunks, same RNG sequence as the plain forward
    worst = max(float((p.grad - full[n]).abs().max()) for n, p in model.named_parameters() if n in full)
    assert worst <= 1e-5, worst
