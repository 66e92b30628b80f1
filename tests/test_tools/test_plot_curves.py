"""tools/analysis/plot_curves.py on a hand-written scalars.json."""
import json

import pytest
from PIL import Image

ROWS = [
    {'lr': 2e-4, 'loss': 3.0, 'loss_cls': 1.5, 'epoch': 1, 'iter': 10, 'step': 10},
    {'lr': 2e-4, 'loss': 2.0, 'loss_cls': 1.0, 'epoch': 1, 'iter': 20, 'step': 20},
    {'coco/bbox_mAP': 0.1, 'coco/bbox_mAP_50': 0.3, 'step': 1},
    {'lr': 2e-4, 'loss': 1.5, 'loss_cls': 0.7, 'epoch': 2, 'iter': 30, 'step': 30},
    {'coco/bbox_mAP': 0.4, 'coco/bbox_mAP_50': 0.6, 'step': 2},
]


@pytest.fixture(scope='module')
def tool(load_tool):
    return load_tool('tools/analysis/plot_curves.py')


@pytest.fixture
def scalars(tmp_path):
    path = tmp_path / 'scalars.json'
    path.write_text('\n'.join(json.dumps(row) for row in ROWS) + '\n')
    return str(path)


def test_curves_pair_each_key_with_its_rows_steps(tool, scalars):
    curves = tool.collect_curves(tool.read_scalars(scalars), ['loss', 'coco/bbox_mAP'])
    assert curves == {'loss': ([10, 20, 30], [3.0, 2.0, 1.5]),
                      'coco/bbox_mAP': ([1, 2], [0.1, 0.4])}


def test_writes_a_png_with_one_subplot_per_key(tool, scalars, tmp_path):
    out = tmp_path / 'curves.png'
    tool.main([scalars, '--keys', 'loss', 'coco/bbox_mAP', '--out', str(out)])
    with Image.open(out) as image:
        # figsize (6, 3 per key) at 100 dpi
        assert image.format == 'PNG' and image.size == (600, 600)


def test_missing_key_lists_the_available_ones(tool, scalars, tmp_path):
    with pytest.raises(tool.PlotError) as error:
        tool.main([scalars, '--keys', 'loss', 'coco/segm_mAP', '--out', str(tmp_path / 'c.png')])
    message = str(error.value)
    assert "['coco/segm_mAP']" in message
    for key in ('coco/bbox_mAP', 'coco/bbox_mAP_50', 'loss', 'loss_cls', 'lr'):
        assert repr(key) in message
    assert not (tmp_path / 'c.png').exists()


def test_unreadable_file_is_a_clear_error(tool, tmp_path):
    with pytest.raises(tool.PlotError, match='cannot read'):
        tool.read_scalars(str(tmp_path / 'missing.json'))


def test_x_axis_names_what_step_counts(tool):
    assert tool.x_label(ROWS, 'loss') == 'iteration'
    assert tool.x_label(ROWS, 'coco/bbox_mAP') == 'epoch'  # validation of an epoch-based run
    iteration_based = [{k: v for k, v in row.items() if k != 'epoch'} for row in ROWS]
    assert tool.x_label(iteration_based, 'coco/bbox_mAP') == 'iteration'
