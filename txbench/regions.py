"""Regions for any model: profiler ranges from the model's modules.

The reference model (``txbench.model``) opens ``txbench::<region>`` ranges itself.
Other models (Hugging Face Transformers, a user's ``nn.Module``) do not, so
:func:`annotate_modules` registers forward pre/post hooks on their modules:
while :func:`txbench.model.annotate_regions` is active (the profiler pass), a
module of a recognised kind runs inside ``record_function("txbench::<region>")``
and :mod:`txbench.profile` attributes its ops, and their backward ops, to that
region like the reference model's. Outside ``annotate_regions()`` the hooks open
nothing.

A module's kind comes from its class name and the attribute name its parent
holds it under, by :data:`MODULE_RULES` (first match wins):

- the outermost recognised module owns its subtree (``LlamaAttention``'s
  ``q_proj`` is attention, T5's relative position bias ``Embedding`` too);
- except norms: a norm module is ``norm`` wherever it sits (a pre-norm beside
  attention as in the reference model, BERT's post-norm inside its attention
  output, QK-norm inside attention), so the ``norm`` region means the same in
  every architecture;
- the root module (the model itself) is never a region;
- a head (``lm_head_loss``) keeps its range open until the model's forward
  returns, because Hugging Face models compute the loss there, after the head,
  outside any module (``self.loss_function``, an inline ``CrossEntropyLoss``).
  A loss computed by the caller goes in :func:`loss_region`.

See docs/profiling.md, "Regions of any model".
"""

from __future__ import annotations

import contextlib
import re
from dataclasses import dataclass
from types import MappingProxyType

import torch
from torch import nn

from txbench import model as _model
from txbench.model import regions_enabled

__all__ = ["MODULE_RULES", "ModuleRule", "RegionHooks", "annotate_modules", "loss_region", "module_region",
           "plan_regions"]

_PREFIX = "txbench::"


def _tok(words: str) -> str:
    """``words`` as a whole token of an attribute name (``ln`` in ``ln_1``, ``ln_f``, ``ln2``; not in ``kiln``)."""
    return rf"(?<![a-z])(?:{words})(?![a-z])"


@dataclass(frozen=True)
class ModuleRule:
    """A module is ``region`` when its class name matches ``cls`` and its attribute name matches ``attr``.

    Both are case-insensitive regexes, searched; None matches anything. ``why``
    says what the rule is for (it is the table in docs/profiling.md).
    """

    region: str
    cls: str | None = None
    attr: str | None = None
    why: str = ""

    def __post_init__(self):
        object.__setattr__(self, "_cls", re.compile(self.cls, re.IGNORECASE) if self.cls else None)
        object.__setattr__(self, "_attr", re.compile(self.attr, re.IGNORECASE) if self.attr else None)

    def matches(self, cls_name: str, attr_name: str) -> bool:
        return ((self._cls is None or self._cls.search(cls_name) is not None)
                and (self._attr is None or self._attr.search(attr_name) is not None))


#: Module kinds, most specific first; the first match wins.
MODULE_RULES: tuple[ModuleRule, ...] = (
    # before embedding: LlamaRotaryEmbedding makes the cos/sin tables only attention uses
    ModuleRule("attention", cls=r"rotary|(?-i:RoPE|Rope)", why="rotary position embeddings (LlamaRotaryEmbedding)"),
    ModuleRule("attention", attr=_tok("rotary_emb|rotary|rope"), why="rotary position embeddings"),
    # before attention and mlp: post_attention_layernorm, attention_norm, ffn_norm are norms
    ModuleRule("norm", cls=r"norm(?!al)", why="LayerNorm, RMSNorm, LlamaRMSNorm, T5LayerNorm, GroupNorm"),
    ModuleRule("norm", attr=r"norm(?!al)|" + _tok("ln"), why="ln_1, ln_f, norm1, LayerNorm, input_layernorm"),
    # the root is never classified, so GPT2LMHeadModel does not land here; ``Head$`` is anchored for that reason
    ModuleRule("lm_head_loss", cls=r"head$", why="BertOnlyMLMHead, RobertaLMHead, ...PredictionHead"),
    ModuleRule("lm_head_loss", attr=_tok("lm_head|head|cls|classifier|score"),
               why="lm_head, head, cls, classifier, score"),
    ModuleRule("attention", cls=r"attention|attn",
               why="LlamaAttention, GPT2Attention, BertAttention, T5Attention, T5LayerSelfAttention, "
                   "nn.MultiheadAttention"),
    ModuleRule("attention", attr=r"attention|attn", why="self_attn, attn, SelfAttention, EncDecAttention"),
    ModuleRule("mlp", cls=r"mlp|feed_?forward|ffn|layerff$|dense(gated)?actdense|intermediate$|moe|experts$",
               why="LlamaMLP, GPT2MLP, T5LayerFF, T5DenseActDense, BertIntermediate, MixtralSparseMoeBlock"),
    ModuleRule("mlp", attr=_tok("mlp|ffn|ff|feed_forward|feedforward|intermediate|moe|experts|block_sparse_moe"),
               why="mlp, ffn, ff, feed_forward, intermediate"),
    # BertOutput (dense + residual after BertIntermediate) is the MLP's second half; BertSelfOutput sits in attention
    ModuleRule("mlp", cls=r"(?<!self)output$", attr=r"^output$", why="BertOutput as BertLayer.output"),
    ModuleRule("embedding", cls=r"embed|positionalencoding",
               why="Embedding, BertEmbeddings, a user's TokenEmbedding or PositionalEncoding"),
    ModuleRule("embedding", attr=_tok(r"embed\w*|\w*embeddings?|emb|wte|wpe|tok\w*|pos_enc\w*"),
               why="embed_tokens, wte, wpe, tok_emb, pos_encoder"),
)


def module_region(cls_name: str, attr_name: str, rules=MODULE_RULES) -> str | None:
    """The region of a module of class ``cls_name`` held under ``attr_name``, or None (not recognised)."""
    for rule in rules:
        if rule.matches(cls_name, attr_name):
            return rule.region
    return None


def _is_container(m: nn.Module) -> bool:
    # ModuleList/ModuleDict never run forward themselves: a hook there would fire never and hide the children
    return type(m).forward is nn.Module.forward


def _plan(model: nn.Module, rules) -> list[tuple[str, nn.Module, str]]:
    out: list[tuple[str, nn.Module, str]] = []
    seen = {id(model)}

    def walk(module: nn.Module, prefix: str, owner: str | None) -> None:
        for attr, child in module.named_children():
            if id(child) in seen:  # shared modules (T5's embedding under shared and embed_tokens): once
                continue
            seen.add(id(child))
            name = f"{prefix}{attr}"
            region = None if _is_container(child) else module_region(type(child).__name__, attr, rules)
            if region is not None and (owner is None or (region == "norm" and owner != "norm")):
                out.append((name, child, region))
                walk(child, name + ".", region)
            else:
                walk(child, name + ".", owner)

    walk(model, "", None)
    return out


def plan_regions(model: nn.Module, rules=MODULE_RULES) -> dict[str, str]:
    """Qualified module name -> region for the modules :func:`annotate_modules` would hook."""
    return {name: region for name, _, region in _plan(model, rules)}


class RegionHooks:
    """The hooks :func:`annotate_modules` registered; :meth:`remove` takes them off.

    ``modules`` maps each hooked module's qualified name to its region. Also a
    context manager that removes the hooks on exit.
    """

    def __init__(self, model: nn.Module, plan: list[tuple[str, nn.Module, str]]):
        self._model = model
        self.modules = MappingProxyType({name: region for name, _, region in plan})
        # open ranges, innermost last: (module id, its record_function; None marks the root's forward)
        self._stack: list[tuple[int, object]] = []
        self._handles = [model.register_forward_pre_hook(self._root_pre, prepend=True)]
        for _, module, region in plan:
            self._handles.append(module.register_forward_pre_hook(self._pre(region)))
            post = self._post_head if region == "lm_head_loss" else self._post
            self._handles.append(module.register_forward_hook(post, always_call=True))
        self._handles.append(model.register_forward_hook(self._post, always_call=True))
        model._txbench_region_hooks = self

    # the hooks run on every module call, timed steps included: the flag is read directly, not through a call
    def _root_pre(self, module, args):
        if _model._ANNOTATE:
            self._stack.append((id(module), None))

    def _pre(self, region: str):
        name = _PREFIX + region

        def pre(module, args):
            if _model._ANNOTATE:
                rf = torch.profiler.record_function(name)
                rf.__enter__()
                self._stack.append((id(module), rf))

        return pre

    def _post(self, module, args, output):
        # always_call: runs on exceptions too, so no range outlives the forward that opened it;
        # ranges opened inside and still open (a head's) close first, so ranges stay nested
        if not self._stack:
            return  # regions off
        key = id(module)
        if not any(k == key for k, _ in self._stack):
            return  # regions were off when this module started
        while self._stack:
            k, rf = self._stack.pop()
            if rf is not None:
                rf.__exit__(None, None, None)
            if k == key:
                break

    def _post_head(self, module, args, output):
        # inside the model's forward the head's range stays open for the loss that follows; the root closes it
        if self._stack and not any(rf is None for _, rf in self._stack):
            self._post(module, args, output)

    def remove(self) -> None:
        """Remove every hook and close ranges left open (a forward interrupted mid-way)."""
        for h in self._handles:
            h.remove()
        self._handles.clear()
        while self._stack:
            _, rf = self._stack.pop()
            if rf is not None:
                rf.__exit__(None, None, None)
        if getattr(self._model, "_txbench_region_hooks", None) is self:
            del self._model._txbench_region_hooks

    def __enter__(self) -> RegionHooks:
        return self

    def __exit__(self, *exc) -> None:
        self.remove()


def annotate_modules(model: nn.Module, rules=MODULE_RULES) -> RegionHooks:
    """Hook ``model``'s modules so that each recognised one runs in its region's profiler range.

    Ranges open only while :func:`txbench.model.annotate_regions` is active (the
    profiler pass turns it on); otherwise a hook is a flag check. A module's
    region comes from ``rules`` (:data:`MODULE_RULES` by default) on its class
    and attribute name; the outermost recognised module owns its subtree, except
    that norms are always ``norm``; a head's range (``lm_head_loss``) lasts until
    ``model``'s forward returns, so a loss computed inside the model's forward
    after the head is booked with it. Call ``remove()`` on the result to take the
    hooks off. Raises ValueError when ``model`` is already annotated.
    """
    if getattr(model, "_txbench_region_hooks", None) is not None:
        raise ValueError("model is already annotated; remove() the first annotate_modules() handle")
    return RegionHooks(model, _plan(model, rules))


@contextlib.contextmanager
def loss_region():
    """Run a loss computed outside the model's forward in the ``lm_head_loss`` region (when regions are on)."""
    if not regions_enabled():
        yield
        return
    with torch.profiler.record_function(_PREFIX + "lm_head_loss"):
        yield
