"""End2EndDetector gives the same detections as the detector's own predict (an independent path:
data samples, InstanceData, to_pixels) for every family, and rejects what it cannot wrap."""
import pathlib
from collections import Counter
from types import SimpleNamespace

import pytest
import torch
from mmdet.structures import DetDataSample
from mmengine.config import Config

from detr_plugin.deploy import End2EndDetector
from detr_plugin.registry import MODELS
from detr_plugin.testing import HostSyncRecorder, SyncSite

ROOT = pathlib.Path(__file__).resolve().parents[2]
CONFIGS = {
    'detr': 'configs/detr/detr_r18_1xb8-demo.py',
    'deformable': 'configs/deformable_detr/deformable-detr_r18_1xb8-demo.py',
    'refine-twostage': 'configs/deformable_detr/deformable-detr-refine-twostage_r50_16xb2-50e_coco.py',
    'rtdetr': 'configs/rtdetr/rtdetr_r18vd_1xb8-demo.py',
}


def small_model(config):
    cfg = Config.fromfile(str(ROOT / config)).model
    cfg.backbone.init_cfg = None
    if cfg.backbone.get('depth', 18) > 18:  # keep the test small: an R18 backbone will do
        cfg.backbone.update(depth=18, init_cfg=None)
        cfg.neck.in_channels = [128, 256, 512][-len(cfg.neck.in_channels):]
    torch.manual_seed(0)
    model = MODELS.build(cfg)
    model.init_weights()
    return model.eval()


@pytest.mark.parametrize('name', list(CONFIGS))
def test_end2end_equals_predict(name):
    model = small_model(CONFIGS[name])
    h, w = 160, 192
    images = torch.randn(2, 3, h, w)
    samples = [DetDataSample(metainfo=dict(img_shape=(h, w), ori_shape=(h, w), batch_input_shape=(h, w),
                                           pad_shape=(h, w), scale_factor=(1., 1.))) for _ in range(2)]
    with torch.no_grad():
        expected = [s.pred_instances for s in model.predict(images, samples, rescale=False)]
        boxes, scores, labels = End2EndDetector(model)(images)
    k = len(expected[0].scores)
    assert boxes.shape == (2, k, 4) and scores.shape == (2, k) and labels.shape == (2, k)
    assert labels.dtype == torch.int64
    for b, result in enumerate(expected):
        torch.testing.assert_close(scores[b], result.scores)
        torch.testing.assert_close(labels[b], result.labels)
        torch.testing.assert_close(boxes[b], result.bboxes)
    assert boxes[..., 0::2].max() <= w and boxes[..., 1::2].max() <= h and boxes.min() >= 0


@pytest.mark.parametrize('name', ['deformable', 'rtdetr'])
def test_channels_last_gives_predicts_detections(name):
    """float64, so that near-equal scores keep their order in both layouts."""
    model = small_model(CONFIGS[name]).double()
    h, w = 160, 192
    images = torch.randn(1, 3, h, w, dtype=torch.float64)
    sample = DetDataSample(metainfo=dict(img_shape=(h, w), ori_shape=(h, w),
                                         batch_input_shape=(h, w), pad_shape=(h, w),
                                         scale_factor=(1., 1.)))
    with torch.no_grad():
        expected = model.predict(images, [sample], rescale=False)[0].pred_instances
        boxes, scores, labels = End2EndDetector(model, channels_last=True)(images)
    conv = next(m for m in model.backbone.modules() if isinstance(m, torch.nn.Conv2d))
    assert conv.weight.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(scores[0].double(), expected.scores.double(), rtol=0, atol=1e-12)
    torch.testing.assert_close(labels[0], expected.labels)
    torch.testing.assert_close(boxes[0].double(), expected.bboxes.double(), rtol=0, atol=1e-9)


class FixedBoxes(torch.nn.Module):
    """A stand-in detector: one layer of the given (bs, Q, 4) cxcywh boxes, every query kept."""

    def __init__(self, boxes):
        super().__init__()
        self.boxes = boxes
        self.bbox_head = SimpleNamespace(
            scores_and_labels=lambda logits: (logits[..., 0], logits[..., 0].long(), None))

    def _forward(self, images):
        return self.boxes.new_zeros(1, *self.boxes.shape[:2], 1), self.boxes[None]


@pytest.mark.parametrize('dtype', [torch.float32, torch.float64])
def test_pixel_boxes_are_bitwise_each_corner_scaled_and_clamped(dtype):
    boxes = torch.rand(2, 50, 4, generator=torch.Generator().manual_seed(0), dtype=dtype)
    boxes = boxes * 1.4 - 0.2  # some corners outside the image
    out, _, _ = End2EndDetector(FixedBoxes(boxes))(torch.zeros(2, 3, 48, 80))
    cx, cy, w, h = boxes.float().unbind(-1)
    expected = torch.stack([((cx - w / 2) * 80).clamp(0, 80), ((cy - h / 2) * 48).clamp(0, 48),
                            ((cx + w / 2) * 80).clamp(0, 80), ((cy + h / 2) * 48).clamp(0, 48)], -1)
    assert out.dtype == torch.float32 and torch.equal(out, expected)
    assert (out == 0).any() and (out[..., 0::2] == 80).any() and (out[..., 1::2] == 48).any()


def test_end2end_rejects_bad_input():
    with pytest.raises(TypeError, match='detr_plugin'):
        End2EndDetector(torch.nn.Linear(2, 2))
    model = End2EndDetector(small_model(CONFIGS['rtdetr']))
    with pytest.raises(ValueError, match=r'\(bs, 3, H, W\)'):
        model(torch.randn(3, 64, 64))


@pytest.mark.parametrize('name', list(CONFIGS))
def test_inference_reads_nothing_back_to_the_host(name, monkeypatch):
    """After a first call (which fills the per-layout caches), a forward must not read tensor
    values on the host: on a GPU each read is a synchronisation, which CUDA graph capture forbids
    and which stalls eager inference. Every such read is made to fail here."""
    model = End2EndDetector(small_model(CONFIGS[name]))
    images = torch.randn(1, 3, 160, 192)
    with torch.no_grad():
        model(images)

    def host_read(self, *args, **kwargs):
        raise AssertionError('a tensor was read on the host during inference')
    for method in ('item', 'tolist', 'cpu', 'numpy', 'nonzero', '__bool__', '__int__',
                   '__float__', '__index__'):
        monkeypatch.setattr(torch.Tensor, method, host_read)
    with torch.no_grad():
        boxes, scores, labels = model(images)
    monkeypatch.undo()
    assert boxes.shape[:2] == scores.shape == labels.shape


@pytest.mark.parametrize('name', list(CONFIGS))
def test_inference_waits_only_for_a_new_layouts_index_tensors(name):
    """The first call of a layout copies its level index tensors to the device (one copy); after
    that a forward makes the host wait for nothing: no read back (the MSDA op gets the level sizes
    from the host), no blocking copy."""
    model = End2EndDetector(small_model(CONFIGS[name]))
    images = torch.randn(1, 3, 160, 192)
    with torch.no_grad():
        with HostSyncRecorder(model) as first:
            model(images)
        with HostSyncRecorder(model) as again:
            model(images)
    made = SyncSite('copy to device', 'detr_plugin/models/layers/multi_scale.py:level_index')
    expected = Counter() if name == 'detr' else Counter({made: 1})  # DETR: one level, no MSDA
    assert first.sites == expected, first.report()
    assert again.sites == Counter(), again.report()


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason='needs a CUDA GPU')
@pytest.mark.parametrize('name', ['deformable', 'rtdetr'])
def test_gpu_inference_never_synchronises_and_replays_in_a_cuda_graph(name):
    """On the GPU: after a layout's first call, a forward under torch's sync debug mode 'error'
    raises on no synchronising call, and a captured CUDA graph replays the same detections."""
    model = End2EndDetector(small_model(CONFIGS[name]).cuda())
    images = torch.randn(1, 3, 160, 192, device='cuda')
    with torch.no_grad():
        expected = model(images)  # the layout's first call: its index tensors are made
        torch.cuda.set_sync_debug_mode('error')  # any synchronising CUDA call raises
        try:
            eager = model(images)
        finally:
            torch.cuda.set_sync_debug_mode(0)
        side = torch.cuda.Stream()  # warm-up on a side stream before capture, as torch asks
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            model(images)
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            captured = model(images)
        graph.replay()
    torch.cuda.synchronize()
    for out, ref, replayed in zip(eager, expected, captured):
        torch.testing.assert_close(out, ref)
        torch.testing.assert_close(replayed, ref)
