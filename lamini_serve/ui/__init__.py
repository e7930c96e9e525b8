"""`lamini ui`: a Gradio page over any OpenAI-compatible endpoint.

- `client`: list the endpoint's models, stream several at once (openai client).
- `store`: votes, stored answers and A-D grades in SQLite (WAL).
- `ranking`: Bradley-Terry ratings with bootstrap intervals, win rates, the A-D
  chart, and `lamini ui report`.
- `instructions`: the built-in human-evaluation set, or the user's JSONL.
- `app`: the page (gradio is imported only there).
- `cli`: `lamini ui` and `lamini ui report`.
"""
