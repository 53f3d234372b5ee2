"""embedkit CLI: manifest commands."""
