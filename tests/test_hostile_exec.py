"""Hostile model folders must never run code: a folder name or a spec value reaches generated code only as a literal.

Two payloads from issue 11: a folder named ``evil\"\"\";__import__("os").system("touch marker");\"\"\"x`` and a
``config_sentence_transformers.json`` whose ``embedkit.do_lower_case`` is ``x\"\"\"; __import__("os")...``. Each goes
through ``recipe`` (and the script it prints, run), ``parity`` (which runs the recipe in another process), ``save``
(the model card) and ``inspect``. A payload that ran would create ``marker`` in the working directory (every test
runs in ``tmp_path``) or, for the ``$HOSTILE_MARKER`` variant, wherever that process ran.
"""

import ast
import json
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import yaml

from embedkit import Embedder
from embedkit.checkpoint.card import model_card
from embedkit.checkpoint.save import save
from embedkit.cli import main
from embedkit.errors import EmbedkitError, SpecError
from embedkit.parity import check_parity
from embedkit.recipe import PLACEHOLDER_PATH, recipe, recipe_from_spec
from embedkit.spec import EmbedderSpec, load_spec

NAME_PAYLOAD = 'evil""";__import__("os").system("touch marker");"""x'
# the same, touching a file named by the environment: caught even when it runs in another working directory
NAME_PAYLOAD_ENV = 'evil""";__import__("os").system("touch $HOSTILE_MARKER");"""x'
VALUE_PAYLOAD = 'x"""; __import__("os").system("touch marker"); """'
VALUE_PAYLOAD_ENV = 'x"""; __import__("os").system("touch $HOSTILE_MARKER"); """'
TEMP_MARKER = Path(tempfile.gettempdir()) / "marker"

# strings that break naive code or Markdown generation: quotes, line breaks Python or Markdown see, fences, escapes
HOSTILE_STRINGS = [NAME_PAYLOAD, VALUE_PAYLOAD, "x'''; __import__('os').system('touch marker'); '''", "a\nb",
                   "a\r\nimport os", "a\u2028b", "a\x85b", "a\x0cb", "a\x00b", "```\n# pwned\n```", "`", "a|b", "\\",
                   "\\n", "{}", "{0}", "---\nowned: true", "<script>alert(1)</script>", "# heading", "*", "中文 😀"]


@pytest.fixture(autouse=True)
def no_marker(tmp_path, monkeypatch):
    """Run in ``tmp_path``; afterwards no payload may have left a marker in the cwd, the temp dir or $HOSTILE_MARKER."""
    env_marker = tmp_path / "env-marker"
    monkeypatch.setenv("HOSTILE_MARKER", str(env_marker))
    monkeypatch.chdir(tmp_path)
    temp_marker_before = TEMP_MARKER.exists()
    yield
    assert not (tmp_path / "marker").exists(), "a payload ran in the working directory"
    assert not env_marker.exists(), "a payload ran (in some process)"
    if not temp_marker_before:
        assert not TEMP_MARKER.exists(), "a payload ran in the temp dir"


@pytest.fixture(scope="module")
def hostile_named(tiny_bert, tmp_path_factory):
    """The tiny model saved under each hostile folder name: ``{payload: folder}``."""
    tmp = tmp_path_factory.mktemp("hostile-named")
    out = {}
    for payload in (NAME_PAYLOAD, NAME_PAYLOAD_ENV):
        out[payload] = save(tiny_bert, tmp / payload, pooling="cls", normalize=True,
                            query_instruction=VALUE_PAYLOAD_ENV, max_length=32).path
    return out


@pytest.fixture(scope="module")
def saved(tiny_bert, tmp_path_factory):
    return save(tiny_bert, tmp_path_factory.mktemp("hostile-spec") / "plain", pooling="mean", normalize=True,
                max_length=32).path


def _copy(folder: Path, dst: Path) -> Path:
    shutil.copytree(folder, dst)
    return dst


def _edit_json(path: Path, edit) -> None:
    data = json.loads(path.read_text(encoding="utf-8"))
    data = edit(data) or data
    path.write_text(json.dumps(data), encoding="utf-8")


def _with_lower_case_payload(saved: Path, dst: Path, payload: str = VALUE_PAYLOAD) -> Path:
    folder = _copy(saved, dst)
    _edit_json(folder / "config_sentence_transformers.json", lambda d: d["embedkit"].update(do_lower_case=payload))
    return folder


def _no_import_calls(code: str) -> None:
    tree = ast.parse(code)
    names = {n.id for n in ast.walk(tree) if isinstance(n, ast.Name)}
    attrs = {n.attr for n in ast.walk(tree) if isinstance(n, ast.Attribute)}
    assert "__import__" not in names and "system" not in attrs and "os" not in names


def _shape(code: str) -> str:
    """The script's syntax tree with every string constant blanked: what the code does, not the data it holds."""
    tree = ast.parse(code)
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            node.value = ""
    return ast.dump(tree)


def _assigned(code: str, name: str):
    for node in ast.parse(code).body:
        if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == name for t in node.targets):
            return ast.literal_eval(node.value)
    raise AssertionError(f"{name} is not assigned in the recipe")


# ---------------------------------------------------------------------- a hostile folder name
@pytest.mark.parametrize("payload", [NAME_PAYLOAD, NAME_PAYLOAD_ENV])
def test_hostile_folder_name_recipe_is_a_literal_and_runs(hostile_named, payload, tmp_path):
    folder = hostile_named[payload]
    code = recipe(folder)
    _no_import_calls(code)
    assert _assigned(code, "MODEL_NAME") == payload and _assigned(code, "MODEL_PATH") == str(folder.resolve())
    assert _assigned(code, "QUERY_INSTRUCTION") == VALUE_PAYLOAD_ENV
    plain = EmbedderSpec(query_instruction="q", query_max_length=32, passage_max_length=32)
    assert _shape(code) == _shape(recipe(plain, path="p", name="n"))
    # the printed script, run as a script: it encodes its demo texts and runs nothing else
    assert main(["recipe", str(folder), "--output", str(tmp_path / "r.py")]) == 0
    assert (tmp_path / "r.py").read_text(encoding="utf-8") == code
    proc = subprocess.run([sys.executable, str(tmp_path / "r.py")], cwd=tmp_path, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "queries: (2, 32) passages: (2, 32)" in proc.stdout


def test_hostile_folder_name_parity_passes(hostile_named, capsys):
    folder = hostile_named[NAME_PAYLOAD_ENV]
    report = check_parity(folder, engines=("recipe",))
    assert report.ok, [(c.engine, c.max_abs_diff, c.error) for c in report.checks]
    assert report.engines == ["embedkit-torch", "recipe"]
    assert main(["parity", str(hostile_named[NAME_PAYLOAD]), "--engine", "recipe"]) == 0
    assert "PASS recipe" in capsys.readouterr().out


def test_hostile_folder_name_card_and_inspect(hostile_named, tmp_path, capsys):
    src = hostile_named[NAME_PAYLOAD]
    # `embedkit save` into a hostile name as well: the card's title, source and snippets all carry it
    dst = tmp_path / NAME_PAYLOAD_ENV
    assert main(["save", str(src), str(dst)]) == 0
    card = (dst / "README.md").read_text(encoding="utf-8")
    blocks = _code_blocks(card)
    assert len(blocks) == 4
    for block in blocks:
        _no_import_calls(block)
    spec = Embedder(dst, show_progress=False).spec
    assert blocks[-1] == recipe_from_spec(spec, PLACEHOLDER_PATH, name=dst.name).rstrip("\n")
    assert _assigned(blocks[-1], "MODEL_NAME") == NAME_PAYLOAD_ENV
    capsys.readouterr()
    assert main(["inspect", str(dst), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["spec"]["query_instruction"]["value"] == VALUE_PAYLOAD_ENV
    assert main(["inspect", str(src)]) == 0


def _code_blocks(card: str) -> list[str]:
    """The fenced code blocks of a Markdown card (a fence closes only with at least as many backticks)."""
    blocks, lines, i = [], card.split("\n"), 0
    while i < len(lines):
        m = re.match(r"^(`{3,})(\w*)$", lines[i])
        if m:
            fence, body, i = m.group(1), [], i + 1
            while not re.match(rf"^{fence}`*$", lines[i]):
                body.append(lines[i])
                i += 1
            blocks.append("\n".join(body))
        i += 1
    return blocks


def test_markup_in_spec_values_is_printed_as_text(tiny_bert, tmp_path, capsys):
    """The CLI's rich output shows folder names and spec values as text (``[/]`` used to crash ``embedkit spec``)."""
    folder = save(tiny_bert, tmp_path / "[bold]m[/]", pooling="cls", normalize=True,
                  query_instruction="[/] [red]q", max_length=32).path
    assert main(["spec", str(folder)]) == 0
    assert "'[/] [red]q'" in capsys.readouterr().out
    assert main(["inspect", str(folder)]) == 0


# ---------------------------------------------------------------------- a hostile spec value
@pytest.mark.parametrize("payload", [VALUE_PAYLOAD, VALUE_PAYLOAD_ENV])
def test_lower_case_payload_is_a_clean_spec_error(saved, tmp_path, payload):
    folder = _with_lower_case_payload(saved, tmp_path / "m", payload)
    cst = folder / "config_sentence_transformers.json"
    for call in (lambda: load_spec(folder), lambda: recipe(folder), lambda: check_parity(folder, engines=("recipe",)),
                 lambda: save(folder, tmp_path / "out")):
        with pytest.raises(SpecError) as exc:
            call()
        assert str(cst) in exc.value.message and "embedkit.do_lower_case must be true or false" in exc.value.message
        assert "got a string" in exc.value.message and exc.value.hint
    assert not (tmp_path / "out").exists()


def test_lower_case_payload_cli_exits_2(saved, tmp_path, capsys):
    folder = _with_lower_case_payload(saved, tmp_path / "m", VALUE_PAYLOAD_ENV)
    texts = tmp_path / "texts.txt"
    texts.write_text("hello\n", encoding="utf-8")
    for argv in (["recipe", str(folder)], ["parity", str(folder), "--engine", "recipe"], ["spec", str(folder)],
                 ["save", str(folder), str(tmp_path / "out")],
                 ["encode", str(folder), "-i", str(texts), "-o", str(tmp_path / "v.npy")]):
        capsys.readouterr()
        assert main(argv) == 2, argv
        err = capsys.readouterr().err
        assert "config_sentence_transformers.json" in err and "embedkit.do_lower_case" in err, (argv, err)
        assert "Traceback" not in err
    # inspect lists it as a problem (and runs nothing)
    main(["inspect", str(folder)])
    out = capsys.readouterr().out
    assert "embedkit.do_lower_case" in out


def test_lower_case_payload_in_a_subprocess(saved, tmp_path):
    folder = _with_lower_case_payload(saved, tmp_path / "m", VALUE_PAYLOAD_ENV)
    proc = subprocess.run([sys.executable, "-m", "embedkit", "recipe", str(folder)], cwd=tmp_path,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "embedkit.do_lower_case" in proc.stderr and not proc.stdout


def test_spec_values_given_in_code_are_checked_too():
    for bad in (dict(do_lower_case=VALUE_PAYLOAD), dict(normalize="yes"), dict(query_instruction_format=None),
                dict(pooling=["cls"]), dict(query_instruction=3)):
        spec = EmbedderSpec(**bad)
        with pytest.raises(SpecError):
            recipe_from_spec(spec)
        with pytest.raises(SpecError):
            model_card(spec, name="m")


class _SneakyStr(str):
    def __repr__(self) -> str:
        return '__import__("os").system("touch marker")'


def test_a_str_subclass_cannot_choose_its_own_literal():
    with pytest.raises(SpecError):
        recipe_from_spec(EmbedderSpec(query_instruction=_SneakyStr("q")))


# ---------------------------------------------------------------------- every field is type-checked on read
_MODES = 'one of "cls", "mean", "last_token"'
BAD_FIELDS = [
    ("pooling", "max", _MODES), ("pooling", ["cls"], _MODES), ("normalize", "true", "true or false"),
    ("normalize", 1, "true or false"), ("do_lower_case", None, "true or false"),
    ("query_max_length", "512", "a positive integer"), ("query_max_length", 0, "a positive integer"),
    ("passage_max_length", True, "a positive integer"), ("passage_max_length", 1.5, "a positive integer"),
    ("truncate_dim", -1, "a positive integer or null"), ("truncate_dim", "8", "a positive integer or null"),
    ("query_instruction", ["a"], "a string or null"), ("passage_instruction", 3, "a string or null"),
    ("query_instruction_format", None, "a string"), ("passage_instruction_format", {"a": 1}, "a string"),
]


@pytest.mark.parametrize(("name", "value", "expected"), BAD_FIELDS)
def test_every_saved_spec_field_is_type_checked(saved, tmp_path, name, value, expected):
    folder = _copy(saved, tmp_path / "m")
    cst = folder / "config_sentence_transformers.json"
    _edit_json(cst, lambda d: d["embedkit"].update({name: value}))
    with pytest.raises(SpecError) as exc:
        load_spec(folder)
    assert exc.value.message.startswith(f"{cst}: embedkit.{name} must be {expected}, got ")


BAD_FILES = [
    ("sentence_bert_config.json", lambda d: d.update(do_lower_case="yes"), "do_lower_case must be true or false"),
    ("sentence_bert_config.json", lambda d: d.update(max_seq_length="512"), "max_seq_length must be a positive"),
    ("sentence_bert_config.json", lambda d: [d], "expected a JSON object"),
    ("config_sentence_transformers.json", lambda d: d.update(prompts={"query": 5}), "prompts.query must be a string"),
    ("config_sentence_transformers.json", lambda d: d.update(prompts="query: "), "prompts must be an object"),
    ("config_sentence_transformers.json", lambda d: d.update(embedkit=[1]), "embedkit must be an object"),
    ("config_sentence_transformers.json", lambda d: [d], "expected a JSON object"),
    ("1_Pooling/config.json", lambda d: d.update(pooling_mode={"a": 1}), "pooling_mode must be a string or a list"),
    ("1_Pooling/config.json", lambda d: [d], "expected a JSON object"),
]


@pytest.mark.parametrize(("rel", "edit", "expected"), BAD_FILES)
def test_sentence_transformers_files_are_type_checked(saved, tmp_path, rel, edit, expected):
    folder = _copy(saved, tmp_path / "m")
    _edit_json(folder / rel, edit)
    # a malformed file may be caught by the folder check (CheckpointError) before the spec reader (SpecError)
    with pytest.raises(EmbedkitError) as exc:
        load_spec(folder)
    assert str(folder / rel) in exc.value.message and expected in exc.value.message


# ---------------------------------------------------------------------- generated text, for any string
def _hostile_spec(s: str) -> EmbedderSpec:
    fmt = s.replace("{", "{{").replace("}", "}}") + "{}: {}"
    return EmbedderSpec(query_instruction=s, passage_instruction=s, query_instruction_format=fmt,
                        passage_instruction_format=fmt, truncate_dim=8, do_lower_case=True)


@pytest.mark.parametrize("s", HOSTILE_STRINGS, ids=range(len(HOSTILE_STRINGS)))
def test_recipe_holds_any_string_as_a_literal(s):
    code = recipe_from_spec(_hostile_spec(s), path=s, name=s)
    assert _shape(code) == _shape(recipe_from_spec(_hostile_spec("x"), path="x", name="x"))
    assert _assigned(code, "MODEL_NAME") == s and _assigned(code, "MODEL_PATH") == s
    assert _assigned(code, "QUERY_INSTRUCTION") == s and _assigned(code, "PASSAGE_INSTRUCTION") == s


def _card(s: str) -> str:
    return model_card(_hostile_spec(s), name=s, source=s, base_model=s, architecture=s, dtype=s,
                      training={s: s}, metrics={s: s}, notes=[s])


@pytest.mark.parametrize("s", HOSTILE_STRINGS, ids=range(len(HOSTILE_STRINGS)))
def test_model_card_holds_any_string_without_changing_its_structure(s):
    card, plain = _card(s), _card("x")
    lines, plain_lines = card.split("\n"), plain.split("\n")
    assert len(lines) == len(plain_lines)  # no value starts a line of its own
    for a, b in zip(lines, plain_lines, strict=True):
        assert a.startswith("#") == b.startswith("#") and a.startswith("```") == b.startswith("```")
        assert a.startswith("|") == b.startswith("|") and a.count(" | ") - a.count("\\|") <= b.count(" | ") + 1
    front = yaml.safe_load(card.split("---\n")[1])
    assert front["base_model"] == s and set(front) == set(yaml.safe_load(plain.split("---\n")[1]))
    blocks = _code_blocks(card)
    assert len(blocks) == len(_code_blocks(plain)) == 4
    for block, plain_block in zip(blocks, _code_blocks(plain), strict=True):
        assert _shape(block) == _shape(plain_block)
    assert _assigned(blocks[-1], "MODEL_NAME") == s
