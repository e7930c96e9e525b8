"""`lamini eval`'s report: JSON, markdown and PNG charts from the stored scores.

- `report.json`: every model (source, kind, role, hash, prompt), every task (metric,
  version), every score with its stderr and document count, each model's plain average
  over the tasks it completed, the lm-eval version, teacher agreement, the A-D rating,
  and what failed;
- `report.md`: the tables, students beside their base models and the teacher, and the
  paper's published numbers when the paper's tasks ran;
- `scores.png`: a grouped bar chart (one group per task, one bar per model);
- `judge.png`: the A-D rating as stacked bars, like the paper's human-evaluation figure.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Sequence

from lamini_serve.paths import atomic_write_text, save_figure

REPORT_FORMAT = 1
PAPER_SOURCE = ("Wu et al., 2023, LaMini-LM: A Diverse Herd of Distilled Models from Large-Scale Instructions "
                "(arXiv 2304.14402), the table of zero-shot NLP results of the largest model of each family")
# The paper's published zero-shot results (percent) for the largest model of each family and its base model.
_PAPER_COLUMNS = ("openbookqa sciq race arc_challenge piqa record sst2 mrpc rte mnli mnli_mismatch wsc273 "
                  "winogrande wic hellaswag average").split()
_PAPER_ROWS = {
    "T5 (738M)": "32.8 82.4 31.5 25.4 55.9 73.1 50.2 34.3 79.8 61.3 63.1 60.4 55.2 49.4 38.9 52.9",
    "LaMini-T5-738M": "36.0 84.5 32.6 29.0 67.2 68.7 90.3 71.1 57.0 54.7 55.8 59.0 54.9 50.5 40.6 56.8",
    "Flan-T5 (783M)": "31.2 93.8 40.9 30.7 72.2 76.7 94.0 82.6 87.4 72.4 72.0 66.7 59.9 64.7 48.7 66.3",
    "LaMini-Flan-T5-783M": "34.0 86.7 32.8 31.8 70.6 70.4 93.1 77.9 65.0 61.4 61.0 64.1 56.0 63.8 43.7 60.8",
    "Cerebras-GPT (1.3B)": "29.0 73.0 30.3 25.3 66.8 75.0 51.3 68.4 53.1 35.2 35.4 62.3 51.9 50.2 38.4 49.7",
    "LaMini-Cerebras-1.3B": "34.0 79.4 32.9 30.3 66.9 66.3 90.3 71.3 65.7 47.4 49.2 57.1 51.8 50.2 38.7 55.4",
    "GPT-2 XL (1.5B)": "32.0 76.1 33.1 28.5 70.5 84.4 49.1 63.2 52.3 36.5 37.0 73.3 58.3 49.8 50.9 53.0",
    "LaMini-GPT-1.5B": "39.8 80.4 39.1 35.8 71.3 78.5 93.5 76.0 67.9 67.5 69.3 69.6 56.0 52.4 48.3 63.0",
}
PAPER_RESULTS: dict[str, dict[str, float]] = {
    name: dict(zip(_PAPER_COLUMNS, map(float, row.split()))) for name, row in _PAPER_ROWS.items()}
# hub ids -> (the paper's row for that base model, the paper's row for the LaMini model distilled from it)
PAPER_MODELS = {
    "google-t5/t5-large": ("T5 (738M)", "LaMini-T5-738M"),
    "t5-large": ("T5 (738M)", "LaMini-T5-738M"),
    "google/flan-t5-large": ("Flan-T5 (783M)", "LaMini-Flan-T5-783M"),
    "cerebras/cerebras-gpt-1.3b": ("Cerebras-GPT (1.3B)", "LaMini-Cerebras-1.3B"),
    "openai-community/gpt2-xl": ("GPT-2 XL (1.5B)", "LaMini-GPT-1.5B"),
    "gpt2-xl": ("GPT-2 XL (1.5B)", "LaMini-GPT-1.5B"),
}
LAMINI_IDS = {"mbzuai/lamini-t5-738m": "LaMini-T5-738M", "mbzuai/lamini-flan-t5-783m": "LaMini-Flan-T5-783M",
              "mbzuai/lamini-cerebras-1.3b": "LaMini-Cerebras-1.3B", "mbzuai/lamini-gpt-1.5b": "LaMini-GPT-1.5B"}


def published(model: dict) -> str | None:
    """The paper's row for this model: a LaMini release itself, a base model the paper scored, or a
    student distilled from such a base (the paper's student of the same base)."""
    source, base = str(model.get("source", "")).lower(), str(model.get("base") or "").lower()
    if source in LAMINI_IDS:
        return LAMINI_IDS[source]
    if source in PAPER_MODELS:  # the base model itself, however it was named on the command line
        return PAPER_MODELS[source][0]
    if model.get("role") in ("student", "export") and base in PAPER_MODELS:
        return PAPER_MODELS[base][1]
    return None


def order_models(models: Sequence[dict]) -> list[dict]:
    """The teacher first, then each student followed by its exports and its base model."""
    by_name = {m["name"]: m for m in models}
    out = [m for m in models if m["role"] == "teacher"]
    for m in models:
        if m["role"] == "student":
            out.append(m)
            out += [x for x in models if x["role"] in ("export", "base") and x.get("of") == m["name"]]
    out += [m for m in models if m not in out]
    return [by_name[m["name"]] for m in out]


def build(models: Sequence[dict], tasks: Sequence[dict], scores: Sequence[dict], failures: Sequence[tuple],
          agreement: dict | None = None, judge: dict | None = None, settings: dict | None = None) -> dict[str, Any]:
    """The report as one JSON-able dict."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        lm_eval_version = version("lm_eval")
    except PackageNotFoundError:
        lm_eval_version = None
    table: dict[str, dict[str, Any]] = {}
    for s in scores:
        table.setdefault(s["model"], {})[s["task"]] = {
            "value": s["value"], "metric": s["metric"], "stderr": s.get("stderr"), "n": s.get("n"),
            "task_version": s.get("task_version"), "model_hash": s.get("model_hash")}
    names = [t["name"] for t in tasks]
    paper15 = [t for t in _PAPER_COLUMNS if t != "average"]
    averages = {}
    for m in models:
        row = table.get(m["name"], {})
        done = [row[t]["value"] for t in names if t in row]
        averages[m["name"]] = {"value": sum(done) / len(done) if done else None, "tasks": len(done),
                               "complete": len(done) == len(names)}
        if all(t in row for t in paper15):  # comparable with the paper's average only over its 15 tasks, all run
            averages[m["name"]]["paper15"] = sum(row[t]["value"] for t in paper15) / 15
    models = [{**m, "published": published(m)} for m in order_models(models)]
    if judge:
        judge = {**judge, "warning": judge_warning(judge)}
    return {"format": REPORT_FORMAT, "lm_eval_version": lm_eval_version, "settings": settings or {},
            "models": models, "tasks": list(tasks), "scores": table, "averages": averages,
            "failures": [{"model": m, "task": t, "why": w} for m, t, w in failures],
            "agreement": agreement, "judge": judge,
            "paper": {"source": PAPER_SOURCE, "results": PAPER_RESULTS} if set(names) & set(_PAPER_COLUMNS) else None}


def judge_warning(judge: dict) -> str | None:
    """A judge that gives one grade to (nearly) every answer of every model tells them apart no better
    than a constant: say so, instead of letting its chart pass for a finding."""
    counts = judge.get("models") or {}
    if len(counts) < 2:
        return None
    totals = {g: sum(c.get(g, 0) for c in counts.values()) for g in ("A", "B", "C", "D")}
    graded = sum(totals.values())
    top = max(totals, key=totals.get)
    if graded and totals[top] >= 0.9 * graded:
        return (f"the judge gave {top} to {totals[top]} of the {graded} answers it graded, across all "
                f"{len(counts)} models: it does not tell them apart here. Use a stronger judge "
                "(--judge http://HOST:PORT/v1#MODEL), or lamini ui's human A-D tab")
    return None


def _pct(v: float | None) -> str:
    return "-" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{100 * v:.1f}"


def markdown(rep: dict[str, Any]) -> str:
    tasks, models, table = rep["tasks"], rep["models"], rep["scores"]
    lines = ["# lamini eval", ""]
    if tasks:
        lines += ["## Zero-shot tasks (lm-evaluation-harness)", "",
                  f"Scores in percent (lm-eval {rep.get('lm_eval_version') or '?'}, zero-shot"
                  + (f", first {rep['settings']['limit']} documents of each task" if rep["settings"].get("limit") else "")
                  + "). Average: the plain mean over the tasks; `*` marks a model that did not complete them all.", ""]
        paper = any("paper15" in a for a in rep["averages"].values())
        head = ["model", "role", "prompt"] + [f"{t['label']} ({t['metric']})" for t in tasks] + ["average"]
        head += ["average of the paper's 15", "published (Wu et al.)"] if paper else []
        lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for m in models:
            row = table.get(m["name"], {})
            avg = rep["averages"][m["name"]]
            cells = [m["name"], m["role"] + (f" of {m['of']}" if m.get("of") else ""), m.get("prompt", "")]
            cells += [_pct(row[t["name"]]["value"]) if t["name"] in row else "-" for t in tasks]
            cells.append(_pct(avg["value"]) + ("" if avg["complete"] else "*"))
            if paper:
                row_name = m.get("published")
                cells.append(_pct(avg.get("paper15")))
                cells.append(f"{PAPER_RESULTS[row_name]['average']:.1f} ({row_name})" if row_name else "")
            lines.append("| " + " | ".join(cells) + " |")
        lines += [""]
        hashes = [f"- `{m['name']}`: {m.get('source')} ({m['kind']}), sha256 {str(m.get('hash') or 'n/a')[:16]}"
                  for m in models]
        versions = ", ".join(f"{t['name']} v{t['version']}" for t in tasks if t.get("version") is not None)
        lines += ["Models:", "", *hashes, ""] + ([f"Task versions: {versions}.", ""] if versions else [])
    if rep.get("paper"):
        cols = [c for c in _PAPER_COLUMNS if c != "average" and c in {t["name"] for t in tasks}]
        lines += ["## The paper's published numbers", "", f"From {rep['paper']['source']}; percent.", "",
                  "| model | " + " | ".join(cols) + " | average (15) |", "|" + "---|" * (len(cols) + 2)]
        for name, res in rep["paper"]["results"].items():
            lines.append(f"| {name} | " + " | ".join(f"{res[c]:.1f}" for c in cols) + f" | {res['average']:.1f} |")
        lines.append("")
    ag = rep.get("agreement")
    if ag:
        lines += ["## Agreement with the teacher", "",
                  f"{ag['n']} instructions ({ag['instructions']}), greedy answers of at most {ag['max_tokens']} "
                  f"tokens, each compared with the teacher's ({ag['teacher']}).", "",
                  "| model | ROUGE-L | chrF | length ratio |", "|---|---|---|---|"]
        for name, r in ag["models"].items():
            lines.append(f"| {name} | {r['rouge_l']:.3f} | {r['chrf']:.1f} | {r['length_ratio']:.2f} |")
        lines.append("")
    jd = rep.get("judge")
    if jd:
        lines += ["## Automatic A-D rating (a proxy for human rating, not one)", "",
                  f"Judge: {jd['judge']}, asked for the LaMini-LM paper's grade with its four definitions. "
                  "Replies that are not one grade are counted as unparsed, never guessed.", "",
                  "| model | A | B | C | D | unparsed |", "|---|---|---|---|---|---|"]
        for name, c in jd["models"].items():
            lines.append(f"| {name} | {c['A']} | {c['B']} | {c['C']} | {c['D']} | {c['unparsed']} |")
        lines.append("")
        if jd.get("warning"):
            lines += [f"**Note:** {jd['warning']}.", ""]
    if rep["failures"]:
        lines += ["## Not scored", ""] + [f"- {f['model']} / {f['task']}: {f['why']}" for f in rep["failures"]] + [""]
    return "\n".join(lines)


def scores_chart(rep: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tasks, models = rep["tasks"], rep["models"]
    labels = [t["label"] for t in tasks] + ["average"]
    width = 0.8 / max(1, len(models))
    fig, ax = plt.subplots(figsize=(min(16, max(7, len(labels) * (1.0 + 0.15 * len(models)))), 4.5), dpi=110)
    for i, m in enumerate(models):
        row = rep["scores"].get(m["name"], {})
        nan = float("nan")  # not scored: no bar, not a zero
        vals = [100 * row[t["name"]]["value"] if t["name"] in row else nan for t in tasks]
        avg = rep["averages"][m["name"]]
        vals.append(100 * avg["value"] if avg["value"] is not None and avg["complete"] else nan)
        xs = [j + (i - (len(models) - 1) / 2) * width for j in range(len(labels))]
        ax.bar(xs, vals, width, label=f"{m['name']} ({m['role']})")
    ax.set_xticks(range(len(labels)))
    ax.set_xticklabels(labels, rotation=30, ha="right")
    ax.set_ylabel("score (%)")
    ax.set_ylim(0, 100)
    ax.set_title("Zero-shot scores (lm-evaluation-harness); average over the tasks a model completed all of")
    ax.legend(fontsize=8, ncol=2)
    fig.tight_layout()
    save_figure(fig, path)


def judge_chart(rep: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    jd = rep["judge"]
    names = list(jd["models"])
    colors = {"A": "#2e7d32", "B": "#9ccc65", "C": "#ffb74d", "D": "#e53935", "unparsed": "#bdbdbd"}
    fig, ax = plt.subplots(figsize=(7, 0.5 * len(names) + 2), dpi=110)
    left = [0.0] * len(names)
    for g in ("A", "B", "C", "D", "unparsed"):
        vals = []
        for n in names:
            c = jd["models"][n]
            total = sum(c.values()) or 1
            vals.append(100 * c[g] / total)
        ax.barh(names, vals, left=left, color=colors[g], label=g)
        left = [a + b for a, b in zip(left, vals)]
    ax.invert_yaxis()
    ax.set_xlim(0, 100)
    ax.set_xlabel("% of answers")
    note = "\nthe judge gives nearly every answer one grade: it does not discriminate here" if jd.get("warning") else ""
    ax.set_title(f"Automatic A-D rating by {jd['judge']}\n(a proxy for human rating, not one){note}", fontsize=10)
    ax.legend(ncol=5, fontsize=8, loc="lower center", bbox_to_anchor=(0.5, -0.45 if len(names) < 4 else -0.3))
    fig.tight_layout()
    save_figure(fig, path)


def write(rep: dict[str, Any], out: Path) -> list[Path]:
    files = [out / "report.json", out / "report.md"]
    atomic_write_text(files[0], json.dumps(rep, indent=1) + "\n")
    atomic_write_text(files[1], markdown(rep))
    if rep["tasks"] and rep["scores"]:
        scores_chart(rep, out / "scores.png")
        files.append(out / "scores.png")
    if rep.get("judge"):
        judge_chart(rep, out / "judge.png")
        files.append(out / "judge.png")
    return files
