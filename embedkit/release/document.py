"""``RELEASE.md``: the plan carried out, sizes, the parity matrix, metrics and load snippets for every consumer.

Every value that ends up inside a code snippet goes through :func:`repr` / :func:`json.dumps` (Python) or
:func:`shlex.quote` (shell): a path or instruction read from disk is never pasted raw into code.
"""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path
from typing import Any

from .._format import format_bytes


def _fence(code: str, lang: str) -> str:
    longest = max((len(run) for run in re.findall(r"`+", code)), default=0)
    fence = "`" * max(3, longest + 1)
    return f"{fence}{lang}\n{code.rstrip()}\n{fence}"


def _md(value: Any) -> str:
    """A value shown inline in Markdown: as JSON in a code span that no backtick inside can close."""
    text = json.dumps(value, ensure_ascii=False) if not isinstance(value, str) else value
    text = text.replace("\n", "\\n").replace("|", "\\|")
    ticks = "`" * (max((len(r) for r in re.findall(r"`+", text)), default=0) + 1)
    pad = " " if text.startswith("`") or text.endswith("`") else ""
    return f"{ticks}{pad}{text}{pad}{ticks}"


def snippets(path: str, spec: dict[str, Any], *, onnx: bool, signed_with: str | None) -> dict[str, str]:
    """Load code for each consumer: embedkit, sentence-transformers, FlagEmbedding, transformers, ONNX Runtime, TEI
    and the ``embedkit verify`` command (values quoted with ``repr`` / ``shlex.quote``)."""
    p = repr(path)
    qi = spec.get("query_instruction")
    out = {"embedkit": (f"from embedkit import Embedder\n\nmodel = Embedder({p})\n"
                        "queries = model.encode_queries(['what is a release?'])\n"
                        "passages = model.encode_corpus(['A release is a verified model folder.'])")}
    prompt = ", prompt_name='query'" if qi else ""
    out["sentence-transformers"] = (f"from sentence_transformers import SentenceTransformer\n\n"
                                    f"model = SentenceTransformer({p})\n"
                                    f"queries = model.encode(['what is a release?']{prompt})\n"
                                    "passages = model.encode(['A release is a verified model folder.'])")
    pooling = spec.get("pooling", "cls")
    if pooling in ("cls", "mean"):
        out["FlagEmbedding"] = (
            "from FlagEmbedding import FlagModel\n\n"
            f"model = FlagModel({p}, pooling_method={pooling!r}, normalize_embeddings={spec.get('normalize')!r},\n"
            f"                  query_instruction_for_retrieval={qi!r},\n"
            f"                  query_instruction_format={spec.get('query_instruction_format', '{}{}')!r},\n"
            f"                  query_max_length={spec.get('query_max_length')!r}, "
            f"passage_max_length={spec.get('passage_max_length')!r}"
            + (f",\n                  passage_instruction_for_retrieval={spec.get('passage_instruction')!r}"
               if spec.get("passage_instruction") is not None else "") + ")\n"
            "queries = model.encode_queries(['what is a release?'])")
    pool = {"cls": "hidden[:, 0]",
            "mean": "(hidden * mask).sum(1) / mask.sum(1)",
            "last_token": "hidden[torch.arange(hidden.shape[0]), mask.squeeze(-1).sum(1).long() - 1]"}[pooling]
    norm = "\nvectors = torch.nn.functional.normalize(vectors, dim=-1)" if spec.get("normalize") else ""
    prefix = f"{qi!r} + " if qi else ""
    out["transformers"] = (
        "import torch\nfrom transformers import AutoModel, AutoTokenizer\n\n"
        f"tokenizer = AutoTokenizer.from_pretrained({p})\nmodel = AutoModel.from_pretrained({p}).eval()\n"
        f"batch = tokenizer([{prefix}'what is a release?'], padding=True, truncation=True, "
        f"max_length={spec.get('query_max_length')!r}, return_tensors='pt')\n"
        "with torch.no_grad():\n    hidden = model(**batch).last_hidden_state\n"
        "mask = batch['attention_mask'].unsqueeze(-1).to(hidden.dtype)\n"
        f"vectors = {pool}{norm}\n"
        f"# the complete recipe (instructions, truncation, every spec field): embedkit recipe {shlex.quote(path)}")
    if onnx:
        out["ONNX Runtime"] = (
            "import onnxruntime as ort\nfrom transformers import AutoTokenizer\n\n"
            f"tokenizer = AutoTokenizer.from_pretrained({p})\n"
            f"session = ort.InferenceSession({repr(str(Path(path) / 'onnx' / 'embedder.onnx'))})\n"
            f"batch = tokenizer([{prefix}'what is a release?'], padding=True, truncation=True, "
            f"max_length={spec.get('query_max_length')!r}, return_tensors='np')\n"
            "names = [i.name for i in session.get_inputs()]\n"
            "vectors = session.run(None, {n: batch[n] for n in names})[0]  # pooled and normalized inside the graph\n"
            f"# or: Embedder({p}, backend='onnx')")
    mount = shlex.quote(f"{Path(path).resolve()}:/model")
    out["TEI"] = ("docker run --rm -p 8080:80 -v " + mount + " \\\n"
                  "  ghcr.io/huggingface/text-embeddings-inference:cpu-latest --model-id /model\n"
                  "# TEI reads the sentence-transformers files (pooling, normalization, prompts) written here")
    key = f" --public-key {shlex.quote(signed_with + '.pub')}" if signed_with else ""
    out["verify"] = f"embedkit verify {shlex.quote(path)}{key}"
    return out


def _bar(value: float, width: int = 30) -> str:
    filled = max(0, min(width, round(value * width)))
    return "█" * filled + "·" * (width - filled)


def _metrics_section(metrics: dict[str, Any]) -> list[str]:
    release, baseline = metrics.get("release") or {}, metrics.get("baseline") or {}
    names = [m for m in metrics.get("main", []) if m in release.get("metrics", {})]
    lines = ["## Metrics", "", f"On {_md(metrics.get('data', ''))}.", ""]
    if baseline:
        lines += ["| metric | baseline | release | change |", "|---|---:|---:|---:|"]
        for m in names:
            a, b = baseline["metrics"].get(m), release["metrics"][m]
            change = f"{b - a:+.4f}" if a is not None else "-"
            lines.append(f"| {m} | {a:.4f} | {b:.4f} | {change} |" if a is not None else f"| {m} | - | {b:.4f} | - |")
        chart = []
        for m in names:
            if m in baseline["metrics"]:
                chart.append(f"{m:<10} before {_bar(baseline['metrics'][m])} {baseline['metrics'][m]:.3f}")
            chart.append(f"{'':<10} after  {_bar(release['metrics'][m])} {release['metrics'][m]:.3f}")
        lines += ["", "Before (baseline) / after (release):", "", _fence("\n".join(chart), "text")]
    else:
        lines += ["| metric | release |", "|---|---:|"] + [f"| {m} | {release['metrics'][m]:.4f} |" for m in names]
    return lines + [""]


def release_markdown(report: dict[str, Any]) -> str:
    """The text of ``DST/RELEASE.md`` from :meth:`ReleaseReport.to_dict`."""
    plan = report["plan"]
    lines = [f"# Release {_md(Path(report['dst']).name)}", "",
             f"Built by `embedkit release` from {_md(plan['src'])} ({plan['kind']}).", "", "## Plan carried out", ""]
    for i, step in enumerate(plan["steps"], 1):
        done = next((r for r in report["steps"] if r["name"] == step["name"]), None)
        note = " (reused from an earlier run)" if done and done["reused"] else ""
        lines.append(f"{i}. **{step['name']}**: {step['action']} ({step['why']}){note}")
    lines += ["", "### Dropped", ""]
    lines += [f"- {_md(p)}: {why}" for p, why in plan["dropped"].items()] or ["- nothing"]
    if plan["merged"]:
        lines += ["", "### Merged", ""] + [f"- {_md(p)}" for p in plan["merged"]]
    lines += ["", "### Kept", ""] + ([f"- {_md(p)}" for p in plan["kept"]] or ["- nothing"])
    sizes = report["sizes"]
    lines += ["", "## Sizes", "", "| | bytes | size |", "|---|---:|---:|",
              f"| before (source folder) | {sizes['before']} | {format_bytes(sizes['before'])} |",
              f"| before, inference files only | {sizes['before_inference']} | "
              f"{format_bytes(sizes['before_inference'])} |",
              f"| after (this folder) | {sizes['after']} | {format_bytes(sizes['after'])} |", ""]
    lines += ["## Spec", "", "| field | value | decided by |", "|---|---|---|"]
    lines += [f"| {name} | {_md(v['value'])} | {v['rule']} |" for name, v in report["spec"].items()] + [""]
    parity = report["parity"]
    engines = parity["engines"]
    lines += ["## Parity", "", f"{parity['texts']} texts, encoded as queries and as passages by every loader; "
              "max abs diff between each pair:", "",
              "| | " + " | ".join(engines) + " |", "|---|" + "---:|" * len(engines)]
    for a in engines:
        lines.append(f"| {a} | " + " | ".join(f"{parity['matrix'][a][b]['max_abs_diff']:.2g}" for b in engines) + " |")
    lines.append("")
    lines += [f"- {c['engine']}: {'pass' if c['passed'] else 'FAIL'} ({c['tolerance']})" for c in parity["checks"]]
    lines += [f"- {name}: skipped ({why})" for name, why in parity["skipped"].items()] + [""]
    if report.get("metrics"):
        lines += _metrics_section(report["metrics"])
    lines += ["## Load it", ""]
    for name, code in report["snippets"].items():
        if name == "verify":
            continue
        lang = "bash" if name == "TEI" else "python"
        lines += [f"### {name}", "", _fence(code, lang), ""]
    lines += ["## Verify it", "", "Every file's sha256 is in `embedkit-manifest.json`" +
              (" (signed: `embedkit-manifest.sig`)" if report["signed"] else "") + ":", "",
              _fence(report["snippets"]["verify"], "bash"), ""]
    return "\n".join(lines)


__all__ = ["release_markdown", "snippets"]
