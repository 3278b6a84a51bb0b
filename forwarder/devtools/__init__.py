"""devtools: see the README's code map."""
