"""In-process generation with ONNX Runtime: the engine for exported students.

`OrtEngine` has the same face as `TorchEngine` (`generate`, `complete`, `stream`)
and runs an export made by `lamini export` (or by optimum) with its own decode loop
over raw `onnxruntime` sessions. optimum's `ORTModelForCausalLM.generate` goes
through transformers' generation loop, whose Python overhead per token costs as much
as the int8 model itself on a CPU; this loop does only what a decode step needs
(measured on the embedded teacher: int8 43.8 tok/s through optimum, 66.9 here).

With `io_binding=True` past key/values stay inside ONNX Runtime between steps; the
default turns it on for GPU providers only, since on the CPU it measured no faster
(embedded teacher, int8, batch 1: 64.4 tok/s bound, 66.5 not; see
benchmarks/export_options.py). Decoder-only exports get left-padded batches; encoder-decoder
exports run the encoder once and the merged decoder step by step.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterator, Sequence

from lamini_serve.checkpoint import graph_kinds, is_onnx_folder, onnx_file
from lamini_serve.errors import LaminiError
from lamini_serve.generation import (
    Completion,
    SamplingParams,
    finish,
    visible_pieces,
)
from lamini_serve.models import Family, ModelSpec
from lamini_serve.prompts import Message

PADDING_KEY = "lamini.padding"  # graph metadata: "right" where rows must be padded on the right
_NP_TYPES = {"tensor(float)": "float32", "tensor(float16)": "float16", "tensor(int64)": "int64",
             "tensor(int32)": "int32", "tensor(bool)": "bool"}


def session_options(threads: int | None = None):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if threads:
        so.intra_op_num_threads = threads
    so.log_severity_level = 3  # errors only: ORT's warnings about unused initializers are noise here
    return so


def open_session(path: Path, threads: int | None = None, providers: Sequence[str] | None = None):
    import onnxruntime as ort

    try:
        return ort.InferenceSession(str(path), sess_options=session_options(threads),
                                    providers=list(providers or ["CPUExecutionProvider"]))
    except Exception as exc:  # onnxruntime raises its own Fail/InvalidGraph types
        raise LaminiError(f"cannot load {path}: {str(exc).splitlines()[0][:200]}; export it again with `lamini export`") from exc


LOGITS_AT = "logits_at"  # the input a right-padded graph gains at load time (with_logits_at)
_REWRITE_MAX_BYTES = 1 << 30  # larger graphs are run as written (a rewritten graph is held in memory twice)


def with_logits_at(model) -> bool:
    """Rewrite `model` (an onnx ModelProto, weights loaded) so that its head runs only at the
    positions asked for: a new input `logits_at` [batch, positions] (int64) picks, per row, the
    hidden states the lm_head turns into `logits` [batch, positions, vocab]. A prompt then
    needs the head at each row's last token only: over a 36-token prompt of the embedded
    teacher that is 35 heads' worth of a 49152-wide matrix product, and a logits array of
    7 MB a row, that are no longer made. False (and `model` unchanged) when the graph's
    `logits` does not come straight from a head on [batch, sequence, hidden]."""
    import numpy as np
    from onnx import TensorProto, helper, numpy_helper

    producer = {out: node for node in model.graph.node for out in node.output}
    head = producer.get("logits")
    if head is None or head.op_type not in ("MatMulNBits", "MatMul") or LOGITS_AT in {i.name for i in model.graph.input}:
        return False
    p = "lamini/logits_at"
    model.graph.input.append(helper.make_tensor_value_info(LOGITS_AT, TensorProto.INT64, ["batch_size", "logits_positions"]))
    model.graph.initializer.append(numpy_helper.from_array(np.array([-1], np.int64), p + "/axes"))
    at = list(model.graph.node).index(head)
    model.graph.node.insert(at, helper.make_node("Unsqueeze", [LOGITS_AT, p + "/axes"], [p + "/index"], name=p + "/Unsqueeze"))
    model.graph.node.insert(at + 1, helper.make_node("GatherND", [head.input[0], p + "/index"], [p + "/hidden"],
                                                     name=p + "/GatherND", batch_dims=1))
    head.input[0] = p + "/hidden"
    for out in model.graph.output:
        if out.name == "logits" and len(out.type.tensor_type.shape.dim) == 3:
            out.type.tensor_type.shape.dim[1].dim_param = "logits_positions"
    return True


def _open_with_logits_at(path: Path, threads: int | None, providers):
    """A right-padded graph's session, with its head behind `logits_at` (see with_logits_at);
    the graph as written when it cannot be rewritten."""
    import onnx
    import onnxruntime as ort

    size = sum(f.stat().st_size for f in path.parent.glob(path.name + "*") if f.is_file())
    if size > _REWRITE_MAX_BYTES:
        return None
    try:
        model = onnx.load(str(path))
        if not with_logits_at(model):
            return None
        return ort.InferenceSession(model.SerializeToString(), sess_options=session_options(threads),
                                    providers=list(providers or ["CPUExecutionProvider"]))
    except Exception:  # the graph as written still runs; the rewrite is only a speed-up
        return None


class _Graph:
    """One ONNX Runtime session and what a decode loop needs to know about its inputs."""

    def __init__(self, path: Path, threads: int | None, providers):
        self.session = open_session(path, threads, providers)
        # A graph with fused GroupQueryAttention (lamini export --format fused) takes its rows
        # padded on the right: it reads each row's length from the attention mask's sum.
        meta = self.session.get_modelmeta().custom_metadata_map
        self.right_padded = meta.get(PADDING_KEY) == "right"
        if self.right_padded:  # its logits read at each row's own last token, so: only there
            rewritten = _open_with_logits_at(path, threads, providers)
            if rewritten is not None:
                self.session = rewritten
        self.inputs = {i.name: i for i in self.session.get_inputs()}
        self.outputs = [o.name for o in self.session.get_outputs()]
        self.past = [n for n in self.inputs if n.startswith("past_key_values.")]
        kv = self.inputs[self.past[0]] if self.past else None
        self.kv_dtype = _NP_TYPES.get(kv.type, "float32") if kv else "float32"
        self.kv_heads_dim = _kv_shape(kv.shape, path.parent) if kv else None

    @staticmethod
    def present_of(past_name: str) -> str:
        return "present." + past_name[len("past_key_values."):]


def variant_files(spec: ModelSpec, variant: str | None = None) -> list[str]:
    """The graph files of one variant of an export: its default graph for None, "" or the
    default's own name (lamini.json's `default_variant`, e.g. "int8"), else the files of that
    name beside it (model_fp32.onnx ...). A variant that was not exported is one line."""
    folder = Path(spec.path)
    name = "" if not variant or variant == spec.metadata.get("default_variant") else variant
    files = [onnx_file(k, name) for k in graph_kinds(spec.family)]
    missing = [f for f in files if not (folder / f).is_file()]
    if missing:
        have = ", ".join(sorted(p.name for p in folder.glob("*.onnx")))
        raise LaminiError(f"{folder} has no {variant or 'default'} variant: no {missing[0]}: that variant was not "
                          f"exported (it has {have})")
    return files


class OrtEngine:
    """A loaded ONNX export + tokenizer that answers conversations."""

    def __init__(self, spec: ModelSpec, variant: str | None = None, threads: int | None = None,
                 io_binding: bool | None = None, providers: Sequence[str] | None = None):
        import numpy as np  # noqa: F401  (fail early if missing)

        self.spec = spec
        folder = Path(spec.path)
        if not is_onnx_folder(folder):
            raise LaminiError(f"{folder} holds no ONNX export (no {onnx_file('causal')} or {onnx_file('encoder')}); "
                              "make one with `lamini export`")
        files = variant_files(spec, variant)
        self.folder = folder
        self.tokenizer = spec.load_tokenizer()
        on_cpu = all(p == "CPUExecutionProvider" for p in (providers or ["CPUExecutionProvider"]))
        self.io_binding = (not on_cpu) if io_binding is None else io_binding
        self.threads = threads
        cfg = json.loads((folder / "config.json").read_text()) if (folder / "config.json").is_file() else {}
        gen = folder / "generation_config.json"
        gcfg = json.loads(gen.read_text()) if gen.is_file() else {}
        self.eos_ids = _eos_ids(gcfg.get("eos_token_id", cfg.get("eos_token_id")), self.tokenizer.eos_token_id)
        pad = self.tokenizer.pad_token_id
        self.pad_id = int(pad if pad is not None else self.eos_ids[0])
        if spec.family is Family.SEQ2SEQ:
            self.encoder = _Graph(folder / files[0], threads, providers)
            self.decoder = _Graph(folder / files[1], threads, providers)
            start = gcfg.get("decoder_start_token_id", cfg.get("decoder_start_token_id"))
            self.decoder_start = int(start if start is not None else self.pad_id)
        else:
            self.decoder = _Graph(folder / files[0], threads, providers)

    @classmethod
    def from_name(cls, name: str, prompt_format: str | None = None, **kw) -> "OrtEngine":
        return cls(ModelSpec.resolve(name, prompt_format=prompt_format), **kw)

    # ---- inputs (as TorchEngine) ----------------------------------------------
    def prompt_text(self, messages: Sequence[Message]) -> str:
        return self.spec.render(messages, self.tokenizer)

    def stops(self, params: SamplingParams) -> tuple[str, ...]:
        return tuple(dict.fromkeys(self.spec.stop_strings + params.stop))

    def encode_texts(self, texts: Sequence[str]) -> list[list[int]]:
        enc = self.tokenizer(list(texts), add_special_tokens=self.spec.add_special_tokens, return_token_type_ids=False)
        return [list(x) for x in enc["input_ids"]]

    # ---- public API -------------------------------------------------------------
    def generate(self, conversations: Sequence[Sequence[Message]], params: SamplingParams | None = None) -> list[Completion]:
        return self._finish(self.encode_texts([self.prompt_text(m) for m in conversations]), params or SamplingParams())

    def complete(self, prompts: Sequence[str], params: SamplingParams | None = None) -> list[Completion]:
        return self._finish(self.encode_texts(prompts), params or SamplingParams())

    def generate_ids(self, prompts: Sequence[Sequence[int]], params: SamplingParams | None = None) -> list[list[int]]:
        """New token ids for each prompt (end token included when one was produced)."""
        params = params or SamplingParams()
        rows: list[list[int]] = [[] for _ in prompts]
        for step in self._steps([list(p) for p in prompts], params):
            for i, t in step:
                rows[i].append(t)
        return rows

    def forced_logits(self, prompt: Sequence[int], continuation: Sequence[int]):
        """Teacher forcing: the logits that predict each token of `continuation` after
        `prompt`, in one pass (float32 [len(continuation), vocab])."""
        prompt, continuation = list(prompt), list(continuation)
        if self.spec.family is Family.SEQ2SEQ:
            run = Seq2SeqRun(self, [prompt])
            return run.first([[self.decoder_start] + continuation[:-1]], all_positions=True)[0]
        run = CausalRun(self, [prompt + continuation[:-1]])
        return run.first(all_positions=True)[0, len(prompt) - 1:]

    def stream(self, messages: Sequence[Message], params: SamplingParams | None = None) -> Iterator[str]:
        params = params or SamplingParams()
        ids = self.encode_texts([self.prompt_text(messages)])
        yield from visible_pieces(self._pieces(ids, params), self.stops(params))

    # ---- decoding -----------------------------------------------------------------
    def _finish(self, prompts: list[list[int]], params: SamplingParams) -> list[Completion]:
        if not prompts:
            return []
        rows = self.generate_ids(prompts, params)
        out = []
        for p, row in zip(prompts, rows):
            ended = bool(row) and row[-1] in self.eos_ids
            text = self.tokenizer.decode(row, skip_special_tokens=True)
            out.append(finish(text, self.stops(params), len(p), len(row), ended, params.max_new_tokens))
        return out

    def _pieces(self, ids: list[list[int]], params: SamplingParams) -> Iterator[str]:
        """Decoded text after every token, holding back incomplete characters."""
        toks: list[int] = []
        shown = ""
        for step in self._steps(ids, params):
            for _, t in step:
                if t in self.eos_ids:
                    continue
                toks.append(t)
            text = self.tokenizer.decode(toks, skip_special_tokens=True)
            if text.endswith("\ufffd") or not text.startswith(shown):
                continue
            piece, shown = text[len(shown):], text
            if piece:
                yield piece

    def _steps(self, prompts: list[list[int]], params: SamplingParams) -> Iterator[list[tuple[int, int]]]:
        """Yields, at each decode step, (row, token) for every row still running."""
        import numpy as np

        if any(len(p) == 0 for p in prompts):
            raise LaminiError("an empty prompt cannot be continued; give at least one token of text")
        rng = np.random.default_rng(params.seed)
        stops = self.stops(params)
        n = len(prompts)
        seen = [set(p) for p in prompts] if params.repetition_penalty != 1.0 else None
        done = np.zeros(n, dtype=bool)
        produced: list[list[int]] = [[] for _ in range(n)]
        runner = (Seq2SeqRun if self.spec.family is Family.SEQ2SEQ else CausalRun)(self, prompts)
        logits = runner.first()
        for _ in range(params.max_new_tokens):
            if params.ignore_eos:
                logits[:, self.eos_ids] = -np.inf
            nxt = _pick(logits, params, rng, seen)
            step = []
            for i in range(n):
                if done[i]:
                    nxt[i] = self.pad_id
                    continue
                t = int(nxt[i])
                produced[i].append(t)
                step.append((i, t))
                if seen is not None:
                    seen[i].add(t)
                if t in self.eos_ids and not params.ignore_eos:
                    done[i] = True
                elif stops and _hits_stop(self.tokenizer, produced[i], stops):
                    done[i] = True
            yield step
            if done.all():
                return
            logits = runner.next(nxt)


def _kv_shape(shape: Sequence[Any], folder: Path) -> tuple[int, int]:
    """(key/value heads, head size) of a past input [batch, heads, past, head size]. A fused graph
    (GroupQueryAttention, from onnxruntime-genai's builder) may leave them symbolic: then the
    model's config says."""
    heads, dim = shape[1], shape[3]
    if isinstance(heads, int) and isinstance(dim, int):
        return heads, dim
    cfg = json.loads((folder / "config.json").read_text()) if (folder / "config.json").is_file() else {}
    n_heads = cfg.get("num_attention_heads") or 1
    if not isinstance(heads, int):
        heads = int(cfg.get("num_key_value_heads") or n_heads)
    if not isinstance(dim, int):
        dim = int(cfg.get("head_dim") or cfg.get("hidden_size", 0) // n_heads)
    if not heads or not dim:
        raise LaminiError(f"{folder}: the graph's key/value cache has no fixed shape and config.json does not "
                          "give it (num_key_value_heads, head_dim); export it again")
    return heads, dim


def _hits_stop(tokenizer, row: list[int], stops: Sequence[str]) -> bool:
    tail = tokenizer.decode(row[-32:], skip_special_tokens=True)
    return any(s and s in tail for s in stops)


def _eos_ids(*values: Any) -> list[int]:
    ids: list[int] = []
    for v in values:
        for x in (v if isinstance(v, list) else [v]):
            if x is not None and int(x) not in ids:
                ids.append(int(x))
    if not ids:
        raise LaminiError("the export names no end-of-sequence token (config.json eos_token_id); export it again")
    return ids


def _pick(logits, params: SamplingParams, rng, seen) -> "Any":
    """Next token per row from the last position's logits (float32 [n, vocab])."""
    import numpy as np

    logits = logits.astype(np.float32, copy=True)
    if seen is not None:  # transformers' rule: divide positive logits, multiply negative ones
        p = params.repetition_penalty
        for i, toks in enumerate(seen):
            idx = np.fromiter(toks, dtype=np.int64)
            idx = idx[idx < logits.shape[1]]
            v = logits[i, idx]
            logits[i, idx] = np.where(v > 0, v / p, v * p)
    if params.temperature == 0:
        return logits.argmax(-1)
    logits /= params.temperature
    if params.top_k:
        kth = np.partition(logits, -params.top_k, axis=-1)[:, -params.top_k][:, None]
        logits = np.where(logits < kth, -np.inf, logits)
    logits -= logits.max(-1, keepdims=True)
    probs = np.exp(logits)
    probs /= probs.sum(-1, keepdims=True)
    if params.top_p < 1.0:
        order = np.argsort(-probs, axis=-1)
        sorted_p = np.take_along_axis(probs, order, -1)
        keep_sorted = np.cumsum(sorted_p, -1) - sorted_p < params.top_p  # always keeps the top token
        keep = np.zeros_like(keep_sorted)
        np.put_along_axis(keep, order, keep_sorted, -1)
        probs = np.where(keep, probs, 0.0)
        probs /= probs.sum(-1, keepdims=True)
    cum = probs.cumsum(-1)
    u = rng.random((probs.shape[0], 1)) * cum[:, -1:]
    return np.minimum((cum < u).sum(-1), probs.shape[1] - 1)


class DecodeRun:
    """State of one batched decode over a graph with past key/values."""

    def __init__(self, engine: OrtEngine, graph: _Graph):
        self.engine, self.graph = engine, graph
        self.binding = engine.io_binding

    def _zeros_past(self, n: int, names: Sequence[str], length: int = 0) -> dict[str, Any]:
        import numpy as np

        heads, dim = self.graph.kv_heads_dim
        z = np.zeros((n, heads, length, dim), dtype=self.graph.kv_dtype)
        return {name: z for name in names}

    def _run(self, feed: dict[str, Any], past: dict[str, Any], all_positions: bool = False) -> tuple[Any, dict[str, Any]]:
        """Runs one step; returns the last position's logits (numpy; every position's with
        `all_positions`) and the new past (by past name)."""
        import numpy as np

        g = self.graph
        pick = (lambda x: x) if all_positions else (lambda x: x[:, -1, :].copy())
        if not self.binding:
            outs = g.session.run(None, {**feed, **past})
            named = dict(zip(g.outputs, outs))
            new_past = {p: named[g.present_of(p)] for p in g.past}
            return pick(named["logits"]), new_past
        import onnxruntime as ort

        io = g.session.io_binding()
        for k, v in feed.items():
            io.bind_cpu_input(k, np.ascontiguousarray(v))
        for k, v in past.items():
            if isinstance(v, ort.OrtValue):
                io.bind_ortvalue_input(k, v)
            else:
                io.bind_cpu_input(k, np.ascontiguousarray(v))
        for name in g.outputs:
            io.bind_output(name, "cpu")
        g.session.run_with_iobinding(io)
        outs = dict(zip(g.outputs, io.get_outputs()))
        return pick(outs["logits"].numpy()), {p: outs[g.present_of(p)] for p in g.past}


def padded(prompts: list[list[int]], pad_id: int, left: bool):
    """(input_ids, attention_mask) of `prompts` as one int64 batch, padded on the left or the right."""
    import numpy as np

    width = max(len(p) for p in prompts)
    ids = np.full((len(prompts), width), pad_id, dtype=np.int64)
    mask = np.zeros((len(prompts), width), dtype=np.int64)
    for i, p in enumerate(prompts):
        cols = slice(width - len(p), width) if left else slice(0, len(p))
        ids[i, cols] = p
        mask[i, cols] = 1
    return ids, mask


def with_capacity(past: dict[str, Any], width: int) -> dict[str, Any]:
    """`past` ([rows, heads, columns, dim] arrays) with room for at least `width` columns: as it
    is when it has it, else copied into arrays half as long again (in steps of 64), zeros after."""
    import numpy as np

    cap = next(iter(past.values())).shape[2] if past else 0
    if width <= cap:
        return past
    cap = -(-max(width, cap + cap // 2) // 64) * 64
    grown = {}
    for name, v in past.items():
        g = np.zeros(v.shape[:2] + (cap,) + v.shape[3:], dtype=v.dtype)
        g[:, :, :v.shape[2]] = v
        grown[name] = g
    return grown


class CausalRun(DecodeRun):
    """A decoder-only batch. Rows are padded on the left, so every row's next token is in the
    last column, unless the graph asks for right padding (`_Graph.right_padded`): then each
    row's length is its mask's sum, and the logits are read at each row's last real token.

    A right-padded graph (fused GroupQueryAttention) also decodes with its cache in place: after
    the prompt, each past lives in one array with spare columns ([rows, heads, capacity, dim]),
    bound as both the step's past input and its present output, so the attention writes each
    row's new key and value at that row's length and reads its first columns. Otherwise every
    step copies the whole cache into a new present tensor (and ONNX Runtime's Python binding
    copies it again into numpy): at 32 rows of 100 tokens, about 300 MB of copying a step for
    the embedded teacher."""

    def __init__(self, engine: OrtEngine, prompts: list[list[int]]):
        super().__init__(engine, engine.decoder)
        self.right = self.graph.right_padded
        self.in_place = self.right and not self.binding  # CPU numpy pasts (OnnxSteps, lamini chat)
        self.ids, self.mask = padded(prompts, engine.pad_id, left=not self.right)
        self.past = self._zeros_past(len(prompts), self.graph.past)

    def _feed(self, ids, logits_at=None):
        import numpy as np

        feed = {"input_ids": ids, "attention_mask": self.mask}
        if "position_ids" in self.graph.inputs:
            pos = np.maximum(self.mask.cumsum(-1) - 1, 0)
            feed["position_ids"] = pos[:, -ids.shape[1]:]
        if LOGITS_AT in self.graph.inputs:  # default: the last position (a decode step's only one)
            feed[LOGITS_AT] = logits_at if logits_at is not None else np.full((ids.shape[0], 1), ids.shape[1] - 1,
                                                                                 dtype=np.int64)
        return feed

    def first(self, all_positions: bool = False):
        import numpy as np

        if not self.right:
            logits, self.past = self._run(self._feed(self.ids), self.past, all_positions)
            return logits
        last = self.mask.sum(axis=1) - 1  # right padding: each row's length is its mask's sum
        if LOGITS_AT in self.graph.inputs:
            width = self.ids.shape[1]
            at = np.broadcast_to(np.arange(width), (len(last), width)) if all_positions else last[:, None]
            logits, self.past = self._run(self._feed(self.ids, np.ascontiguousarray(at, dtype=np.int64)), self.past,
                                          all_positions=True)
            return logits if all_positions else logits[:, 0].copy()
        logits, self.past = self._run(self._feed(self.ids), self.past, all_positions=True)
        return logits if all_positions else logits[np.arange(len(last)), last].copy()

    def next(self, tokens):
        import numpy as np

        ids = np.asarray(tokens, dtype=np.int64)[:, None]
        if self.right:
            lengths = self.mask.sum(axis=1) + 1
            self.mask = (np.arange(int(lengths.max()))[None, :] < lengths[:, None]).astype(np.int64)
            if self.in_place:
                return self._step_in_place(ids)
        else:
            self.mask = np.concatenate([self.mask, np.ones((len(tokens), 1), dtype=np.int64)], axis=1)
        logits, self.past = self._run(self._feed(ids), self.past)
        return logits

    def _step_in_place(self, ids):
        """One decode step whose present key/values are written into the past arrays themselves
        (GroupQueryAttention shares the buffer when past and present are the same memory)."""
        import numpy as np
        import onnxruntime as ort

        g = self.graph
        self.past = with_capacity(self.past, self.mask.shape[1])
        io = g.session.io_binding()
        io.bind_output("logits", "cpu")  # first: get_outputs() follows the binding order
        for k, v in self._feed(ids).items():
            io.bind_cpu_input(k, np.ascontiguousarray(v))
        held = []
        for name, slab in self.past.items():
            if not slab.flags.c_contiguous:  # from_numpy would bind a copy, and the step's writes be lost
                slab = self.past[name] = np.ascontiguousarray(slab)
            ov = ort.OrtValue.ortvalue_from_numpy(slab)  # the array's own memory, not a copy
            held.append(ov)
            io.bind_ortvalue_input(name, ov)
            io.bind_ortvalue_output(g.present_of(name), ov)
        g.session.run_with_iobinding(io)
        return io.get_outputs()[0].numpy()[:, -1, :]


class Seq2SeqRun(DecodeRun):
    def __init__(self, engine: OrtEngine, prompts: list[list[int]]):
        super().__init__(engine, engine.decoder)
        n = len(prompts)
        ids, mask = padded(prompts, engine.pad_id, left=False)  # an encoder pads on the right
        enc = engine.encoder.session.run(None, {"input_ids": ids, "attention_mask": mask})[0]
        self.static = {"encoder_attention_mask": mask, "encoder_hidden_states": enc}
        self.dec_past = [p for p in self.graph.past if ".decoder." in p]
        self.enc_past = [p for p in self.graph.past if ".encoder." in p]
        self.n = n

    def _step(self, tokens, past, use_cache: bool, all_positions: bool = False):
        import numpy as np

        feed = {**self.static, "input_ids": np.asarray(tokens, dtype=np.int64).reshape(self.n, -1)}
        if "use_cache_branch" in self.graph.inputs:
            feed["use_cache_branch"] = np.array([use_cache])
        return self._run(feed, past, all_positions)

    def first(self, decoder_ids=None, all_positions: bool = False):
        import numpy as np

        past = {**self._zeros_past(self.n, self.dec_past),
                **self._zeros_past(self.n, self.enc_past, self.static["encoder_hidden_states"].shape[1])}
        if decoder_ids is None:
            decoder_ids = np.full((self.n, 1), self.engine.decoder_start)
        logits, new = self._step(decoder_ids, past, False, all_positions)
        self.enc_kv = {p: new[p] for p in self.enc_past}  # computed once from the encoder output
        self.past = new
        return logits

    def next(self, tokens):
        logits, new = self._step(tokens, {**self.past, **self.enc_kv}, True)
        self.past = {p: new[p] for p in self.dec_past}
        return logits

