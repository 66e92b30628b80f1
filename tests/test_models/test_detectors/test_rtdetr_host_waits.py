"""Where a training step of the RT-DETR detector (v1, v2, D-FINE) makes the host wait for the
GPU: exactly the named sites.

The CPU test records one warmed-up ``train_step`` (data preprocessor, loss, backward, clipped
AdamW step) and mmengine's logging of its outputs with :class:`HostSyncRecorder`; a new
``.item()``, boolean index or blocking copy anywhere in it fails here. The GPU test runs the same
step under ``torch.cuda.set_sync_debug_mode`` and counts the synchronising CUDA calls.
"""
import logging
import pathlib
import warnings
from collections import Counter

import pytest
import torch
from mmengine.config import Config
from mmengine.logging import MMLogger
from mmengine.model import BaseModel
from mmengine.optim import build_optim_wrapper
from mmengine.registry import DefaultScope

from detr_plugin.registry import MODELS
from detr_plugin.testing import HostSyncRecorder, SyncSite, loader_batch, step_and_log
from detr_plugin.utils import register_all_modules

register_all_modules(init_default_scope=False)

REPO_ROOT = pathlib.Path(__file__).resolve().parents[3]
V1 = 'configs/rtdetr/rtdetr_r18vd_1xb8-demo.py'
V2 = 'configs/rtdetrv2/rtdetrv2_r18vd_8xb2-120e_coco.py'
DFINE = 'configs/dfine/dfine_r18vd_1xb8-demo.py'
CONFIGS = {  # (config, edits): v2's class-agnostic encoder is matched on its own, in the same copy
    'v1': (V1, {}), 'v2': (V2, {}),
    'v2-agnostic': (V2, {'model.bbox_head.query_select_method': 'agnostic'}),
    'dfine': (DFINE, {})}

# Every host wait left in a step, and why it stays (docs/benchmarks.md, "Host waits").
ALLOWED = {
    # SciPy's Hungarian algorithm runs on the host: the costs of every decoder layer, the
    # encoder's top-k and every image cross to the host in one copy
    SyncSite('copy to host', 'detr_plugin/models/task_modules/hungarian_assigner.py:match_sets'): 1,
    # the logged loss values, all in one copy after the forward (mmengine reads them as floats)
    SyncSite('copy to host', 'detr_plugin/models/detectors/rtdetr.py:logged_on_host'): 1,
    # mmengine's OptimWrapper logs the gradient norm of clip_grad as a float
    SyncSite('item', 'mmengine/optim/optimizer/optimizer_wrapper.py:_clip_grad'): 1,
}
# D-FINE's on top: GO-LSD's matching union ranks the pairs on the host, as the original does (its
# tie order is the CPU sort's)
DFINE_ALLOWED = {
    **ALLOWED,
    SyncSite('copy to host', 'detr_plugin/models/task_modules/matching_union.py:matching_union'): 1,
}


def allowed(version: str) -> Counter:
    return Counter(DFINE_ALLOWED if version == 'dfine' else ALLOWED)


def small_model_and_optimizer(version: str, device='cpu'):
    config, edits = CONFIGS[version]
    cfg = Config.fromfile(str(REPO_ROOT / config))
    cfg.merge_from_dict(edits)
    cfg.model.decoder.update(num_queries=8, num_layers=2)
    if cfg.model.get('denoising'):
        cfg.model.denoising.num_denoising = 6
    cfg.model.data_preprocessor.batch_augments = None
    cfg.model.backbone.init_cfg = None  # no download
    torch.manual_seed(0)
    MMLogger.get_current_instance().setLevel(logging.WARNING)  # init_weights' per-tensor lines
    with DefaultScope.overwrite_default_scope('detr_plugin'):
        model = MODELS.build(cfg.model).to(device)
        model.init_weights()
        wrapper = build_optim_wrapper(model, cfg.optim_wrapper)
    return model.train(), wrapper


@pytest.fixture(scope='module', params=list(CONFIGS))
def warm_model(request):
    """A small model, its optimizer after one step (the optimizer's state) and its version."""
    model, wrapper = small_model_and_optimizer(request.param)
    step_and_log(model, wrapper, loader_batch(0))
    return model, wrapper, request.param


def test_train_step_waits_only_at_the_named_sites(warm_model):
    model, wrapper, version = warm_model
    with HostSyncRecorder(model, optimizers=[wrapper.optimizer]) as rec:
        step_and_log(model, wrapper, loader_batch(1))
    assert rec.sites == allowed(version), rec.report()


def test_parse_losses_logs_mmengines_values_from_one_copy(warm_model):
    model, _, _ = warm_model
    losses = model.loss(*model.data_preprocessor(loader_batch(2), True).values())
    total, logged = model.parse_losses(losses)
    reference_total, reference = BaseModel.parse_losses(model, losses)  # mmengine's own
    assert list(logged) == list(reference)
    assert total.requires_grad  # one sum of all terms: mmengine's value up to summation order
    torch.testing.assert_close(total, reference_total, rtol=1e-6, atol=0)
    for name, value in logged.items():
        assert value.device.type == 'cpu' and not value.requires_grad
        if name != 'loss':
            assert value.item() == reference[name].item(), name
    params = [p for p in model.parameters() if p.requires_grad]
    grads = torch.autograd.grad(total, params, retain_graph=True, allow_unused=True)
    expected = torch.autograd.grad(reference_total, params, retain_graph=True, allow_unused=True)
    for grad, want in zip(grads, expected):  # the same gradients, bit for bit
        assert (grad is None and want is None) or torch.equal(grad, want)
    with HostSyncRecorder(model) as rec:
        model.parse_losses(losses)
    assert rec.total == 1, rec.report()


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason='needs a CUDA GPU')
@pytest.mark.parametrize('version', list(CONFIGS))
def test_train_step_synchronises_once_per_named_site_on_gpu(version):
    """CUDA's own count: ``set_sync_debug_mode('warn')`` warns at every synchronising call."""
    model, wrapper = small_model_and_optimizer(version, device='cuda')
    for seed in range(3):  # warm-up: optimizer state, cuDNN / allocator first calls
        step_and_log(model, wrapper, loader_batch(seed))
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode('warn')
    try:
        with warnings.catch_warnings():  # a step more: what synchronises once in warn mode
            warnings.simplefilter('ignore')
            step_and_log(model, wrapper, loader_batch(3))
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter('always')
            step_and_log(model, wrapper, loader_batch(4))
    finally:
        torch.cuda.set_sync_debug_mode('default')
    syncs = [f'{w.filename}:{w.lineno}' for w in caught if 'synchroniz' in str(w.message)]
    assert len(syncs) == sum(allowed(version).values()), '\n'.join(syncs)
