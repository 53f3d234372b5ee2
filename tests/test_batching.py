import numpy as np
import pytest

from embedkit.batching import batches, length_sorted_order, pad, pad_features


def test_length_sorted_order_longest_first_and_stable():
    order = length_sorted_order([3, 5, 3, 1, 5])
    assert order.tolist() == [1, 4, 0, 2, 3]


def test_batches_cover_everything_once():
    order = np.arange(10)
    chunks = list(batches(order, 4))
    assert [len(c) for c in chunks] == [4, 4, 2]
    assert np.concatenate(chunks).tolist() == list(range(10))
    with pytest.raises(ValueError):
        list(batches(order, 0))


def test_pad_right_and_left():
    assert pad([[1, 2, 3], [4]], 0).tolist() == [[1, 2, 3], [4, 0, 0]]
    assert pad([[1, 2, 3], [4]], 0, "left").tolist() == [[1, 2, 3], [0, 0, 4]]


def test_pad_features_uses_pad_id_for_ids_only():
    feats = {"input_ids": [[5, 6], [7]], "attention_mask": [[1, 1], [1]]}
    out = pad_features(feats, np.array([1, 0]), pad_token_id=9)
    assert out["input_ids"].tolist() == [[7, 9], [5, 6]]
    assert out["attention_mask"].tolist() == [[1, 0], [1, 1]]


def test_low_padding_groups_split_a_sorted_batch_where_padding_would_grow():
    from embedkit.batching import length_sorted_order, low_padding_groups

    lengths = [50] * 10 + [10] * 10 + [48] * 3
    order = length_sorted_order(lengths)
    groups = low_padding_groups(order, lengths, max_waste=0.25, min_rows=8)
    assert [len(g) for g in groups] == [13, 10]
    assert sorted(np.concatenate(groups).tolist()) == list(range(len(lengths)))  # every row, once, in order
    assert np.concatenate(groups).tolist() == order.tolist()
    # a group below min_rows keeps taking rows whatever the padding; nothing, or one row, is one group
    assert [len(g) for g in low_padding_groups(order, lengths, min_rows=100)] == [23]
    assert low_padding_groups(np.arange(0), []) == []
    assert [g.tolist() for g in low_padding_groups(np.arange(1), [7])] == [[0]]
