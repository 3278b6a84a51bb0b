"""commands: see the README's code map."""
