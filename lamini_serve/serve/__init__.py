"""`lamini serve`: the teacher and its students behind one OpenAI-compatible endpoint.

- `app.create_app(models, api_key=..., limits=...)`: the FastAPI app over engines;
- `registry`: which models a command line names, and loading them;
- `cli.serve`: the `lamini serve` command (uvicorn, signals, the listening line).
"""
