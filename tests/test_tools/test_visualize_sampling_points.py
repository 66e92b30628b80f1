"""tools/analysis/visualize_sampling_points.py: the plotted points are the sampling locations and
weights the op itself received, mapped to the original image by hand; they are drawn as returned
and saved; the chosen queries are the top detections of mmdet's own inference; one-line errors."""
import json
import subprocess
import sys
from unittest import mock

import numpy as np
import pytest
import torch
from matplotlib.figure import Figure
from PIL import Image

from detr_plugin.ops import ms_deform_attn_module

# A 90 x 70 image: the demo test pipeline resizes it, keeping the ratio, into 128 x 128, i.e. to
# 128 x 100 (scale factors 128 / 90 and 100 / 70), and the data preprocessor pads it to a multiple
# of 32: 128 x 128. A location (x, y) in [0, 1] of the padded input is then the original image's
# pixel (x * 128 / (128 / 90), y * 128 / (100 / 70)).
IMAGE_W, IMAGE_H = 90, 70
SCALE_W, SCALE_H = 128 / 90, 100 / 70
PAD_W, PAD_H = 128, 128
CLASSES = ('square', 'circle', 'triangle')
DEMO_CONFIGS = {
    'deformable': 'configs/deformable_detr/deformable-detr_r18_1xb8-demo.py',
    'deformable-refine-twostage': 'configs/deformable_detr/deformable-detr_r18_1xb8-demo.py',
    'rtdetr': 'configs/rtdetr/rtdetr_r18vd_1xb8-demo.py',
    'rtdetr-uneven-points': 'configs/rtdetr/rtdetr_r18vd_1xb8-demo.py',
}
SMALLER = {  # 10 queries; every (query, class) pair kept, so each query's best score is listed
    'deformable': "model = dict(num_queries=10, test_cfg=dict(max_per_img=30),\n"
                  "             data_preprocessor=dict(pad_size_divisor=32))\n",
    'deformable-refine-twostage':
        "model = dict(num_queries=10, test_cfg=dict(max_per_img=30), with_box_refine=True,\n"
        "             as_two_stage=True, data_preprocessor=dict(pad_size_divisor=32))\n",
    'rtdetr': "model = dict(decoder=dict(num_queries=10), denoising=dict(num_denoising=5),\n"
              "             test_cfg=dict(max_per_img=30))\n",
    'rtdetr-uneven-points':  # RT-DETRv2's point count per level
        "model = dict(decoder=dict(num_queries=10, layer_cfg=dict(num_points=[3, 6, 3])),\n"
        "             denoising=dict(num_denoising=5), test_cfg=dict(max_per_img=30))\n",
}
LEVEL_POINTS = {'rtdetr-uneven-points': (3, 6, 3)}  # the others: 4 points on every level
ENCODER_LAYERS = {'deformable': 3, 'deformable-refine-twostage': 3, 'rtdetr': 0,  # calls before
                  'rtdetr-uneven-points': 0}
DECODER_LAYERS = 3                                                                 # the decoder's


@pytest.fixture(scope='module')
def tool(load_tool):
    return load_tool('tools/analysis/visualize_sampling_points.py')


@pytest.fixture(scope='module')
def workspace(tmp_path_factory, repo_root):
    """Small configs, their random-weight checkpoints (attention offsets and weights perturbed
    so that they depend on the query), and a 90 x 70 image."""
    from mmdet.registry import MODELS
    from mmengine.config import Config
    from mmengine.registry import init_default_scope

    root = tmp_path_factory.mktemp('sampling_points')
    init_default_scope('detr_plugin')
    files = {}
    for name, base in DEMO_CONFIGS.items():
        config = root / f'{name}.py'
        config.write_text(f"_base_ = ['{repo_root / base}']\n" + SMALLER[name])
        torch.manual_seed(0)
        model = MODELS.build(Config.fromfile(str(config)).model)
        model.init_weights()
        with torch.no_grad():
            for module in model.modules():
                if isinstance(module, ms_deform_attn_module.MultiScaleDeformableAttention):
                    module.sampling_offsets.weight.normal_(0, 0.05)
                    module.attention_weights.weight.normal_(0, 0.1)
        weights = root / f'{name}.pth'
        torch.save({'state_dict': model.state_dict(),
                    'meta': {'dataset_meta': {'classes': CLASSES}}}, weights)
        files[name] = (str(config), str(weights))
    image = np.random.default_rng(0).integers(0, 256, (IMAGE_H, IMAGE_W, 3), dtype=np.uint8)
    image[20:50, 30:70] = (220, 40, 40)
    Image.fromarray(image).save(root / 'image.png')
    return root, files, str(root / 'image.png')


def run_tool(tool, argv):
    """The tool's pictures, the arguments of every op call, and every figure it saved."""
    op_calls, figures = [], []
    op, savefig = ms_deform_attn_module.multi_scale_deformable_attention, Figure.savefig

    def recording_op(*args, **kwargs):
        op_calls.append(args)  # value, spatial_shapes, level_start_index, locations, weights
        return op(*args, **kwargs)

    def recording_savefig(figure, *args, **kwargs):
        figures.append(figure)
        return savefig(figure, *args, **kwargs)

    with mock.patch.object(ms_deform_attn_module, 'multi_scale_deformable_attention',
                           recording_op), mock.patch.object(Figure, 'savefig', recording_savefig):
        pictures = tool.main(argv)
    return pictures, op_calls, figures


def pixels_by_hand(locations):
    """(..., 2) normalized to the padded input -> pixels of the original 90 x 70 image."""
    return locations.double().numpy() * np.array([PAD_W / SCALE_W, PAD_H / SCALE_H])


def op_points_by_level(op_call, query, level_points=None):
    """The op's locations (heads, P_l, 2) and weights (heads, P_l) of ``query`` on every level:
    its arguments are (bs, Q, heads, L, P, 2 |) or, with ``level_points`` (P_0, ..., P_{L-1}),
    (bs, Q, heads, sum(P_l), 2 |), level 0's points first."""
    locations, weights = op_call[3][0, query], op_call[4][0, query]
    if level_points is None:
        return ([locations[:, level] for level in range(locations.shape[1])],
                [weights[:, level] for level in range(weights.shape[1])])
    assert locations.shape[1] == sum(level_points)
    starts = [sum(level_points[:level]) for level in range(len(level_points))]
    return ([locations[:, s:s + n] for s, n in zip(starts, level_points)],
            [weights[:, s:s + n] for s, n in zip(starts, level_points)])


def check_picture(pic, figure, op_call, query, level_points=None):
    """The picture's numbers are the op's own locations and weights of ``query``, in pixels; its
    figure draws them (one scatter per level, area proportional to the weight); PNG and JSON."""
    locations, weights = op_points_by_level(op_call, query, level_points)
    expected = [pixels_by_hand(level) for level in locations]
    assert len(pic.points) == len(pic.weights) == len(expected)
    for got, want in zip(pic.points, expected):
        np.testing.assert_allclose(got, want, rtol=1e-12)
    for got, want in zip(pic.weights, weights):
        np.testing.assert_array_equal(got, want.double().numpy())

    axis, = figure.axes
    for level, (points, level_weights) in enumerate(zip(expected, weights)):
        drawn, = [c for c in axis.collections if c.get_label().startswith(f'level {level} ')]
        np.testing.assert_allclose(drawn.get_offsets(), points.reshape(-1, 2), rtol=1e-12)
        area_per_weight = drawn.get_sizes() / level_weights.double().numpy().ravel()
        np.testing.assert_allclose(area_per_weight, area_per_weight[0], rtol=1e-6)
    assert len(axis.collections) == len(expected) + 1  # the levels and the reference point

    with Image.open(pic.out_file) as png:
        pixels = np.asarray(png.convert('RGB')).reshape(-1, 3)
    assert pixels.std() > 20 and len(np.unique(pixels, axis=0)) > 200, 'the PNG looks blank'
    with open(pic.out_file[:-len('.png')] + '.json') as file:
        saved = json.load(file)
    for got, want in zip(saved['points'], expected):
        np.testing.assert_allclose(got, want, rtol=1e-12)
    for got, want in zip(saved['weights'], weights):
        np.testing.assert_allclose(got, want.double().numpy(), rtol=1e-12)


def top_detections(config, weights, image):
    """mmdet's own inference: (score, xyxy box) of every detection, best first."""
    from mmdet.apis import inference_detector, init_detector
    result = inference_detector(init_detector(config, weights, device='cpu'), image).pred_instances
    return list(zip(result.scores.tolist(), result.bboxes.tolist()))


@pytest.mark.parametrize('name', ['deformable', 'deformable-refine-twostage', 'rtdetr',
                                  'rtdetr-uneven-points'])
def test_decoder_points_are_the_ops_top_queries_locations(tool, workspace, tmp_path, name):
    _, files, image = workspace
    config, weights = files[name]
    pictures, op_calls, figures = run_tool(
        tool, [config, weights, image, '--out-dir', str(tmp_path)])
    assert len(op_calls) == ENCODER_LAYERS[name] + DECODER_LAYERS
    assert len(pictures) == len(figures) == 3
    last_layer = op_calls[-1]
    for pic, figure in zip(pictures, figures):
        check_picture(pic, figure, last_layer, pic.query, LEVEL_POINTS.get(name))
        assert pic.out_file == str(tmp_path / f'image_decoder-layer2_query{pic.query}.png')
    # the three best queries: each one's best detection is in mmdet's results, the first on top
    detections = top_detections(config, weights, image)
    assert [pic.score for pic in pictures] == sorted((pic.score for pic in pictures), reverse=True)
    assert pictures[0].score == detections[0][0]
    for pic in pictures:
        box, = [box for score, box in detections if score == pic.score]
        np.testing.assert_allclose(pic.box, box, rtol=1e-6)
    if name == 'deformable':  # point references
        assert pictures[0].reference_box is None
    else:  # box references: the point is the box's centre
        np.testing.assert_allclose(pictures[0].reference_box.reshape(2, 2).mean(0),
                                   pictures[0].reference)


def test_chosen_layer_and_encoder_pixel(tool, workspace, tmp_path):
    _, files, image = workspace
    config, weights = files['deformable']
    pictures, op_calls, figures = run_tool(
        tool, [config, weights, image, '--query', '7', '2', '--layer', '1',
               '--encoder-pixel', '45', '30', '--out-dir', str(tmp_path)])
    assert [pic.query for pic in pictures[:2]] == [7, 2]
    for pic, figure in zip(pictures[:2], figures):
        check_picture(pic, figure, op_calls[3 + 1], pic.query)  # after 3 encoder layers
    # Pixel (45, 30) is (64, 42.9) in the network input: on the stride-8 level (16 x 16) row 5,
    # column 8, token 5 * 16 + 8; its reference is that cell's centre.
    encoder = pictures[2]
    assert encoder.query == 88 and encoder.box is None
    check_picture(encoder, figures[2], op_calls[1], 88)
    np.testing.assert_allclose(encoder.reference, [8.5 * 8 / SCALE_W, 5.5 * 8 / SCALE_H],
                               rtol=1e-6)
    assert encoder.out_file == str(tmp_path / 'image_encoder-layer1_x45_y30.png')


def bad_inputs(root, files, image, repo_root):
    """(arguments, the error they must give)."""
    deformable, rtdetr = files['deformable'], files['rtdetr']
    (root / 'not_an_image.png').write_text('text')
    detr_config = str(repo_root / 'configs/detr/detr_r18_1xb8-demo.py')
    return [
        ([*deformable, str(root / 'missing.png')], "cannot read image '.*missing.png'"),
        ([*deformable, str(root / 'not_an_image.png')], 'cannot read image'),
        ([deformable[0], rtdetr[1], image], r'does not fit the model \(DeformableDETR\): .*miss'),
        ([detr_config, deformable[1], image], r'\(DETR\) has no MultiScaleDeformableAttention'),
        ([*deformable, image, '--layer', '3'], r'--layer 3 is out of range: .* 3 .* \(0..2\)'),
        ([*rtdetr, image, '--encoder-pixel', '4', '4'], '--encoder-pixel needs a deformable enc'),
        ([*deformable, image, '--encoder-pixel', '95', '4'], r'outside the image \(90 x 70\)'),
        ([*rtdetr, image, '--query', '3', '10'], r'--query \[10\] out of range: .* 10 queries'),
    ]


def test_bad_input_gives_one_line_errors(tool, workspace, repo_root, tmp_path):
    root, files, image = workspace
    for argv, message in bad_inputs(root, files, image, repo_root):
        with pytest.raises(tool.VisualizeError, match=message) as error:
            tool.main(argv + ['--out-dir', str(tmp_path)])
        assert '\n' not in str(error.value)
    assert not list(tmp_path.iterdir())


def test_command_line_prints_the_error_alone(workspace, repo_root, tmp_path):
    _, files, _ = workspace
    result = subprocess.run(
        [sys.executable, str(repo_root / 'tools/analysis/visualize_sampling_points.py'),
         *files['rtdetr'], str(tmp_path / 'missing.png')], capture_output=True, text=True)
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        f"error: cannot read image '{tmp_path / 'missing.png'}'"]
