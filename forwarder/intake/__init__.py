"""intake: see the README's code map."""
