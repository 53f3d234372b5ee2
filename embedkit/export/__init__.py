"""Exports: ONNX (transformer graph + single-file embedder graph), int8 quantization behind a quality gate."""
