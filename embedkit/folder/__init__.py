"""What a model folder holds, and nothing above it: file names and classes (:mod:`.layout`), reading weights without
untrusted pickles (:mod:`.safe_load`), loading the tokenizer and model (:mod:`.loading`), bge-m3 head files
(:mod:`.m3_heads`), ONNX export files (:mod:`.onnx_files`) and fingerprints / file hashes (:mod:`.fingerprint`).

The bottom of embedkit's layers: modules here import only :mod:`embedkit.errors`, :mod:`embedkit._io` and each other.
Import the submodules directly (this package re-exports nothing, so importing it stays cheap).
"""
