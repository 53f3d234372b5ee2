"""Retrieval evaluation on BEIR / FlagEmbedding-layout folders (nDCG, recall, MRR, MAP, precision @k)."""

from .data import EvalData, load_eval_data
from .retrieval import EvalResult, compute_metrics, evaluate, markdown_report, plot_comparison

__all__ = ["EvalData", "load_eval_data", "EvalResult", "compute_metrics", "evaluate", "markdown_report",
           "plot_comparison"]
