"""The command line as a newcomer meets it: usage mistakes, help text, defaults and noise (real subprocesses)."""

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from embedkit.cli import main

ROOT = Path(__file__).resolve().parents[2]


def _embedkit(*args, env=None, check_rc=None, cwd=None):
    """``python -m embedkit ARGS`` as a user runs it (this checkout's embedkit on the path)."""
    full_env = dict(os.environ, COLUMNS="200", HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1",
                    PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    full_env.pop("EMBEDKIT_DEBUG", None)
    full_env.pop("EMBEDKIT_VERBOSE", None)
    full_env.update(env or {})
    proc = subprocess.run([sys.executable, "-m", "embedkit", *map(str, args)], capture_output=True, text=True,
                          env=full_env, cwd=cwd, timeout=300)
    if check_rc is not None:
        assert proc.returncode == check_rc, (proc.returncode, proc.stdout[-2000:], proc.stderr[-3000:])
    return proc


# ---------------------------------------------------------------------- usage errors: error/hint, exit 2
@pytest.mark.parametrize("argv, message, help_of", [
    (["encode", "minilm", "-i", "in.txt"], "error: Missing option '--output'", "embedkit encode"),
    (["encode"], "error: Missing argument", "embedkit encode"),
    (["encode", "minilm", "-i", "in.txt", "-o", "o.npy", "--bogus"], "error: No such option: --bogus",
     "embedkit encode"),
    (["encode", "minilm", "-i", "in.txt", "-o", "o.npy", "--batch-size", "abc"],
     "error: Invalid value for '--batch-size'", "embedkit encode"),
    (["encod", "minilm"], "error: No such command 'encod'. Did you mean 'encode'?", "embedkit"),
    (["export", "onnx", "--bogus"], "error: No such option: --bogus", "embedkit export onnx"),
    (["finetune", "--model_name_or_path", "minilm", "--temprature", "0.1"],
     "error: unknown option --temprature. Did you mean --temperature?", "embedkit finetune"),
    (["finetune", "--model_name_or_path", "minilm", "--per_device_train_batch_size", "abc"],
     "error: argument --per_device_train_batch_size", "embedkit finetune"),
])
def test_usage_errors_print_error_and_hint_and_exit_2(argv, message, help_of, tmp_path):
    proc = _embedkit(*argv, cwd=tmp_path, check_rc=2)
    assert "Traceback" not in proc.stderr, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert lines[0].startswith(message), proc.stderr
    assert lines[-1].startswith(f"hint: run '{help_of} --help"), proc.stderr


def test_user_errors_exit_2_and_bugs_show_a_traceback(tmp_path):
    """Only embedkit's errors and the paths a user names are user errors; any other exception is a bug: traceback,
    exit 1 (a ValueError deep in the code must not be dressed up as a usage message)."""
    script = textwrap.dedent("""
        import sys
        from embedkit.cli.app import app, main
        from embedkit.errors import SpecError

        @app.command("boom")
        def boom(kind: str) -> None:
            if kind == "bug":
                raise ValueError("an internal invariant broke")
            if kind == "type":
                raise TypeError("unsupported operand")
            if kind == "spec":
                raise SpecError("bad pooling 'max'", hint="use cls, mean or last_token")
            open(kind)

        sys.exit(main(["boom", *sys.argv[1:]]))
    """)
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    env.pop("EMBEDKIT_DEBUG", None)

    def run(*args):
        return subprocess.run([sys.executable, "-c", script, *args], capture_output=True, text=True, env=env,
                              timeout=120)

    for kind, exc in (("bug", "ValueError: an internal invariant broke"), ("type", "TypeError: unsupported")):
        proc = run(kind)
        assert proc.returncode == 1 and "Traceback" in proc.stderr and exc in proc.stderr, proc.stderr
    proc = run("spec")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.splitlines() == ["error: bad pooling 'max'", "hint: use cls, mean or last_token"]
    missing = tmp_path / "nope.txt"
    proc = run(str(missing))
    assert proc.returncode == 2 and "Traceback" not in proc.stderr and str(missing) in proc.stderr, proc.stderr


def test_errors_speak_in_flags(tmp_path, capsys):
    """`--max-length 1024` on a 512-token model: the message and the fix name the flag, not `query_max_length=`."""
    src = tmp_path / "in.txt"
    src.write_text("hello\n")
    assert main(["encode", "minilm", "-i", str(src), "-o", str(tmp_path / "o.npy"), "--max-length", "1024"]) == 2
    err = capsys.readouterr().err
    assert "error: --max-length 1024 exceeds what the model can take (512 tokens)" in err, err
    assert "hint: pass --max-length 512 or less" in err, err
    assert "max_length=" not in err


# ---------------------------------------------------------------------- help
def test_finetune_help_shows_embedkit_groups_first_and_help_all_everything(capsys):
    from embedkit.train.arguments import HELP_GROUPS, _own_fields

    short = _embedkit("finetune", "--help", check_rc=0).stdout
    lines = short.splitlines()
    assert lines[0].startswith("usage: embedkit finetune [--config FILE.yaml] --model_name_or_path PATH")
    assert len(lines) < 120, len(lines)
    headers = [line[:-1] for line in lines if line and not line.startswith(" ") and line.endswith(":")]
    assert headers[:6] == ["model", "data", "loss", "LoRA", "GradCache", "bge-m3"], headers
    assert set(HELP_GROUPS) <= set(headers)
    accepted = next(i for i, line in enumerate(lines) if "all transformers.TrainingArguments are accepted" in line)
    assert lines.index("model:") < accepted
    for name in _own_fields():  # every embedkit argument, in a group before the TrainingArguments
        at = next(i for i, line in enumerate(lines) if line.strip().startswith(f"--{name} "))
        assert at < accepted, name
    common = "\n".join(lines[accepted:])
    for name in ("output_dir", "num_train_epochs", "per_device_train_batch_size", "learning_rate"):
        assert f"--{name} " in common
    assert "--adam_beta1" not in short and "--help-all" in short

    assert main(["finetune", "--help-all"]) == 0
    full = capsys.readouterr().out
    assert full.startswith("usage: embedkit finetune") and "--config FILE" in full
    assert "--adam_beta1" in full and "--train_group_size" in full


def test_encode_help_shows_colbert_slicing():
    out = _embedkit("encode", "--help", check_rc=0).stdout
    assert "colbert_vecs[colbert_offsets[i]:colbert_offsets[i+1]]" in out


def test_tagline_promises_only_what_exists():
    """The help promises a server only since `embedkit serve` exists (it once promised one that did not)."""
    out = _embedkit("--help", check_rc=0).stdout
    assert "serve" in out.lower()
    assert "--max-batch-tokens" in _embedkit("serve", "--help", check_rc=0).stdout


def test_spec_and_encode_share_the_fp32_default(capsys, minilm):
    assert main(["spec", "minilm", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert rows["precision"]["value"] == "fp32" and minilm.precision == "fp32"
    assert "fp32 (default" in _embedkit("spec", "--help", check_rc=0).stdout


# ---------------------------------------------------------------------- noise
def test_third_party_logs_quiet_unless_verbose(tmp_path):
    from tests.eval.test_eval import _bench

    bench = _bench(tmp_path / "bench")
    quiet = _embedkit("eval", "minilm", "--data", bench, check_rc=0)
    for noise in ("faiss", "Loading weights", "AVX"):
        assert noise not in quiet.stderr, quiet.stderr
    verbose = _embedkit("--verbose", "eval", "minilm", "--data", bench, check_rc=0)
    assert "faiss" in verbose.stderr


@pytest.mark.parametrize(("argv", "usage"), [
    (["save"], "Usage: embedkit save [OPTIONS] SRC DST"),
    (["merge"], "Usage: embedkit merge [OPTIONS] BASE ADAPTER DST"),
    (["export", "onnx"], "Usage: embedkit export onnx [OPTIONS] MODEL DST"),
    (["inspect"], "Usage: embedkit inspect [OPTIONS] DIR"),
])
def test_help_reads_like_other_commands(argv, usage, capsys):
    """Arguments as SRC DST (not {src} {dst}); on/off flags without a <bool> type column."""
    from embedkit.cli import main

    assert main([*argv, "--help"]) == 0
    out = capsys.readouterr().out
    assert usage in " ".join(out.split()), out[:400]
    assert "<bool>" not in out and "{" not in out.split("Usage:")[1].splitlines()[0]
