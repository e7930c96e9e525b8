"""`lamini eval`: the herd scored the way the LaMini-LM paper did (lm-evaluation-harness,
zero-shot), and against its teacher (agreement and an automatic A-D rater).

    tasks.py      which tasks run (`paper`, `local`, any lm-eval name) and the metric of each
    lms.py        lm-eval models: HFLM for checkpoints, the ONNX engine, local-completions
    runner.py     (model, task) pairs, resumable, each result stored with its provenance
    agreement.py  answers to held-out instructions against the teacher's; the A-D judge
    report.py     the tables (JSON, markdown), the paper's published numbers, the charts
    cli.py        the `lamini eval` command
"""
