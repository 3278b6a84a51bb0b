"""hec: see the README's code map."""
