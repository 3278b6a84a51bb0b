"""replay: see the README's code map."""
