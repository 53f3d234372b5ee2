"""embedkit parity: every loader agrees on a good folder; a mis-specified folder is caught and explained."""

import json

import pytest

from embedkit.checkpoint.save import save
from embedkit.cli import main
from embedkit.export.onnx import export_onnx
from embedkit.parity import check_parity


@pytest.fixture(scope="module")
def good(tiny_bert, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("parity")
    save(tiny_bert, tmp / "src", pooling="cls", normalize=True, query_instruction="query: ", max_length=48)
    return export_onnx(tmp / "src", tmp / "good", quantize="int8", min_cosine=0.0, min_cosine_floor=0.0).path


def test_all_engines_agree(good):
    report = check_parity(good)
    assert report.ok, [(c.engine, c.max_abs_diff, c.error) for c in report.checks]
    assert report.engines == ["embedkit-torch", "embedkit-onnx", "embedkit-onnx-int8", "sentence-transformers",
                              "flagembedding", "recipe"]
    assert report.matrix["embedkit-torch"]["sentence-transformers"]["max_abs_diff"] <= 1e-5


def _mis_specified(tiny_bert, tmp_path, mutate):
    folder = tmp_path / "bad"
    save(tiny_bert, folder, pooling="mean", normalize=True)
    mutate(folder)
    return folder


def test_pooling_mismatch_is_named(tiny_bert, tmp_path):
    def st_says_cls(folder):  # the sentence-transformers layout disagrees with embedkit's recorded spec
        cfg = folder / "1_Pooling" / "config.json"
        data = json.loads(cfg.read_text())
        data["pooling_mode_mean_tokens"], data["pooling_mode_cls_token"] = False, True
        cfg.write_text(json.dumps(data))

    report = check_parity(_mis_specified(tiny_bert, tmp_path, st_says_cls))
    st = next(c for c in report.checks if c.engine == "sentence-transformers")
    assert not st.passed and not report.ok
    assert any("pooling='cls'" in d for d in st.diagnosis), st.diagnosis
    assert next(c for c in report.checks if c.engine == "flagembedding").passed


def test_missing_normalization_is_named(tiny_bert, tmp_path, capsys):
    def drop_normalize(folder):
        modules = json.loads((folder / "modules.json").read_text())
        (folder / "modules.json").write_text(json.dumps([m for m in modules if "Normalize" not in m["type"]]))
        cst = json.loads((folder / "config_sentence_transformers.json").read_text())
        cst["embedkit"]["normalize"] = True  # embedkit still normalizes
        (folder / "config_sentence_transformers.json").write_text(json.dumps(cst))

    folder = _mis_specified(tiny_bert, tmp_path, drop_normalize)
    report = check_parity(folder, engines=("sentence-transformers",))
    st = report.checks[0]
    assert any("normalize=False" in d for d in st.diagnosis), st.diagnosis
    assert main(["parity", str(folder), "--engine", "sentence-transformers"]) == 1
    assert "diagnosis: sentence-transformers matches embedkit with normalize=False" in capsys.readouterr().out


def test_cli_json(good, capsys):
    assert main(["parity", str(good), "--json", "--engine", "recipe"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["ok"] and data["engines"] == ["embedkit-torch", "recipe"]
    assert main(["parity", str(good), "--engine", "nope"]) == 2
