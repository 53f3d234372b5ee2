"""embedkit CLI: inspect commands."""
