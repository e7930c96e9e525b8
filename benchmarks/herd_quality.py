"""Does the quickstart herd speak? Each student before and after training, against the teacher.

    python benchmarks/herd_quality.py [--data runs/data] [--recipe quickstart-cpu] [--variants shipped]
    python benchmarks/herd_quality.py --variants all          # every variant below, one after another
    python benchmarks/herd_quality.py --list                  # the variants and what each changes

The data is made once by the teacher (`lamini data run DATA` when DATA has no
dataset yet); then, per variant, the recipe is trained whole with `lamini train`
(timed: the herd's wall time), and every student is measured on the instructions
the recipe holds out (the same split the trainer makes, never trained on):

- ROUGE-L of its greedy answers (temperature 0, no repetition penalty: what `lamini
  serve` answers by default) against the teacher's answers in the dataset;
- relative perplexity: the teacher's perplexity of the student's answers divided by
  its perplexity of its own (1: as natural to the teacher as its own words; word
  salad is in the hundreds). A loop ("a a a a") is easy to predict once started, so it
  scores well here; hence
- distinct-2: the share of different word bigrams in the answers (the teacher's own
  answers' figure is printed beside). See lamini_serve/quality.py.
- beside them, ROUGE-L of greedy answers with repetition penalty 1.1 (what the teacher
  answered the data with, and `lamini chat`'s default): how much of the gap is loops.

"Before" is the student's initial weights (the teacher's layers it keeps, or a fresh
config), "after" the trained checkpoint. Targets (issue 16) for the decoder-only
students: ROUGE-L >= 0.25 and relative perplexity <= 3, with the whole herd trained
within 15 minutes on a 2-core CPU. The answers to five varied instructions are
printed beside the teacher's. Prints a table, writes benchmarks/results/herd_quality.json
(and OUT/<variant>/ keeps each herd and its logs).
"""

from __future__ import annotations

import argparse
import copy
import json
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from _common import report  # noqa: E402

SHOWCASE = [
    "Give three tips for staying healthy.",
    "What is the capital of France?",
    "Write a short poem about the sea.",
    "Explain what a computer virus is to a child.",
    "Write an email to my landlord asking to fix the heating.",
]

# name -> (what it changes, a patch deep-merged into the recipe: {"defaults": {...}, "students": {NAME: {...}}})
# A patch value None removes the key. "shipped" is the recipe as it is; the others are the
# alternatives measured for issue 16 (kept so that the table can be made again).
_DECODERS = ("smol-6l", "smol-12l")
REPETITION_PENALTY = 1.1
_BEFORE = {"epochs": 2, "effective_batch_size": 16}  # the quickstart's training before issue 16


_STEPS = {"epochs": 3, "effective_batch_size": 4, "per_device_batch_size": 4}
_OLD_LRS = {"students": {"smol-6l": {"learning_rate": 3.0e-4}, "smol-12l": {"learning_rate": 2.0e-4}}}
_LRS = {"students": {"smol-6l": {"learning_rate": 1.0e-3}, "smol-12l": {"learning_rate": 6.0e-4}}}


def merge(base: dict, patch: dict) -> dict:
    """`base` with `patch` deep-merged into it (a None value removes the key)."""
    out = copy.deepcopy(base)
    for k, v in patch.items():
        if v is None:
            out.pop(k, None)
        elif isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = merge(out[k], v)
        else:
            out[k] = copy.deepcopy(v)
    return out


def _each(**fields) -> dict:
    """The same fields for both decoder-only students (learning rates stay each student's own)."""
    return {"students": {name: fields for name in _DECODERS}}


VARIANTS: dict[str, tuple[str, dict]] = {
    "shipped": ("the recipe as shipped", {}),
    "v0-spread": ("before issue 16: evenly spaced layers, cross-entropy only, 2 epochs of batch 16",
                  merge(_each(init={"keep": "spread"}, kd=None, **_BEFORE), _OLD_LRS)),
    "v1-ends": ("the first and last halves of the teacher's layers kept (its middle dropped), else as v0",
                merge(_each(init={"keep": "ends"}, kd=None, **_BEFORE), _OLD_LRS)),
    "v2-ends-kd": ("v1 + word-level KD (forward KL to the teacher's top-64, weight 0.5)",
                   merge(_each(init={"keep": "ends"}, kd={"weight": 0.5}, **_BEFORE), _OLD_LRS)),
    "v3-steps-ce": ("v1 with 6x the optimizer steps: batch 4, 3 epochs, learning rates 1e-3 (6l) and 6e-4 (12l)",
                    merge(_each(init={"keep": "ends"}, kd=None, **_STEPS), _LRS)),
    "v3-steps-kd": ("v3-steps-ce + word-level KD (top-64, weight 0.5)",
                    merge(_each(init={"keep": "ends"}, kd={"weight": 0.5}, **_STEPS), _LRS)),
    "v4-kd-only": ("v3-steps-kd with KD weight 1 (the teacher's top-64 probabilities alone, no hard labels)",
                   merge(_each(init={"keep": "ends"}, kd={"weight": 1.0}, **_STEPS), _LRS)),
    "v4-drop-cut": ("v3-steps-kd trained without the answers the teacher stopped at its 128-token limit "
                    "(often its own loops)", merge(_each(init={"keep": "ends"}, kd={"weight": 0.5}, cut_answers="drop",
                                                         **_STEPS), _LRS)),
    # After issue 16: the shipped recipe (v3-steps-kd) plus a dense signal where the cut joins
    # the teacher's blocks (kd.hidden; merged into the shipped kd, so its weight 0.5 stays).
    "v5-hidden": ("shipped + hidden-state KD weight 1: the state entering the first kept tail block matches the "
                  "teacher's there (smol-6l: teacher block 27, smol-12l: 24), on every token",
                  _each(kd={"hidden": 1.0})),
    "v5-hidden-3": ("v5-hidden with hidden-state KD weight 3", _each(kd={"hidden": 3.0})),
    # The contiguous cut with the lowest loss before training (teacher blocks 3-20 dropped for
    # smol-12l: 6.7 nats per answer token on 24 training answers, against 8.1 for the middle).
    "v6-cut-3": ("shipped, smol-12l keeping the teacher's blocks 0-2 and 21-29 (the contiguous cut that loses "
                 "least before training) instead of 0-5 and 24-29",
                 {"students": {"smol-12l": {"init": {"keep": [0, 1, 2] + list(range(21, 30))}}}}),
    "v6-epochs-1.5": ("shipped with 1.5 epochs (for twice the data: the same optimizer steps)",
                      {"defaults": {"epochs": 1.5}}),
}


def variant_recipe(recipe: dict, patch: dict) -> dict:
    out = merge(recipe, {k: v for k, v in patch.items() if k != "students"})
    per = patch.get("students", {})
    out["students"] = [merge(s, per.get(s["name"], {})) for s in out["students"]]
    return out


def measure(model, tok, spec, held, teacher, ttok, tspec, teacher_ppl: float) -> dict:
    from lamini_serve.quality import distinct_2, greedy_answers, perplexity
    from lamini_serve.rouge import rouge_l

    instructions = [p["instruction"] for p in held]
    done = greedy_answers(model, tok, spec, instructions, max_new_tokens=128)
    texts = [c.text for c in done]
    rouge = sum(rouge_l(a, p["response"]) for a, p in zip(texts, held)) / len(held)
    ppl = perplexity(teacher, ttok, tspec, instructions, texts, [not c.cut for c in done]).value
    shown = [c.text for c in greedy_answers(model, tok, spec, SHOWCASE, max_new_tokens=128)]
    # Beside it: greedy with repetition penalty 1.1, the setting the teacher answered the data
    # with (`lamini data`) and `lamini chat`'s default, to see how much of the gap is loops.
    penalised = [c.text for c in greedy_answers(model, tok, spec, instructions, max_new_tokens=128,
                                                repetition_penalty=REPETITION_PENALTY)]
    rouge_rp = sum(rouge_l(a, p["response"]) for a, p in zip(penalised, held)) / len(held)
    return {"rouge_l": round(rouge, 4), "teacher_ppl": round(ppl, 3), "relative_ppl": round(ppl / teacher_ppl, 3),
            "rouge_l_penalty_1_1": round(rouge_rp, 4), "distinct_2_penalty_1_1": round(distinct_2(penalised), 3),
            "distinct_2": round(distinct_2(texts), 3),
            "cut": sum(c.cut for c in done), "empty": sum(not t.strip() for t in texts), "showcase": shown}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default="runs/data", help="A `lamini data run` folder (made if it has no dataset).")
    ap.add_argument("--recipe", default="quickstart-cpu")
    ap.add_argument("--variants", default="shipped", help="Comma-separated names, or all.")
    ap.add_argument("--students", default=None, help="Comma-separated: only these students.")
    ap.add_argument("--work", default="runs/herd-quality", help="Where each variant's herd is trained.")
    ap.add_argument("--list", action="store_true")
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "herd_quality.json"))
    args = ap.parse_args()
    if args.list:
        for name, (what, patch) in VARIANTS.items():
            print(f"{name:<24} {what}\n{'':<24} {json.dumps(patch)}")
        return
    names = list(VARIANTS) if args.variants == "all" else args.variants.split(",")
    unknown = [n for n in names if n not in VARIANTS]
    if unknown:
        raise SystemExit(f"unknown variant(s) {', '.join(unknown)}; --list shows them")

    import yaml

    from lamini_serve.models import ModelSpec
    from lamini_serve.quality import distinct_2, perplexity
    from lamini_serve.teacher.embedded import resolve_model
    from lamini_serve.train.data import load_pairs, split_pairs
    from lamini_serve.train.recipe import load_recipe, parse_recipe, shipped_recipes
    from lamini_serve.train.students import build_student

    data = Path(args.data)
    if not (data / "dataset.parquet").is_file():
        print(f"making the data: lamini data run {data}", flush=True)
        subprocess.run([sys.executable, "-m", "lamini_serve", "data", "run", str(data)], check=True)
    source = Path(args.recipe) if Path(args.recipe).is_file() else shipped_recipes()[args.recipe]
    raw = yaml.safe_load(source.read_text(encoding="utf-8"))
    base = load_recipe(source)

    tspec = resolve_model(base.teacher)
    ttok = tspec.load_tokenizer()
    teacher = tspec.load_model(device="cpu", dtype="float32").eval()
    pairs = load_pairs(str(data))
    _, held = split_pairs(pairs, base.defaults.eval_share, base.defaults.seed)
    own = perplexity(teacher, ttok, tspec, [p["instruction"] for p in held], [p["response"] for p in held],
                     [not p["truncated"] for p in held]).value
    from lamini_serve.quality import greedy_answers

    teacher_show = [c.text for c in greedy_answers(teacher, ttok, tspec, SHOWCASE, max_new_tokens=128)]
    own_distinct = distinct_2([p["response"] for p in held])
    print(f"{len(pairs)} pairs, {len(held)} held out; the teacher's perplexity of its own answers: {own:.3f}, "
          f"their distinct-2: {own_distinct:.3f}", flush=True)

    results: dict = {"data": str(data), "pairs": len(pairs), "held_out": len(held), "teacher_ppl": round(own, 3),
                     "teacher_distinct_2": round(own_distinct, 3), "showcase": SHOWCASE, "teacher_showcase": teacher_show, "variants": {}}
    rows: list[tuple[str, str]] = []
    only = set(args.students.split(",")) if args.students else None
    initial: dict[str, dict] = {}
    for name in names:
        what, patch = VARIANTS[name]
        work = Path(args.work) / name
        data_recipe = variant_recipe(raw, patch)
        data_recipe["dataset"] = str(data / "dataset.parquet")
        data_recipe["output"] = str(work / "herd")
        if only:
            data_recipe["students"] = [s for s in data_recipe["students"] if s["name"] in only]
        work.mkdir(parents=True, exist_ok=True)
        recipe_path = work / "recipe.yaml"
        recipe_path.write_text(yaml.safe_dump(data_recipe, sort_keys=False), encoding="utf-8")
        recipe = parse_recipe(data_recipe, str(recipe_path))
        print(f"\n== {name}: {what}", flush=True)
        t0 = time.time()
        with open(work / "train.log", "w") as log:
            code = subprocess.call([sys.executable, "-m", "lamini_serve", "train", str(recipe_path)],
                                   stdout=log, stderr=subprocess.STDOUT)
        herd_seconds = time.time() - t0
        if code:
            raise SystemExit(f"{name}: lamini train failed (exit {code}); see {work / 'train.log'}")
        entry = {"what": what, "patch": patch, "herd_seconds": round(herd_seconds, 1), "students": {}}
        for student in recipe.students:
            start = json.dumps([student.name, str(student.base), repr(student.init)])
            if start not in initial:  # the same initial weights as an earlier variant's: measured once
                model, tok, spec = build_student(student, recipe.teacher)
                initial[start] = measure(model, tok, spec, held, teacher, ttok, tspec, own)
            before = initial[start]
            trained = ModelSpec.resolve(str(work / "herd" / student.name))
            after = measure(trained.load_model(device="cpu", dtype="float32"), trained.load_tokenizer(), trained,
                            held, teacher, ttok, tspec, own)
            summary = json.loads((work / "herd" / student.name / "lamini.json").read_text())["training"]
            entry["students"][student.name] = {"family": trained.family.value, "before": before, "after": after,
                                               "train_seconds": summary["seconds"], "steps": summary["steps"],
                                               "train_loss": summary["train_loss"]}
            rows.append((f"{name} / {student.name}",
                         f"ROUGE-L {before['rouge_l']:.3f} -> {after['rouge_l']:.3f}; rel. ppl "
                         f"{before['relative_ppl']:.2f} -> {after['relative_ppl']:.2f}; distinct-2 "
                         f"{before['distinct_2']:.2f} -> {after['distinct_2']:.2f}; with repetition penalty "
                         f"{REPETITION_PENALTY}: ROUGE-L {after['rouge_l_penalty_1_1']:.3f}; loss {summary['train_loss']}; "
                         f"{summary['seconds']:.0f} s"))
            print(f"  {rows[-1][0]}: {rows[-1][1]}", flush=True)
        rows.append((f"{name} / whole herd", f"{herd_seconds:.0f} s wall"))
        results["variants"][name] = entry
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(results, indent=2) + "\n")  # after each variant: nothing lost

    last = results["variants"][names[-1]]
    print("\nAnswers (greedy) of the last variant's students, beside the teacher's:")
    for i, inst in enumerate(SHOWCASE):
        print(f"\n### {inst}\n- teacher: {teacher_show[i]!r}")
        for sname, s in last["students"].items():
            print(f"- {sname}: {s['after']['showcase'][i]!r}")
    print()
    report("herd_quality", "variant / student", rows, results, args.out)


if __name__ == "__main__":
    main()
