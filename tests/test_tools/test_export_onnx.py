"""tools/deployment/export_onnx.py: onnxruntime on the exported graph gives End2EndDetector's
detections for every family (also with a free batch size), and bad input is one clear line."""
import json
import subprocess
import sys

import numpy as np
import pytest
import torch

ort = pytest.importorskip('onnxruntime')

SHAPE = (160, 192)
FEWER_LAYERS = 'encoder=dict(num_layers=1), decoder=dict(num_layers=2)'  # a faster export
# Small versions of each family: (base config, overrides). The R50 config gets an R18 backbone.
FAMILIES = {
    'detr': ('configs/detr/detr_r18_1xb8-demo.py', f'model = dict({FEWER_LAYERS})'),
    'deformable': ('configs/deformable_detr/deformable-detr_r18_1xb8-demo.py',
                   f'model = dict({FEWER_LAYERS})'),
    'refine-twostage': (
        'configs/deformable_detr/deformable-detr-refine-twostage_r50_16xb2-50e_coco.py',
        f'model = dict({FEWER_LAYERS}, num_queries=30, backbone=dict(depth=18, init_cfg=None),\n'
        '             neck=dict(in_channels=[128, 256, 512]), test_cfg=dict(max_per_img=30))'),
    'rtdetr': ('configs/rtdetr/rtdetr_r18vd_1xb8-demo.py',
               'model = dict(decoder=dict(num_layers=2))'),
}


@pytest.fixture(scope='module')
def tool(load_tool):
    return load_tool('tools/deployment/export_onnx.py')


@pytest.fixture(scope='module')
def workspace(tmp_path_factory, repo_root):
    """name -> (config path, checkpoint path) of a family's small model with random weights."""
    from mmengine.config import Config

    from detr_plugin.registry import MODELS
    root = tmp_path_factory.mktemp('export_onnx')
    made = {}

    def make(name):
        if name not in made:
            base, overrides = FAMILIES[name]
            config = root / f'{name}.py'
            config.write_text(f"_base_ = ['{repo_root / base}']\n{overrides}")
            torch.manual_seed(0)
            model = MODELS.build(Config.fromfile(str(config)).model)
            model.init_weights()
            checkpoint = root / f'{name}.pth'
            torch.save({'state_dict': model.state_dict(),
                        'meta': {'dataset_meta': {'classes': ('a', 'b', 'c')}}}, checkpoint)
            made[name] = str(config), str(checkpoint)
        return made[name]
    return make


def end2end(config, checkpoint):
    """End2EndDetector built here, independently of the tool."""
    from mmengine.config import Config

    from detr_plugin.deploy import End2EndDetector
    from detr_plugin.registry import MODELS
    model = MODELS.build(Config.fromfile(config).model)
    model.load_state_dict(torch.load(checkpoint, weights_only=True)['state_dict'])
    return End2EndDetector(model)


def max_differences(onnx_file, model, images):
    """onnxruntime vs PyTorch on ``images``: (max |boxes diff| px, max |scores diff|, labels)."""
    session = ort.InferenceSession(onnx_file, providers=['CPUExecutionProvider'])
    boxes, scores, labels = session.run(['boxes', 'scores', 'labels'], {'images': images.numpy()})
    with torch.no_grad():
        expected = [t.numpy() for t in model(images)]
    assert boxes.shape == expected[0].shape and labels.dtype == np.int64
    return (np.abs(boxes - expected[0]).max(), np.abs(scores - expected[1]).max(),
            labels, expected[2])


# two families with a fixed batch size of 1, two exported with batch 1 and run with batch 2
@pytest.mark.parametrize('name, dynamic_batch', [
    ('detr', False), ('deformable', False), ('refine-twostage', True), ('rtdetr', True)])
def test_onnxruntime_equals_pytorch(tool, workspace, tmp_path, capsys, name, dynamic_batch):
    import onnx
    from mmengine.config import Config
    config, checkpoint = workspace(name)
    out = str(tmp_path / f'{name}.onnx')
    args = [config, checkpoint, '--out', out, '--shape', *map(str, SHAPE)]
    assert tool.main(args + ['--dynamic-batch'] * dynamic_batch)
    assert 'OK' in capsys.readouterr().out
    batch = 2 if dynamic_batch else 1
    images = torch.randn(batch, 3, *SHAPE, generator=torch.Generator().manual_seed(1))
    box_diff, score_diff, labels, expected_labels = max_differences(
        out, end2end(config, checkpoint), images)
    with capsys.disabled():
        print(f'\n{name}: max |boxes diff| {box_diff:.3g} px, max |scores diff| {score_diff:.3g}')
    assert box_diff <= 1e-4 and score_diff <= 1e-4
    np.testing.assert_array_equal(labels, expected_labels)
    input_shape = ort.InferenceSession(out).get_inputs()[0].shape
    assert input_shape == ['batch' if dynamic_batch else 1, 3, *SHAPE]
    preprocessor = Config.fromfile(config).model.data_preprocessor
    props = {p.key: json.loads(p.value) for p in onnx.load(out).metadata_props}
    assert props == dict(mean=preprocessor.mean, std=preprocessor.std, channel_order='rgb',
                         classes=['a', 'b', 'c'])


def test_msda_exports_through_grid_sample_even_if_cuda_op_requested(tmp_path, monkeypatch):
    from detr_plugin.ops.ms_deform_attn import (ENV_BACKEND, ms_deform_attn_pytorch,
                                                multi_scale_deformable_attention)
    shapes = [(4, 6), (2, 3)]

    class Sampler(torch.nn.Module):
        def forward(self, value, locations, weights):
            spatial_shapes = torch.tensor(shapes)
            starts = torch.tensor([0, 24])
            return multi_scale_deformable_attention(value, spatial_shapes, starts, locations,
                                                    weights)

    generator = torch.Generator().manual_seed(0)
    inputs = (torch.randn(1, 30, 2, 8, generator=generator),  # (bs, sum(H*W), heads, dim)
              torch.rand(1, 5, 2, 2, 3, 2, generator=generator),
              torch.rand(1, 5, 2, 2, 3, generator=generator))
    monkeypatch.setenv(ENV_BACKEND, 'cuda')  # outside export: an error for CPU tensors
    torch.onnx.export(Sampler(), inputs, str(tmp_path / 'msda.onnx'), dynamo=False,
                      opset_version=16, input_names=['value', 'locations', 'weights'])
    session = ort.InferenceSession(str(tmp_path / 'msda.onnx'))
    (got,) = session.run(None, {name: t.numpy() for name, t in
                                zip(['value', 'locations', 'weights'], inputs)})
    np.testing.assert_allclose(got, ms_deform_attn_pytorch(inputs[0], shapes, *inputs[1:]),
                               atol=1e-6)


def test_report_fails_above_tolerance_or_on_an_unmatched_detection(tool, capsys):
    result = tool.Comparison(boxes=0.064, boxes_relative=1e-4, scores=2e-5, matched=30, total=30)
    assert tool.report(result, atol=1e-4)
    assert not tool.report(result, atol=5e-5)
    assert not tool.report(result._replace(matched=29), atol=1e-4)
    assert capsys.readouterr().out.count('FAILED') == 2


def test_compare_matches_detections_of_tied_scores_in_another_order(tool):
    class Swapped(torch.nn.Module):
        """As the exported graph, with the tied detections 0 and 1 the other way round."""
        def forward(self, images):
            boxes = torch.tensor([[[0., 0., 10, 10], [5, 5, 20, 20], [1, 1, 2, 2]]])
            return boxes[:, [1, 0, 2]], torch.tensor([[.5, .5, .2]]), torch.tensor([[1, 1, 0]])

    class Session:
        def __init__(self, *args, **kwargs):
            pass

        def run(self, names, feeds):
            boxes = [[[0., 0., 10, 10], [5, 5, 20, 20], [1, 1, 2.032, 2]]]
            return (np.array(boxes, np.float32), np.array([[.5, .5, .2]], np.float32),
                    np.array([[1, 1, 0]]))

    onnxruntime = type('onnxruntime', (), {'InferenceSession': Session})
    result = tool.compare(Swapped(), onnxruntime, 'unused.onnx', torch.zeros(1, 3, 32, 64), 1e-4)
    assert result.matched == result.total == 3
    assert result.boxes == pytest.approx(0.032, abs=1e-6)
    assert result.boxes_relative == pytest.approx(5e-4, abs=1e-8)


@pytest.mark.parametrize('extra, match', [
    (['--shape', '100', '192'], r'multiples of 32, e\.g\. 96 192'),
    (['--opset', '15'], 'opset 16'),
    (['--out', 'no/such/folder/m.onnx'], r"folder '.*no/such/folder' does not exist"),
])
def test_bad_arguments(tool, workspace, tmp_path, extra, match):
    config, checkpoint = workspace('detr')
    with pytest.raises(tool.ExportError, match=match):
        tool.main([config, checkpoint, '--out', str(tmp_path / 'm.onnx'), *extra])
    assert not (tmp_path / 'm.onnx').exists()


@pytest.mark.parametrize('missing', ['onnx', 'onnxruntime'])
def test_missing_onnx_packages_say_what_to_install(tool, workspace, tmp_path, monkeypatch,
                                                   missing):
    config, checkpoint = workspace('detr')
    monkeypatch.setitem(sys.modules, missing, None)  # makes `import missing` fail
    with pytest.raises(tool.ExportError, match=f'{missing} is not installed: pip install onnx '
                       'onnxruntime'):
        tool.main([config, checkpoint, '--out', str(tmp_path / 'm.onnx'), '--shape', '64', '64'])


def test_unreadable_checkpoint(tool, workspace, tmp_path):
    config, _ = workspace('detr')
    args = ['--out', str(tmp_path / 'm.onnx'), '--shape', '64', '64']
    with pytest.raises(tool.ExportError, match='does not exist'):
        tool.main([config, str(tmp_path / 'missing.pth'), *args])
    (tmp_path / 'garbage.pth').write_text('not a checkpoint')
    with pytest.raises(tool.ExportError, match='cannot read checkpoint'):
        tool.main([config, str(tmp_path / 'garbage.pth'), *args])


def test_checkpoint_of_another_architecture_is_one_line(repo_root, workspace, tmp_path):
    detr_config, _ = workspace('detr')
    _, rtdetr_checkpoint = workspace('rtdetr')
    result = subprocess.run(
        [sys.executable, str(repo_root / 'tools/deployment/export_onnx.py'), detr_config,
         rtdetr_checkpoint, '--out', str(tmp_path / 'm.onnx'), '--shape', '64', '64'],
        capture_output=True, text=True)
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith('error: checkpoint'), result.stderr
    assert 'does not fit the model (DETR)' in lines[0]
    assert 'missing keys [' in lines[0] and 'unexpected keys [' in lines[0]
    assert ', ... (+' in lines[0]  # long lists are cut
    assert not (tmp_path / 'm.onnx').exists()
