"""sources: see the README's code map."""
