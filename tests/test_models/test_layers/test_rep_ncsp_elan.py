"""D-FINE's fusion blocks against hand-written formulas: SCDown as explicit loops over the
depthwise windows, RepNCSPELAN4 as functional convolutions following the original's diagram."""
import pytest
import torch
import torch.nn.functional as F

from detr_plugin.models.layers import RepNCSPELAN4, SCDown


def randomize_batchnorms(module: torch.nn.Module) -> None:
    for bn in module.modules():
        if isinstance(bn, torch.nn.BatchNorm2d):
            bn.running_mean.uniform_(-0.5, 0.5)
            bn.running_var.uniform_(0.5, 2.)
            bn.weight.data.uniform_(0.5, 1.5)
            bn.bias.data.uniform_(-0.5, 0.5)


def bn_eval(x, bn):
    scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
    return (x - bn.running_mean[:, None, None]) * scale[:, None, None] + bn.bias[:, None, None]


def test_scdown_is_pointwise_then_depthwise_by_loops():
    torch.manual_seed(0)
    block = SCDown(3, 4, kernel_size=3, stride=2).eval()
    randomize_batchnorms(block)
    x = torch.randn(1, 3, 5, 6, dtype=torch.float64)
    block.double()
    w1 = block.cv1.conv.weight[:, :, 0, 0]  # (4, 3)
    y = bn_eval(torch.einsum('oc,bchw->bohw', w1, x), block.cv1.norm)  # no activation
    padded = F.pad(y, (1, 1, 1, 1))
    w2 = block.cv2.conv.weight  # (4, 1, 3, 3): one 3x3 filter per channel
    out_h, out_w = 3, 3  # ceil(5 / 2), ceil(6 / 2)
    expected = torch.zeros(1, 4, out_h, out_w, dtype=torch.float64)
    for c in range(4):
        for i in range(out_h):
            for j in range(out_w):
                window = padded[0, c, 2 * i:2 * i + 3, 2 * j:2 * j + 3]
                expected[0, c, i, j] = (window * w2[c, 0]).sum()
    expected = bn_eval(expected, block.cv2.norm)
    with torch.no_grad():
        torch.testing.assert_close(block(x), expected)
    assert block.cv2.conv.groups == 4 and block.cv1.conv.bias is None


def conv_bn(x, m, act=True):
    """A ConvNormAct by hand: 'same' padding, BN with running statistics, SiLU."""
    k = m.conv.weight.shape[-1]
    y = bn_eval(F.conv2d(x, m.conv.weight, padding=k // 2), m.norm)
    return F.silu(y) if act else y


def csp_by_hand(x, csp):
    """CSPRepLayer of RepVGG blocks (3x3 and 1x1 branches summed, then SiLU), no conv3."""
    h = conv_bn(x, csp.conv1)
    for block in csp.bottlenecks:
        h = F.silu(conv_bn(h, block.conv1, act=False) + conv_bn(h, block.conv2, act=False))
    return h + conv_bn(x, csp.conv2)


def test_rep_ncsp_elan4_by_hand():
    torch.manual_seed(0)
    block = RepNCSPELAN4(12, 6, num_blocks=2, expansion=0.5).eval().double()
    randomize_batchnorms(block)
    x = torch.randn(2, 12, 5, 4, dtype=torch.float64)
    y = conv_bn(x, block.cv1)  # 2 * 6 channels
    a, b = y[:, :6], y[:, 6:]
    c = conv_bn(csp_by_hand(b, block.cv2[0]), block.cv2[1])
    d = conv_bn(csp_by_hand(c, block.cv3[0]), block.cv3[1])
    expected = conv_bn(torch.cat([a, b, c, d], 1), block.cv4)
    with torch.no_grad():
        torch.testing.assert_close(block(x), expected)
    assert len(block.cv2[0].bottlenecks) == 2
    assert isinstance(block.cv2[0].conv3, torch.nn.Identity)


@pytest.mark.parametrize('embed_dims,expansion,branch', [
    (128, 0.34, 21),  # D-FINE N: round(0.34 * 128 // 2) = round(43.52 // 2) = 21
    (256, 0.5, 64),  # S
    (256, 1.0, 128),  # M, L
    (384, 1.0, 192),  # X
])
def test_rep_ncsp_elan4_widths_as_the_original(embed_dims, expansion, branch):
    block = RepNCSPELAN4(2 * embed_dims, embed_dims, num_blocks=1, expansion=expansion)
    assert block.cv1.conv.weight.shape == (2 * embed_dims, 2 * embed_dims, 1, 1)
    assert block.cv2[0].conv1.conv.weight.shape == (branch, embed_dims, 1, 1)
    assert block.cv3[1].conv.weight.shape == (branch, branch, 3, 3)
    assert block.cv4.conv.weight.shape == (embed_dims, 2 * embed_dims + 2 * branch, 1, 1)


def test_rep_ncsp_elan4_rejects_no_branch_width():
    with pytest.raises(ValueError, match='no branch channels'):
        RepNCSPELAN4(8, 4, expansion=0.25)
