"""lamini-serve: distill a teacher LLM into a herd of small students and serve them.

Importing this package is cheap on purpose: torch, transformers and friends are
imported inside the functions that need them, so `lamini --help` stays fast.
"""

__version__ = "0.1.0"

__all__ = ["__version__"]
