"""delivery: see the README's code map."""
