"""D-FINE N and S as their COCO configs build them (HGNetv2-B0, D-FINE's hybrid encoder and
decoder, 80 classes), at full width on small inputs: parameter counts against the original's,
loss / predict / tensor modes, images without boxes, an image's encoder levels independent of its
batch.

The inputs are the smallest squares whose encoder tokens cover the 300 queries: N reads strides
16 and 32 (256 x 256: 16 * 16 + 8 * 8 = 320 tokens), S strides 8, 16, 32 (128 x 128: 336).
"""
import pytest
import torch
from mmdet.structures import DetDataSample
from mmengine.config import Config
from mmengine.registry import DefaultScope
from mmengine.structures import InstanceData

from detr_plugin.registry import MODELS

CONFIGS = dict(n='configs/dfine/dfine_hgnetv2-n_8xb16-160e_coco.py',
               s='configs/dfine/dfine_hgnetv2-s_8xb4-132e_coco.py')
INPUT_SIZE = dict(n=256, s=128)
# Parameters of the original (Peterande/D-FINE, DFINE(HGNetv2, HybridEncoder, DFINETransformer)
# built from dfine_hgnetv2_{n,s}_coco.yml, 80 classes, counted once per tensor): backbone,
# hybrid encoder, transformer (our decoder + head + denoising embedding); all but ``up`` and
# ``reg_scale`` trainable.
ORIGINAL_PARAMETERS = dict(n=(1850396, 703824, 1228473), s=(1850396, 4021504, 4449977))


def model_cfg(size: str) -> Config:
    """The COCO config's model, without its multi-scale batch resize (inputs stay small)."""
    cfg = Config.fromfile(CONFIGS[size]).model
    cfg.data_preprocessor.batch_augments = None
    return cfg


@pytest.fixture(scope='module', params=['n', 's'])
def sized_model(request):
    torch.manual_seed(0)
    with DefaultScope.overwrite_default_scope('detr_plugin'):  # module fixtures precede conftest's
        return request.param, MODELS.build(model_cfg(request.param))


def make_batch(size, boxes_per_image, seed=0):
    """Images of one size (ori_shape twice as large, as after a 0.5 resize) with gt boxes (xyxy
    pixels), labels 0, 1, 2, 0, ..."""
    g = torch.Generator().manual_seed(seed)
    inputs = torch.rand(len(boxes_per_image), 3, size, size, generator=g) * 255
    samples = []
    for boxes in boxes_per_image:
        s = DetDataSample(metainfo=dict(img_shape=(size, size), ori_shape=(2 * size, 2 * size),
                                        scale_factor=(0.5, 0.5), batch_input_shape=(size, size),
                                        pad_shape=(size, size)))
        boxes = torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4)
        s.gt_instances = InstanceData(bboxes=boxes, labels=torch.arange(len(boxes)) % 3)
        samples.append(s)
    return inputs, samples


def expected_loss_names(num_layers: int):
    """Last layer: class (VFL), L1, GIoU, FGL; layers before it the same plus DDF, prefixed
    d{i}.; pre-box and encoder top-k: class and box terms; denoising: all again with dn_."""
    boxes = ['loss_vfl', 'loss_bbox', 'loss_giou']
    names = set(boxes + ['loss_fgl'])
    for i in range(num_layers - 1):
        names |= {f'd{i}.{n}' for n in boxes + ['loss_fgl', 'loss_ddf']}
    names |= {f'pre_{n}' for n in boxes} | {f'enc_{n}' for n in boxes}
    names |= {n.replace('loss_', 'dn_loss_') for n in names if not n.startswith('enc_')}
    return names


def test_parameter_counts_equal_the_originals(sized_model):
    size, model = sized_model
    backbone, encoder, transformer = ORIGINAL_PARAMETERS[size]

    def count(*modules):
        return sum(p.numel() for m in modules for p in m.parameters())

    assert count(model.backbone) == backbone
    assert count(model.neck) == encoder
    assert count(model.decoder, model.bbox_head, model.denoising) == transformer
    frozen = [n for n, p in model.named_parameters() if not p.requires_grad]
    assert frozen == ['bbox_head.up', 'bbox_head.reg_scale']


@pytest.mark.parametrize('boxes', [
    [[[4, 4, 60, 70], [20, 30, 90, 100], [50, 8, 120, 40]], []],  # one image without boxes
    [[], []],                                                     # no box in the whole batch
])
def test_loss_reaches_every_trainable_parameter(sized_model, boxes):
    size, model = sized_model
    inputs, samples = make_batch(INPUT_SIZE[size], boxes)
    data = model.data_preprocessor(dict(inputs=list(inputs), data_samples=samples), training=True)
    model.train()
    model.zero_grad()
    losses = model(**data, mode='loss')
    assert set(losses) == expected_loss_names(3)
    total = sum(losses.values())
    assert torch.isfinite(total)
    total.backward()
    # the same parameters on every rank whatever its images hold, as DDP needs
    assert [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None] == []
    if not any(boxes):  # nothing matched: every box and localization term is exactly 0
        for name in losses:
            if name.endswith(('loss_bbox', 'loss_giou', 'loss_fgl')):
                assert losses[name] == 0, name
    else:
        assert losses['loss_fgl'] > 0 and losses['dn_loss_giou'] > 0


def test_predict_and_tensor_modes(sized_model):
    size, model = sized_model
    side = INPUT_SIZE[size]
    inputs, samples = make_batch(side, [[], []], seed=1)
    data = model.data_preprocessor(dict(inputs=list(inputs), data_samples=samples))
    model.eval()
    with torch.no_grad():
        preds = model(**data, mode='predict')
        logits, boxes = model(data['inputs'], mode='tensor')
        batch_feats = model.extract_feat(data['inputs'])
        alone_feats = model.extract_feat(data['inputs'][1:])
    assert logits.shape == (1, 2, 300, 80) and boxes.shape == (1, 2, 300, 4)
    model.train()
    with torch.no_grad():  # training mode: every layer, without denoising queries
        all_logits, all_boxes = model(data['inputs'], mode='tensor')
    model.eval()
    assert all_logits.shape == (3, 2, 300, 80) and all_boxes.shape == (3, 2, 300, 4)
    # an image's encoder levels do not depend on the other images of its batch (BatchNorm in
    # eval mode). Not compared after query selection: an untrained encoder's scores are so
    # close that float32 rounding of a batch-size-dependent kernel reorders the top-k (exact
    # in float64).
    for in_batch, alone in zip(batch_feats, alone_feats):
        torch.testing.assert_close(alone[0], in_batch[1], rtol=0, atol=1e-6)
    for b, pred in enumerate(preds):
        # the 300 best (query, class) pairs by sigmoid score, ranked by a plain sort; pairs of
        # equal score (untrained queries may coincide) in any order
        scores = logits[0, b].sigmoid().tolist()
        ranked = sorted(((scores[q][k], q, k) for q in range(300) for k in range(80)),
                        reverse=True)
        inst = pred.pred_instances
        assert inst.scores.tolist() == [s for s, _, _ in ranked[:300]]
        # cxcywh in [0, 1] of the input -> xyxy pixels of the 2x larger original, clamped
        cx, cy, w, h = boxes[0, b].unbind(-1)
        xyxy = torch.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], -1)
        xyxy = (xyxy * 2 * side).clamp(0, 2 * side)
        for score, label, box in zip(inst.scores.tolist(), inst.labels.tolist(), inst.bboxes):
            candidates = [(q, k) for s, q, k in ranked[:400] if s == score and k == label]
            assert any(torch.allclose(box, xyxy[q], rtol=0, atol=1e-3) for q, _ in candidates)
