"""embedkit CLI: mine and score-pairs commands."""
