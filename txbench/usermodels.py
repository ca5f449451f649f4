"""The user's own model: Hugging Face Transformers configs (``arch: hf``) and factories (``arch: factory``).

Both give the training step what the reference model gives it: a module, a
batch made on the device from the point's seed, and a function from (module,
batch) to the loss. Everything else (phases, statistics, memory, FLOPs, the
profiler pass, findings) is the same code for every model.

Hugging Face models are built with ``from_config`` from a config made here from
the point's fields: no network access, no ``trust_remote_code``, seeded random
weights in fp32 (the dtype is passed explicitly; transformers would otherwise
follow the config's). A factory is ``module:function`` imported from the working
directory or ``PYTHONPATH`` (so a suite that names one runs that code, as a
``conftest.py`` does); the protocol is in docs/suites.md and examples/my_model/.
"""

from __future__ import annotations

import difflib
import importlib
import inspect
import os
import sys
from dataclasses import dataclass
from typing import Any, Callable

import torch

from txbench.config import Point

__all__ = [
    "HF_ATTENTION",
    "TASK_CAUSAL",
    "UserModel",
    "build_user_model",
    "hf_config",
    "hf_task",
    "hf_problems",
    "factory_problems",
    "load_factory",
    "hf_attention_reason",
    "matmul_params",
    "user_model_flops",
]

#: txbench attention name -> transformers ``attn_implementation``; sdpa_* force the backend around the step.
HF_ATTENTION = {
    "naive": "eager",
    "sdpa": "sdpa",
    "sdpa_math": "sdpa",
    "sdpa_flash": "sdpa",
    "sdpa_efficient": "sdpa",
    "sdpa_cudnn": "sdpa",
    "flex": "flex_attention",
    "flash_attention_2": "flash_attention_2",
    "flash_attention_3": "flash_attention_3",
}
#: Masked-LM families (non-causal encoders); other decoder-only families train as causal LMs.
_MASKED = ("bert", "roberta", "distilbert", "albert", "electra", "deberta", "deberta-v2", "modernbert", "xlm-roberta")
HF_INSTALL = "pip install 'txbench[hf]'  (transformers >= 4.50)"
#: The kinds of attention (causal or not) each Hugging Face task runs.
TASK_CAUSAL = {"causal_lm": {True}, "masked_lm": {False}, "seq2seq": {True, False}}


@dataclass
class UserModel:
    """What the training step needs from any model."""

    module: torch.nn.Module
    batch: dict
    loss: Callable[[torch.nn.Module, dict], torch.Tensor]
    task: str  # "causal_lm", "masked_lm", "seq2seq" or "factory"
    causal: set  # the attention kinds the model runs: {True}, {False} or both


# ------------------------------------------------------------------ Hugging Face
def _transformers():
    try:
        import transformers
    except ImportError:
        return None
    return transformers


def _config_names() -> list[str]:
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING_NAMES

    return list(CONFIG_MAPPING_NAMES)


def hf_task(model_type: str, config=None) -> str:
    """``seq2seq`` for encoder-decoders, ``masked_lm`` for BERT-like encoders, else ``causal_lm``."""
    if config is not None and getattr(config, "is_encoder_decoder", False):
        return "seq2seq"
    if model_type in _MASKED:
        return "masked_lm"
    return "causal_lm"


def hf_config(point: Point):
    """The transformers config of ``point``: txbench's size fields mapped onto the family's names, then ``hf``."""
    from transformers import AutoConfig

    m = point.model
    extra = dict(m.hf)
    model_type = extra.pop("model_type")
    d, h = m.d_model, m.n_heads
    kwargs: dict[str, Any] = {
        "hidden_size": d, "num_hidden_layers": m.n_layers, "num_attention_heads": h,
        "intermediate_size": m.ffn_mult * d, "vocab_size": m.vocab_size, "max_position_embeddings": m.max_seq_len,
        "use_cache": False,  # training: no key/value cache built in every step
    }
    if model_type == "gpt2":  # GPT-2 names its MLP width n_inner and ids sit at the end of its 50k vocabulary
        kwargs.update(n_inner=m.ffn_mult * d, bos_token_id=m.vocab_size - 1, eos_token_id=m.vocab_size - 1)
    if model_type in ("t5", "mt5", "umt5"):  # T5 sizes its heads (d_kv), MLP (d_ff) and decoder separately
        kwargs.update(d_ff=m.ffn_mult * d, d_kv=d // h, num_decoder_layers=m.n_layers, decoder_start_token_id=0,
                      pad_token_id=0, eos_token_id=1)
    # txbench's dropout (default 0: deterministic steps, fused kernels allowed) onto every dropout of the family
    default = AutoConfig.for_model(model_type)
    kwargs.update(_fit_family_defaults(default, m.vocab_size, d, h))
    for name, value in vars(default).items():
        if isinstance(value, float) and (name.endswith(("dropout", "_pdrop", "dropout_prob", "dropout_rate"))):
            kwargs[name] = float(m.dropout)
    kwargs.update(extra)
    return AutoConfig.for_model(model_type, **kwargs)


def _fit_family_defaults(default, vocab_size: int, d: int, h: int) -> dict:
    """Family defaults that do not fit txbench's sizes, refitted: key/value heads (Mistral's 8, Qwen2's 32) beyond
    ``n_heads`` become ``n_heads`` (plain multi-head attention; set ``hf.num_key_value_heads`` for grouped
    queries), a fixed ``head_dim`` (Gemma's 256) becomes ``d_model / n_heads``, and special token ids beyond the
    vocabulary (Phi-3's 32000) move inside it."""
    out: dict[str, Any] = {}
    kv = getattr(default, "num_key_value_heads", None)
    if isinstance(kv, int) and (kv > h or h % kv):
        out["num_key_value_heads"] = h
    if isinstance(getattr(default, "head_dim", None), int) and not isinstance(
            getattr(type(default), "head_dim", None), property):  # Falcon derives it
        out["head_dim"] = d // h
    for name in ("pad_token_id", "bos_token_id", "eos_token_id", "decoder_start_token_id"):
        v = getattr(default, name, None)
        if isinstance(v, int) and v >= vocab_size:
            out[name] = vocab_size - 1
        elif isinstance(v, list) and any(isinstance(i, int) and i >= vocab_size for i in v):
            out[name] = [min(i, vocab_size - 1) for i in v]
    return out


def hf_problems(point: Point) -> list[tuple[str, str]]:
    """Problems of an ``arch: hf`` point that are known before building it (field, message)."""
    m = point.model
    if _transformers() is None:
        return [("model.arch", f"arch: hf needs transformers; install it with: {HF_INSTALL}")]
    model_type = m.hf.get("model_type")
    if not model_type:
        return [("model.hf.model_type", "arch: hf needs hf: {model_type: ...}, e.g. llama, gpt2, bert, t5")]
    names = _config_names()
    if model_type not in names:
        close = difflib.get_close_matches(str(model_type), names, n=3, cutoff=0.6)
        hint = f"; did you mean {', '.join(map(repr, close))}?" if close else " (transformers' config registry)"
        return [("model.hf.model_type", f"unknown model_type {model_type!r}{hint}")]
    from transformers import AutoConfig

    default = AutoConfig.for_model(model_type)
    known = set(vars(default)) | set(getattr(default, "attribute_map", {}))
    try:
        known |= set(inspect.signature(type(default).__init__).parameters)
    except (TypeError, ValueError):
        pass
    problems = []
    for key in m.hf:
        if key != "model_type" and key not in known:
            close = difflib.get_close_matches(key, sorted(known), n=1, cutoff=0.7)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            problems.append((f"model.hf.{key}", f"{type(default).__name__} has no field {key!r}{hint}"))
    return problems


def hf_attention_reason(point: Point) -> str | None:
    """Why ``point.attention`` cannot run on this HF model (before the kernel probe), or None."""
    att = point.attention
    if att == "mha":
        return ("mha is the reference model's nn.MultiheadAttention; Hugging Face models choose attention "
                "through attn_implementation: naive (eager), sdpa, sdpa_math/flash/efficient/cudnn, flex, "
                "flash_attention_2/3")
    if att.startswith("flash_attention_"):
        pkg = "flash_attn" if att == "flash_attention_2" else "flash_attn_interface"
        if torch.device(point.device).type != "cuda":
            return f"{att} runs only on CUDA devices"
        try:
            importlib.import_module(pkg)
        except ImportError:
            return f"{att} needs the {pkg} package (not installed)"
    return None


def _build_hf(point: Point, device: torch.device, generator: torch.Generator) -> UserModel:
    import transformers

    config = hf_config(point)
    task = hf_task(point.model.hf["model_type"], config)
    cls = {"seq2seq": transformers.AutoModelForSeq2SeqLM, "masked_lm": transformers.AutoModelForMaskedLM,
           "causal_lm": transformers.AutoModelForCausalLM}[task]
    torch.manual_seed(point.train.seed)  # from_config draws the initial weights from torch's global generator
    with device:
        try:
            module = cls.from_config(config, attn_implementation=HF_ATTENTION[point.attention], dtype=torch.float32)
        except ValueError as exc:  # "Gemma2ForCausalLM does not support an attention implementation through ..."
            if "does not support" not in str(exc):
                raise
            from txbench.errors import LeverUnsupported

            raise LeverUnsupported(f"attention: {point.attention}: {str(exc).split('. ')[0]}") from None
    batch = _default_batch(point.batch_size, point.seq_len, point.model.vocab_size, device, generator)
    return UserModel(module, batch, _hf_loss, task, TASK_CAUSAL[task])


def _hf_loss(module, batch):
    return module(**batch).loss


# ------------------------------------------------------------------ factories
def _split_target(target: str) -> tuple[str, str] | None:
    mod, colon, fn = str(target).partition(":")
    return (mod, fn) if colon and mod and fn else None


def load_factory(target: str) -> Callable:
    """The factory function ``module:function``, imported from the working directory or ``PYTHONPATH``.

    Raises ValueError with what is wrong (not ``module:function``, not importable, not callable).
    """
    parts = _split_target(target)
    if parts is None:
        raise ValueError(f"factory must be 'module:function' (e.g. my_project.models:build), got {target!r}")
    mod_name, fn_name = parts
    if os.getcwd() not in sys.path and "" not in sys.path:
        sys.path.insert(0, os.getcwd())  # as python -m does: the working directory's packages import
    try:
        module = importlib.import_module(mod_name)
    except Exception as e:  # the user's module: any error there is theirs to see
        raise ValueError(f"factory module {mod_name!r} does not import: {type(e).__name__}: {e}") from None
    fn = getattr(module, fn_name, None)
    if fn is None:
        raise ValueError(f"factory module {mod_name!r} ({getattr(module, '__file__', '?')}) has no {fn_name!r}")
    if not callable(fn):
        raise ValueError(f"factory {target!r} is not callable (a {type(fn).__name__})")
    return fn


def factory_problems(point: Point) -> list[tuple[str, str]]:
    """Problems of an ``arch: factory`` point that are known before running it (field, message)."""
    try:
        load_factory(point.model.factory)
    except ValueError as e:
        return [("model.factory", str(e))]
    return []


def factory_module_file(target: str) -> str | None:
    """The file ``txbench validate`` says it would import for ``target``."""
    try:
        fn = load_factory(target)
    except ValueError:
        return None
    mod = sys.modules.get(fn.__module__)
    return getattr(mod, "__file__", None)


def _default_batch(batch_size: int, seq_len: int, vocab_size: int, device, generator) -> dict:
    ids = torch.randint(0, vocab_size, (batch_size, seq_len), generator=generator, device="cpu").to(device)
    labels = torch.randint(0, vocab_size, (batch_size, seq_len), generator=generator, device="cpu").to(device)
    return {"input_ids": ids, "labels": labels}


def _factory_loss(module, batch):
    out = module(**batch)
    loss = getattr(out, "loss", out)
    if not torch.is_tensor(loss) or loss.numel() != 1:
        raise TypeError(f"the factory's model returned {type(out).__name__}, not a loss: return the scalar loss "
                        "tensor or an object with .loss")
    return loss


def _build_factory(point: Point, device: torch.device, generator: torch.Generator) -> UserModel:
    fn = load_factory(point.model.factory)
    torch.manual_seed(point.train.seed)
    with device:
        built = fn(point, **point.model.factory_args)
    make_batch = None
    if isinstance(built, tuple) and len(built) == 2:
        built, make_batch = built
    if not isinstance(built, torch.nn.Module):
        raise TypeError(f"factory {point.model.factory!r} returned {type(built).__name__}; it must return a "
                        "torch.nn.Module or (module, make_batch)")
    # already on the device (built under ``with device``): no move, which also keeps fake tensors (the memory
    # estimate) where they are
    on = all(t.device == device for t in [*built.parameters(), *built.buffers()])
    module = built if on else built.to(device)
    if make_batch is not None:
        batch = make_batch(point.batch_size, point.seq_len, device, generator)
        if not isinstance(batch, dict):
            raise TypeError(f"make_batch returned {type(batch).__name__}; it must return a dict of tensors")
    else:
        batch = _default_batch(point.batch_size, point.seq_len, point.model.vocab_size, device, generator)
    return UserModel(module, batch, _factory_loss, "factory", {bool(point.model.causal)})


def build_user_model(point: Point, device: torch.device) -> UserModel:
    """Module, batch and loss of an ``arch: hf`` or ``arch: factory`` point, on ``device``."""
    generator = torch.Generator(device="cpu").manual_seed(point.train.seed)
    if point.model.arch == "hf":
        return _build_hf(point, device, generator)
    if point.model.arch == "factory":
        return _build_factory(point, device, generator)
    raise ValueError(f"arch {point.model.arch!r} is the reference model, not a user model")


# ------------------------------------------------------------------ FLOPs
def matmul_params(module: torch.nn.Module) -> int:
    """Parameters that multiply activations (Linear and GPT-2's Conv1D weights; lookups excluded)."""
    seen, n = set(), 0
    for mod in module.modules():
        w = getattr(mod, "weight", None)
        if type(mod).__name__ in ("Linear", "Conv1D", "NonDynamicallyQuantizableLinear") and torch.is_tensor(w):
            if id(w) not in seen:  # a tied LM head is one matrix used once per token
                seen.add(id(w))
                n += w.numel()
    return n


def user_model_flops(point: Point, um: UserModel) -> dict | None:
    """The closed-form FLOPs of a Hugging Face point (PaLM's 6N + 12·L·d·T per token), or None for a factory.

    N counts the matmul parameters (:func:`matmul_params`); the attention term is
    the FlashAttention convention of the reference model, not halved for causal
    masks: 4·B·T²·d per attention layer forward, times 3 for the step. An
    encoder-decoder has L encoder self-attention, L decoder self-attention and
    L cross-attention layers.
    """
    if point.model.arch != "hf":
        return None
    B, T, d, L = point.batch_size, point.seq_len, point.model.d_model, point.model.n_layers
    cfg = um.module.config
    d = getattr(cfg, "hidden_size", d)
    L = getattr(cfg, "num_hidden_layers", L)
    attn_layers = L + 2 * getattr(cfg, "num_decoder_layers", L) if um.task == "seq2seq" else L
    attn = 3 * 4 * B * T * T * d * attn_layers
    dense = 6 * matmul_params(um.module) * B * T
    return {"flops_per_step": dense + attn, "attn_flops_per_step": attn}
