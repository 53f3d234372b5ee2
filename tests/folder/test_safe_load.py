"""Reading weights without running untrusted code: pickle refusal, torch files, safetensors header checks."""

from __future__ import annotations

import json
import pickle
import struct
from dataclasses import dataclass

import pytest
import torch

from embedkit.errors import CheckpointError
from embedkit.folder.safe_load import load_pickle, load_state_dict, read_safetensors_header


class Evil:
    """Unpickling this creates ``marker``: the stand-in for arbitrary code in a malicious checkpoint."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


@dataclass
class TrainingArgs:
    """A plain (non-tensor) object, like transformers' training_args.bin."""

    lr: float = 2e-5
    epochs: int = 3


def _state():
    torch.manual_seed(0)
    return {"linear.weight": torch.randn(4, 3), "linear.bias": torch.zeros(4)}


def _assert_same(a, b):
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k])


# ---------------------------------------------------------------------- malicious pickles
@pytest.mark.parametrize("writer", ["pickle", "torch", "torch_nested", "torch_legacy"])
@pytest.mark.parametrize("loader", [load_state_dict, load_pickle])
def test_malicious_pickle_is_refused_and_never_runs(tmp_path, writer, loader):
    marker = tmp_path / "pwned"
    path = tmp_path / "x.bin"
    if writer == "pickle":
        with open(path, "wb") as fh:
            pickle.dump(Evil(marker), fh)
    elif writer == "torch":
        torch.save(Evil(marker), path)
    elif writer == "torch_nested":
        torch.save({"weight": torch.ones(2), "payload": Evil(marker)}, path)
    else:
        torch.save({"payload": Evil(marker)}, path, _use_new_zipfile_serialization=False)
    assert not marker.exists()
    with pytest.raises(CheckpointError) as err:
        loader(path)
    assert "--trust-pickle" in err.value.hint and str(path) in err.value.message
    assert "arbitrary code" in err.value.message
    assert not marker.exists(), "the payload ran"


def test_refusal_names_the_offending_global_without_torch_noise(tmp_path):
    path = tmp_path / "x.pt"
    torch.save({"payload": Evil(tmp_path / "pwned")}, path)
    with pytest.raises(CheckpointError) as err:
        load_state_dict(path)
    msg = str(err.value)
    assert "open" in err.value.message and "weights_only=False" not in msg and "\x1b" not in msg
    assert not (tmp_path / "pwned").exists()


def test_trust_pickle_really_unpickles(tmp_path):
    """The other side of the refusal: with trust_pickle the payload does run (so the refusal is what protects)."""
    marker = tmp_path / "pwned"
    path = tmp_path / "x.bin"
    with open(path, "wb") as fh:
        pickle.dump(Evil(marker), fh)
    load_pickle(path, trust_pickle=True).close()
    assert marker.exists()


# ---------------------------------------------------------------------- normal torch files
@pytest.mark.parametrize("name", ["pytorch_model.bin", "colbert_linear.pt", "head.pth"])
def test_plain_state_dict_loads(tmp_path, name):
    state = _state()
    torch.save(state, tmp_path / name)
    _assert_same(load_state_dict(tmp_path / name), state)


def test_legacy_format_state_dict_loads(tmp_path):
    state = _state()
    torch.save(state, tmp_path / "old.bin", _use_new_zipfile_serialization=False)
    _assert_same(load_state_dict(tmp_path / "old.bin"), state)


def test_wrapped_state_dict_is_unwrapped(tmp_path):
    state = _state()
    torch.save({"state_dict": state, "epoch": 3}, tmp_path / "ckpt.pt")
    _assert_same(load_state_dict(tmp_path / "ckpt.pt"), state)


def test_non_dict_is_not_a_state_dict(tmp_path):
    torch.save(torch.ones(3), tmp_path / "t.pt")
    with pytest.raises(CheckpointError, match="expected a state dict, found Tensor"):
        load_state_dict(tmp_path / "t.pt")


def test_load_pickle_reads_tensors_and_containers_without_trust(tmp_path):
    torch.save({"step": 5, "lrs": [0.1, 0.2], "w": torch.ones(2)}, tmp_path / "s.pt")
    obj = load_pickle(tmp_path / "s.pt")
    assert obj["step"] == 5 and obj["lrs"] == [0.1, 0.2] and torch.equal(obj["w"], torch.ones(2))


@pytest.mark.parametrize("writer", ["torch", "pickle"])
def test_trust_pickle_loads_a_plain_object(tmp_path, writer):
    path = tmp_path / "training_args.bin"
    if writer == "torch":
        torch.save(TrainingArgs(lr=1e-4), path)
    else:
        with open(path, "wb") as fh:
            pickle.dump(TrainingArgs(lr=1e-4), fh)
    with pytest.raises(CheckpointError, match="trust"):
        load_pickle(path)
    assert load_pickle(path, trust_pickle=True) == TrainingArgs(lr=1e-4)


def test_trust_pickle_state_dict_with_extra_objects(tmp_path):
    state = _state()
    torch.save({"state_dict": state, "args": TrainingArgs()}, tmp_path / "ckpt.pt")
    with pytest.raises(CheckpointError):
        load_state_dict(tmp_path / "ckpt.pt")
    _assert_same(load_state_dict(tmp_path / "ckpt.pt", trust_pickle=True), state)


@pytest.mark.parametrize("content", [b"", b"hello, not a pickle", b"\x80\x04garbage"])
@pytest.mark.parametrize("trust", [False, True])
def test_damaged_torch_file_is_a_checkpoint_error(tmp_path, content, trust):
    path = tmp_path / "bad.bin"
    path.write_bytes(content)
    for loader in (load_state_dict, load_pickle):
        with pytest.raises(CheckpointError) as err:
            loader(path, trust_pickle=trust)
        assert str(path) in err.value.message


def test_truncated_torch_file_is_a_checkpoint_error(tmp_path):
    torch.save(_state(), tmp_path / "ok.bin")
    data = (tmp_path / "ok.bin").read_bytes()
    (tmp_path / "cut.bin").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="not a readable"):
        load_state_dict(tmp_path / "cut.bin")


def test_missing_file(tmp_path):
    for loader in (load_state_dict, load_pickle, read_safetensors_header):
        with pytest.raises(CheckpointError, match="does not exist"):
            loader(tmp_path / "nope.bin")


# ---------------------------------------------------------------------- safetensors
@pytest.fixture
def st_file(tmp_path):
    from safetensors.torch import save_file

    path = tmp_path / "model.safetensors"
    save_file(_state(), str(path), metadata={"format": "pt"})
    return path


def _header_len(path):
    return struct.unpack("<Q", path.read_bytes()[:8])[0]


def test_valid_safetensors_loads(st_file):
    _assert_same(load_state_dict(st_file), _state())
    header = read_safetensors_header(st_file)
    assert set(header) == {"linear.weight", "linear.bias"}  # __metadata__ dropped
    assert header["linear.weight"]["shape"] == [4, 3]


@pytest.mark.parametrize("keep", [0, 5, 8, 20, -1])
def test_truncated_safetensors_is_refused(st_file, keep):
    data = st_file.read_bytes()
    n = _header_len(st_file)
    cut = {0: 0, 5: 5, 8: 8, 20: 20, -1: len(data) - 1}[keep]
    assert cut < 8 + n or keep == -1
    st_file.write_bytes(data[:cut])
    with pytest.raises(CheckpointError) as err:
        load_state_dict(st_file)
    assert str(st_file) in err.value.message and err.value.hint


def test_header_length_too_large_is_refused(st_file):
    data = st_file.read_bytes()
    st_file.write_bytes(struct.pack("<Q", 2**63) + data[8:])
    with pytest.raises(CheckpointError, match="corrupt safetensors header"):
        load_state_dict(st_file)
    st_file.write_bytes(struct.pack("<Q", len(data)) + data[8:])  # just past the end of the file
    with pytest.raises(CheckpointError, match="corrupt safetensors header"):
        read_safetensors_header(st_file)


@pytest.mark.parametrize("header", [b"{not json at all}", b"\xff\xfe\xfd\xfc", b"[1, 2, 3]", b"[" * 100_000,
                                    b'{"w": {"dtype": "F32", "shape": [1], "data_offsets": ["a", "b"]}}',
                                    b'{"w": {"dtype": "F32", "shape": [1], "data_offsets": [0, 999]}}',
                                    b'{"w": "not an object"}'])
def test_bad_header_is_refused(tmp_path, header):
    path = tmp_path / "bad.safetensors"
    path.write_bytes(struct.pack("<Q", len(header)) + header + b"\x00" * 4)
    with pytest.raises(CheckpointError) as err:
        load_state_dict(path)
    assert str(path) in err.value.message


def test_header_valid_but_payload_inconsistent_is_a_checkpoint_error(tmp_path):
    header = json.dumps({"w": {"dtype": "F32", "shape": [2, 2], "data_offsets": [0, 4]}}).encode()
    path = tmp_path / "m.safetensors"
    path.write_bytes(struct.pack("<Q", len(header)) + header + b"\x00" * 4)  # 4 bytes for 16 needed
    with pytest.raises(CheckpointError, match=r"tensor 'w' declares shape \[2, 2\] x F32 \(16 bytes\)") as err:
        load_state_dict(path)  # caught by our header check, before safetensors reads anything
    assert str(path) in err.value.message


@pytest.mark.parametrize("tensors, match", [
    ({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
      "b": {"dtype": "F32", "shape": [2], "data_offsets": [4, 12]}}, "overlap"),
    ({"a": {"dtype": "Q99", "shape": [2], "data_offsets": [0, 8]}}, "unknown dtype"),
    ({"a": {"dtype": "F32", "shape": [-2], "data_offsets": [0, 8]}}, "invalid shape"),
    ({"a": {"dtype": "F32", "shape": "2", "data_offsets": [0, 8]}}, "invalid shape"),
])
def test_header_offsets_dtypes_and_overlaps_checked(tmp_path, tensors, match):
    header = json.dumps(tensors).encode()
    path = tmp_path / "m.safetensors"
    path.write_bytes(struct.pack("<Q", len(header)) + header + b"\x00" * 16)
    with pytest.raises(CheckpointError, match=match) as err:
        read_safetensors_header(path)
    assert str(path) in err.value.message


@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf")])
@pytest.mark.parametrize("suffix", [".safetensors", ".pt"])
def test_non_finite_tensor_refused_naming_file_and_tensor(tmp_path, value, suffix):
    import torch
    from safetensors.torch import save_file

    sd = {"weight": torch.ones(3, 2), "bias": torch.tensor([0.0, value, 1.0]), "ids": torch.arange(3)}
    path = tmp_path / f"head{suffix}"
    save_file(sd, str(path)) if suffix == ".safetensors" else torch.save(sd, str(path))
    with pytest.raises(CheckpointError, match="'bias' holds 1 NaN/Inf") as err:
        load_state_dict(path)
    assert str(path) in err.value.message
    assert load_state_dict(path, finite=False)["bias"].shape == (3,)
