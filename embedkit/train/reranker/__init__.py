"""``python -m embedkit.train.reranker``: ``embedkit finetune --reranker`` under the module-name convention of
FlagEmbedding (``-m FlagEmbedding.finetune.reranker.encoder_only.base`` -> ``-m embedkit.train.reranker``)."""
