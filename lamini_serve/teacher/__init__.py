"""Teachers: the embedded default (a real model shipped inside a PyPI wheel)."""
