"""The reference Transformer and its attention implementations agree with `naive`."""

from __future__ import annotations

import pytest
import torch

from txbench import ModelConfig, Point
from txbench.attention import check_attention
from txbench.model import Attention, Transformer, make_batch

CPU_IMPLS = ["sdpa", "sdpa_math", "sdpa_flash"]
TOL = {torch.float32: dict(atol=2e-5, rtol=1e-4), torch.bfloat16: dict(atol=3e-2, rtol=3e-2)}


def _loss_and_grads(cfg, impl, batch, dtype):
    model = Transformer(cfg, attention=impl, seed=0)
    with torch.autocast("cpu", dtype=dtype, enabled=dtype != torch.float32):
        loss = model(batch)
    loss.backward()
    return loss.detach(), {n: p.grad.detach().clone() for n, p in model.named_parameters()}


@pytest.mark.parametrize("arch", ["decoder", "encoder_decoder"])
@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_sdpa_impls_match_naive_loss_and_grads(arch, causal, dtype):
    cfg = ModelConfig(arch=arch, d_model=32, n_layers=2, n_heads=4, vocab_size=64, max_seq_len=64, causal=causal)
    batch = make_batch(cfg, batch_size=2, seq_len=24, device="cpu", seed=1)
    ref_loss, ref_grads = _loss_and_grads(cfg, "naive", batch, dtype)
    for impl in CPU_IMPLS:
        if check_attention(impl, "cpu", dtype, causal, cfg.head_dim):
            continue
        loss, grads = _loss_and_grads(cfg, impl, batch, dtype)
        torch.testing.assert_close(loss, ref_loss, **TOL[dtype], msg=f"{impl} loss")
        for name, g in ref_grads.items():
            torch.testing.assert_close(
                grads[name], g, **TOL[dtype], msg=lambda m, impl=impl, name=name: f"{impl} grad {name}: {m}"
            )


def _copy_into_mha(naive: Attention, mha: Attention) -> None:
    with torch.no_grad():
        mha.mha.in_proj_weight.copy_(torch.cat([naive.q.weight, naive.kv.weight]))
        mha.mha.in_proj_bias.copy_(torch.cat([naive.q.bias, naive.kv.bias]))
        mha.mha.out_proj.weight.copy_(naive.proj.weight)
        mha.mha.out_proj.bias.copy_(naive.proj.bias)


@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("cross", [False, True])
def test_mha_matches_naive(causal, cross):
    cfg = ModelConfig(d_model=32, n_heads=4)
    torch.manual_seed(0)
    naive, mha = Attention(cfg, "naive", causal), Attention(cfg, "mha", causal)
    _copy_into_mha(naive, mha)
    x = torch.randn(2, 16, 32, requires_grad=True)
    kv = torch.randn(2, 16, 32) if cross else None
    y_ref = naive(x, kv)
    y_ref.square().sum().backward()
    gx_ref = x.grad.clone()
    x.grad = None
    y = mha(x, kv)
    y.square().sum().backward()
    torch.testing.assert_close(y, y_ref, atol=2e-5, rtol=1e-4)
    torch.testing.assert_close(x.grad, gx_ref, atol=2e-5, rtol=1e-4)
    torch.testing.assert_close(mha.mha.out_proj.weight.grad, naive.proj.weight.grad, atol=2e-5, rtol=1e-4)


def test_causal_mask_blocks_future_tokens():
    cfg = ModelConfig(d_model=32, n_layers=1, n_heads=2, vocab_size=64, max_seq_len=32)
    for impl in ["naive", "sdpa_flash"]:
        model = Transformer(cfg, attention=impl, seed=0)
        batch = make_batch(cfg, 1, 16, "cpu", seed=0)
        changed = batch.clone()
        changed[0, 12:] = (changed[0, 12:] + 1) % cfg.vocab_size
        emb = {}
        model.ln_f.register_forward_hook(lambda m, i, o, emb=emb: emb.__setitem__("h", o.detach()))
        model(batch)
        a = emb["h"]
        model(changed)
        b = emb["h"]
        # positions before the change (inputs are tokens[:, :-1]) see nothing of it
        torch.testing.assert_close(a[0, :12], b[0, :12])
        assert not torch.allclose(a[0, 12:], b[0, 12:])


def test_init_is_deterministic_and_independent_of_global_rng():
    cfg = ModelConfig(d_model=32, n_layers=1, n_heads=2, vocab_size=64)
    a = Transformer(cfg, seed=3)
    torch.rand(100)
    b = Transformer(cfg, seed=3)
    c = Transformer(cfg, seed=4)
    for (n, p), (_, q), (_, _r) in zip(a.named_parameters(), b.named_parameters(), c.named_parameters()):
        assert torch.equal(p, q), n
    assert not all(torch.equal(p, r) for p, r in zip(a.parameters(), c.parameters()))


def test_tied_embeddings_share_storage():
    tied = Transformer(ModelConfig(d_model=32, n_heads=2, vocab_size=64, tied_embeddings=True))
    untied = Transformer(ModelConfig(d_model=32, n_heads=2, vocab_size=64, tied_embeddings=False))
    assert tied.lm_head.weight is tied.wte.weight
    assert untied.num_params() - tied.num_params() == 64 * 32


def test_point_id_is_stable_and_config_sensitive():
    a, b = Point(seq_len=128), Point(seq_len=128)
    assert a.point_id == b.point_id and len(a.point_id) == 12
    assert Point(seq_len=256).point_id != a.point_id
    assert Point(model=ModelConfig(d_model=512, n_heads=8)).point_id != Point().point_id
