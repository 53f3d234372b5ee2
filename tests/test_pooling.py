import pytest
import torch

from embedkit import pooling
from embedkit.errors import SpecError


def _batch():
    torch.manual_seed(0)
    hidden = torch.randn(3, 5, 4)
    right = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [1, 0, 0, 0, 0]])
    return hidden, right


def test_cls_takes_first_token():
    hidden, mask = _batch()
    assert torch.equal(pooling.pool(hidden, mask, "cls"), hidden[:, 0])


def test_mean_ignores_padding():
    hidden, mask = _batch()
    out = pooling.pool(hidden, mask, "mean")
    assert torch.allclose(out[0], hidden[0, :3].mean(0))
    assert torch.allclose(out[1], hidden[1].mean(0))
    assert torch.allclose(out[2], hidden[2, 0])


def test_mean_half_precision_is_summed_in_fp32():
    hidden, mask = _batch()
    out = pooling.pool(hidden.to(torch.bfloat16), mask, "mean")
    assert out.dtype == torch.float32


@pytest.mark.parametrize("side", ["right", "left"])
def test_last_token_right_and_left_padding(side):
    hidden, mask = _batch()
    lengths = mask.sum(1)
    if side == "left":
        # move each row's real tokens to the end, padding in front
        hidden_l = torch.zeros_like(hidden)
        mask_l = torch.zeros_like(mask)
        for i, n in enumerate(lengths.tolist()):
            hidden_l[i, 5 - n:] = hidden[i, :n]
            mask_l[i, 5 - n:] = 1
        hidden, mask = hidden_l, mask_l
    out = pooling.pool(hidden, mask, "last_token")
    expected_right = [2, 4, 0]
    for i, n in enumerate(lengths.tolist()):
        pos = 4 if side == "left" else expected_right[i]
        assert torch.equal(out[i], hidden[i, pos]), (side, i, n)


def test_finalize_truncates_then_normalizes():
    x = torch.tensor([[3.0, 4.0, 100.0]])
    out = pooling.finalize(x, normalize=True, truncate_dim=2)
    assert torch.allclose(out, torch.tensor([[0.6, 0.8]]))
    assert torch.equal(pooling.finalize(x, normalize=False), x)


def test_unknown_pooling():
    hidden, mask = _batch()
    with pytest.raises(SpecError, match="unknown pooling 'max'"):
        pooling.pool(hidden, mask, "max")
