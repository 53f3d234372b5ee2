"""``make demo``: encode a few sentences with the bundled all-MiniLM-L6-v2 and show a similarity matrix.

Run: ``python -m embedkit.demo``. Offline; takes a few seconds on a laptop CPU.
"""

from __future__ import annotations

import logging
import os

SENTENCES = [
    "How do I fine-tune an embedding model?",
    "Training a text embedder with contrastive loss and hard negatives.",
    "The cat sat on the mat.",
    "A kitten is resting on a rug.",
    "ONNX export keeps pooling and normalization inside the graph.",
]


def main() -> None:
    """Encode :data:`SENTENCES`, print the vectors' shape, the spec's provenance and cosine similarities."""
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s: %(message)s")
    from rich.console import Console
    from rich.table import Table

    from .embedder import Embedder

    console = Console()
    model = Embedder("minilm", show_progress=False)
    console.print(f"[bold]model[/bold] {model.path}")
    for name, value in model.spec.to_dict().items():
        console.print(f"  {name} = {value!r}  [dim]({model.spec.provenance[name]})[/dim]")
    vectors = model.encode(SENTENCES)
    console.print(f"[bold]vectors[/bold] shape={vectors.shape} dtype={vectors.dtype}")
    sims = vectors @ vectors.T
    table = Table(title="cosine similarity")
    table.add_column("")
    for i in range(len(SENTENCES)):
        table.add_column(str(i), justify="right")
    for i, text in enumerate(SENTENCES):
        table.add_row(f"{i} {text[:48]}", *(f"{s:.2f}" for s in sims[i]))
    console.print(table)


if __name__ == "__main__":
    main()
