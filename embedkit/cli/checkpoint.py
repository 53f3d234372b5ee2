"""embedkit CLI: checkpoint commands."""
