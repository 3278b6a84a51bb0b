"""backsplash: see the README's code map."""
