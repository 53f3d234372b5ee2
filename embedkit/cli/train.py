"""embedkit CLI: train commands."""
