"""Our SDPA attention and DETR layers against torch.nn.MultiheadAttention and the paper's equations."""
import torch
from torch import nn

from detr_plugin.models.layers import (DetrTransformerDecoder, DetrTransformerEncoder,
                                       MultiheadAttention)


def torch_mha_like(ours: MultiheadAttention) -> nn.MultiheadAttention:
    ref = nn.MultiheadAttention(ours.embed_dims, ours.num_heads, batch_first=True).double()
    ref.load_state_dict({k: v.double() for k, v in ours.state_dict().items()})
    return ref.eval()


def test_attention_matches_torch_mha():
    torch.manual_seed(0)
    ours = MultiheadAttention(16, 4).double().eval()
    ref = torch_mha_like(ours)
    q = torch.randn(2, 5, 16, dtype=torch.float64)
    kv = torch.randn(2, 7, 16, dtype=torch.float64)
    pad = torch.zeros(2, 7, dtype=torch.bool)
    pad[1, 4:] = True
    blocked = torch.rand(5, 7) > 0.7
    blocked[:, 0] = False  # every query keeps a key
    out = ours(q, kv, kv, key_padding_mask=pad, attn_mask=blocked)
    expected = ref(q, kv, kv, key_padding_mask=pad, attn_mask=blocked, need_weights=False)[0]
    torch.testing.assert_close(out, expected)
    # self-attention path (shared q/k projection)
    torch.testing.assert_close(ours(q, q, kv[:, :5]), ref(q, q, kv[:, :5], need_weights=False)[0])


def reference_encoder_layer(layer, x, pos, pad):
    """Post-norm encoder layer of the paper written with torch's attention (dropout off)."""
    attn = torch_mha_like(layer.self_attn)
    ffn = lambda t: layer.ffn.linear2(torch.relu(layer.ffn.linear1(t)))  # noqa: E731
    x = layer.norm1(x + attn(x + pos, x + pos, x, key_padding_mask=pad, need_weights=False)[0])
    return layer.norm2(x + ffn(x))


def reference_decoder_layer(layer, tgt, qpos, mem, mpos, pad):
    sa, ca = torch_mha_like(layer.self_attn), torch_mha_like(layer.cross_attn)
    ffn = lambda t: layer.ffn.linear2(torch.relu(layer.ffn.linear1(t)))  # noqa: E731
    tgt = layer.norm1(tgt + sa(tgt + qpos, tgt + qpos, tgt, need_weights=False)[0])
    tgt = layer.norm2(tgt + ca(tgt + qpos, mem + mpos, mem, key_padding_mask=pad,
                               need_weights=False)[0])
    return layer.norm3(tgt + ffn(tgt))


def test_encoder_decoder_match_the_paper():
    torch.manual_seed(0)
    cfg = dict(embed_dims=16, num_heads=2, ffn_dims=32, dropout=0.1)
    enc = DetrTransformerEncoder(2, cfg).double().eval()
    dec = DetrTransformerDecoder(2, cfg).double().eval()
    x = torch.randn(2, 6, 16, dtype=torch.float64)
    pos = torch.randn(2, 6, 16, dtype=torch.float64)
    pad = torch.zeros(2, 6, dtype=torch.bool)
    pad[0, 4:] = True
    memory = enc(x, pos, pad)
    ref = x
    for layer in enc.layers:
        ref = reference_encoder_layer(layer, ref, pos, pad)
    torch.testing.assert_close(memory, ref)

    qpos = torch.randn(2, 3, 16, dtype=torch.float64)
    tgt = torch.zeros_like(qpos)
    hidden = dec(tgt, qpos, memory, pos, pad)
    assert hidden.shape == (2, 2, 3, 16)
    for i, layer in enumerate(dec.layers):
        tgt = reference_decoder_layer(layer, tgt, qpos, memory, pos, pad)
        torch.testing.assert_close(hidden[i], dec.norm(tgt))  # shared final norm on every output


def test_pre_norm_encoder_ends_with_norm():
    enc = DetrTransformerEncoder(1, dict(embed_dims=8, num_heads=2, ffn_dims=16, pre_norm=True)).eval()
    assert isinstance(enc.norm, nn.LayerNorm)
    out = enc(torch.randn(1, 4, 8), torch.zeros(1, 4, 8), None)
    torch.testing.assert_close(out.mean(-1), torch.zeros(1, 4), atol=1e-5, rtol=0)
