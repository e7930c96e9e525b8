"""`lamini data ...`: build instruction data with a teacher."""

from __future__ import annotations

import json
from pathlib import Path

import click

from lamini_serve.prompts import LAMINI_TEACHER_SYSTEM


def _columns(values: tuple[str, ...]) -> dict[str, str]:
    out = {}
    for v in values:
        if "=" not in v:
            raise click.BadParameter(f"{v!r}: use OURS=THEIRS, e.g. instruction=prompt", param_hint="--column")
        k, _, val = v.partition("=")
        out[k.strip()] = val.strip()
    return out


def _shard(value: str) -> tuple[int, int]:
    try:
        i, n = (int(x) for x in value.split("/"))
    except ValueError:
        raise click.BadParameter(f"{value!r}: use i/N, e.g. 0/4", param_hint="--shard") from None
    return i, n


def dedup_options(f):
    f = click.option("--near-dup-threshold", type=click.FloatRange(0, 1, min_open=True), default=0.7, show_default=True,
                     help="Estimated Jaccard (5-byte shingles of the normalized text) above which two instructions are near-duplicates.")(f)
    f = click.option("--no-near-dedup", is_flag=True, help="Skip MinHash near-duplicate removal.")(f)
    f = click.option("--no-exact-dedup", is_flag=True, help="Skip exact (normalized) duplicate removal.")(f)
    f = click.option("--disable-filter", multiple=True,
                     type=click.Choice(["too_short", "too_long", "media", "bad_start", "repetitive"]),
                     help="Turn one instruction filter off (repeatable).")(f)
    f = click.option("--min-words", type=click.IntRange(0), default=3, show_default=True)(f)
    f = click.option("--max-words", type=click.IntRange(0), default=150, show_default=True)(f)
    return f


def _dedup_filter(near_dup_threshold, no_near_dedup, no_exact_dedup, disable_filter, min_words, max_words):
    from lamini_serve.data.dedup import DedupConfig
    from lamini_serve.data.filters import FilterConfig

    return (DedupConfig(exact=not no_exact_dedup, near=not no_near_dedup, threshold=near_dup_threshold),
            FilterConfig(min_words=min_words, max_words=max_words, disabled=tuple(disable_filter)))


@click.group()
def data() -> None:
    """Build an instruction dataset: seeds, new instructions, teacher answers, dedup, stats."""


@data.command()
@click.argument("out", type=click.Path(file_okay=False))
@click.option("--teacher", default="embedded", show_default=True,
              help="An in-process teacher: `embedded`, a checkpoint folder, a hub id, or an ONNX export of one "
                   "(`lamini export`; runs on ONNX Runtime, several times faster on a CPU).")
@click.option("--teacher-variant", default=None,
              help="Which graph of an ONNX export answers: fp32 (the checkpoint's answers), int8 ... "
                   "Default: the export's own default.")
@click.option("--teacher-url", default=None, help="An OpenAI-compatible endpoint instead (OpenAI, vLLM, lamini serve).")
@click.option("--teacher-model", default=None, help="The model name the endpoint serves.")
@click.option("--api-key-env", default="OPENAI_API_KEY", show_default=True, help="Environment variable holding the key.")
@click.option("--concurrency", type=click.IntRange(1), default=64, show_default=True, help="HTTP requests in flight.")
@click.option("--rpm", type=click.FloatRange(0, min_open=True), default=None, help="Requests-per-minute limit (HTTP).")
@click.option("--tpm", type=click.FloatRange(0, min_open=True), default=None, help="Tokens-per-minute limit (HTTP).")
@click.option("--max-retries", type=click.IntRange(0), default=6, show_default=True)
@click.option("--timeout", type=click.FloatRange(0, min_open=True), default=120.0, show_default=True,
              help="Seconds per HTTP request (> 0).")
@click.option("--batch-size", type=click.IntRange(1), default=32, show_default=True, help="Batch size of an in-process teacher.")
@click.option("--device", default="auto", show_default=True)
@click.option("--seeds", default="builtin", show_default=True, help="builtin, a .jsonl/.csv/.parquet file, or a hub dataset id.")
@click.option("--column", "columns", multiple=True, help="Map seed columns: instruction=NAME, input=NAME, output=NAME.")
@click.option("--topics", default="builtin", show_default=True, help="builtin or a text file, one topic per line.")
@click.option("--calls", type=click.IntRange(0), default=70, show_default=True, help="Example-guided generation calls.")
@click.option("--topic-calls", type=click.IntRange(0), default=30, show_default=True, help="Topic-guided generation calls.")
@click.option("--style", type=click.Choice(["auto", "chat", "completion"]), default="auto", show_default=True,
              help="Generation prompt: the paper's chat prompt, or a numbered list to continue; auto asks the teacher.")
@click.option("--gen-temperature", type=click.FloatRange(0), default=0.9, show_default=True)
@click.option("--gen-max-tokens", type=click.IntRange(1), default=None,
              help="Default: 1024 (chat style), 128 (completion style).")
@click.option("--resp-temperature", type=click.FloatRange(0), default=0.0, show_default=True)
@click.option("--resp-max-tokens", type=click.IntRange(1), default=None, help="Default: 128 in-process, 512 over HTTP.")
@click.option("--system-prompt", default=LAMINI_TEACHER_SYSTEM, show_default=True)
@click.option("--answer-seeds", is_flag=True,
              help="Also have the teacher answer the seed instructions themselves and keep them in the dataset.")
@dedup_options
@click.option("--shard", default="0/1", show_default=True, help="Run shard i of N (one per machine); merge them after.")
@click.option("--seed", type=int, default=42, show_default=True)
@click.option("--jsonl", is_flag=True, help="Also write dataset.jsonl.")
@click.option("--no-stats", is_flag=True, help="Skip the statistics report and plots.")
def run(out, teacher, teacher_variant, teacher_url, teacher_model, api_key_env, concurrency, rpm, tpm, max_retries, timeout, batch_size,
        device, seeds, columns, topics, calls, topic_calls, style, gen_temperature, gen_max_tokens, resp_temperature,
        resp_max_tokens, system_prompt, answer_seeds, near_dup_threshold, no_near_dedup, no_exact_dedup,
        disable_filter, min_words, max_words, shard, seed, jsonl, no_stats):
    """Generate instructions from seeds and have the teacher answer them, into OUT.

    Resumable: run the same command again and it skips everything already done.

    \b
      lamini data run runs/data                      # the embedded teacher, on this machine
      lamini data run runs/data --teacher-url http://gpu-node:8000/v1 --teacher-model Qwen/Qwen2.5-7B-Instruct \\
          --calls 50000 --topic-calls 50000 --shard 0/8
    """
    from lamini_serve.data.pipeline import DataConfig, run_data
    from lamini_serve.paths import clean_stale_tmp, folder_lock
    from lamini_serve.teacher.backends import make_teacher

    dedup, filters = _dedup_filter(near_dup_threshold, no_near_dedup, no_exact_dedup, disable_filter, min_words, max_words)
    cfg = DataConfig(
        out=out, seeds=seeds, columns=_columns(columns), topics=topics, calls=calls, topic_calls=topic_calls,
        style=style, gen_temperature=gen_temperature, gen_max_tokens=gen_max_tokens, answer_seeds=answer_seeds,
        system_prompt=system_prompt, resp_temperature=resp_temperature, resp_max_tokens=resp_max_tokens,
        dedup=dedup, filters=filters, shard=_shard(shard), seed=seed, jsonl=jsonl, stats=not no_stats,
    )
    # One run per OUT at a time: two would pay the teacher twice for the same units.
    with folder_lock(Path(out)) as folder:
        clean_stale_tmp(folder)  # what a killed run was writing
        t = make_teacher(teacher, url=teacher_url, model=teacher_model, api_key_env=api_key_env, batch_size=batch_size,
                         device=device, variant=teacher_variant, concurrency=concurrency, requests_per_minute=rpm, tokens_per_minute=tpm,
                         max_retries=max_retries, timeout=timeout)
        summary = run_data(cfg, t)
    _print_summary(summary, out)


def _print_summary(summary: dict, out: str) -> None:
    click.echo(f"{summary['rows']} rows in {summary['dataset']}")
    click.echo("  per source: " + ", ".join(f"{k} {v}" for k, v in summary["per_source"].items()))
    click.echo(f"  dropped: {summary['rejected']} (" + ", ".join(f"{k}: {v}" for k, v in summary["rejected_by_reason"].items())
               + ") - see rejected.parquet")
    if summary.get("unanswered"):
        click.echo(f"  unanswered: {summary['unanswered']} (failed answers are retried when you run the same command again)")
    if summary.get("failures_this_run"):
        click.echo("  failures this run: " + ", ".join(f"{k} {v}" for k, v in summary["failures_this_run"].items()))


@data.command()
@click.argument("out", type=click.Path(file_okay=False))
@click.argument("runs", nargs=-1, required=True, type=click.Path(exists=True, file_okay=False))
@dedup_options
def merge(out, runs, near_dup_threshold, no_near_dedup, no_exact_dedup, disable_filter, min_words, max_words):
    """Join the run folders of shards (RUNS) into OUT, deduplicated across all of them."""
    from lamini_serve.data.pipeline import DataConfig, merge_runs
    from lamini_serve.paths import clean_stale_tmp, folder_lock

    dedup, filters = _dedup_filter(near_dup_threshold, no_near_dedup, no_exact_dedup, disable_filter, min_words, max_words)
    cfg = DataConfig(out=out, dedup=dedup, filters=filters, stats=False)
    with folder_lock(Path(out)) as folder:
        clean_stale_tmp(folder)
        clean_stale_tmp(folder.resolve().parent)  # the merge is staged beside OUT
        summary = merge_runs(out, list(runs), cfg)
    _print_summary(summary, out)


@data.command()
@click.argument("dataset", type=click.Path())
@click.option("--out", "out_dir", type=click.Path(file_okay=False), default=None, help="Where the report goes (default: beside the dataset).")
@click.option("--map-rows", type=click.IntRange(5), default=3000, show_default=True, help="Rows sampled for the t-SNE map.")
@click.option("--no-plots", is_flag=True)
@click.option("--json", "as_json", is_flag=True)
def stats(dataset, out_dir, map_rows, no_plots, as_json):
    """Counts, lengths, MATTR diversity, a t-SNE map (PNG) and a markdown report of DATASET."""
    from lamini_serve.data.stats import describe

    s = describe(dataset, out_dir, map_rows=map_rows, plots=not no_plots)
    if as_json:
        click.echo(json.dumps(s, indent=2))
        return
    click.echo(f"rows: {s['rows']}")
    for src, n in s["per_source"].items():
        click.echo(f"  {src}: {n}")
    for col in ("instruction_words", "response_words"):
        d = s[col]
        click.echo(f"{col.replace('_', ' ')}: mean {d['mean']}, median {d['median']}, p90 {d['p90']}, max {d['max']}")
    click.echo(f"MATTR (window 50): instructions {s['mattr_instructions']}, responses {s['mattr_responses']}")
    for png in s.get("plots", []):
        click.echo(f"wrote {png}")


@data.command(name="import")
@click.argument("source")
@click.argument("out", type=click.Path(file_okay=False))
@click.option("--column", "columns", multiple=True, help="Map columns: instruction=NAME, input=NAME, output=NAME.")
@click.option("--split", default="train", show_default=True, help="Split of a hub dataset.")
@dedup_options
def import_(source, out, columns, split, near_dup_threshold, no_near_dedup, no_exact_dedup, disable_filter, min_words, max_words):
    """Bring an existing instruction dataset (a file or a hub id such as MBZUAI/LaMini-instruction)
    through the same filters and dedup, into OUT/dataset.parquet."""
    from lamini_serve.data.pipeline import import_dataset
    from lamini_serve.paths import clean_stale_tmp, folder_lock

    dedup, filters = _dedup_filter(near_dup_threshold, no_near_dedup, no_exact_dedup, disable_filter, min_words, max_words)
    with folder_lock(Path(out)) as folder:
        clean_stale_tmp(folder)
        summary = import_dataset(source, out, _columns(columns), split, dedup, filters)
    _print_summary(summary, out)
