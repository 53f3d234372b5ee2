"""Retrieval evaluation on BEIR / FlagEmbedding-layout folders (nDCG, recall, MRR, MAP, precision @k), and two-stage
evaluation (retrieve, then rerank the top k with a cross-encoder)."""

from .data import EvalData, load_eval_data
from .rerank import TwoStageResult, evaluate_two_stage
from .retrieval import EvalResult, compute_metrics, evaluate, markdown_report, plot_comparison

__all__ = ["EvalData", "load_eval_data", "EvalResult", "compute_metrics", "evaluate", "markdown_report",
           "plot_comparison", "TwoStageResult", "evaluate_two_stage"]
