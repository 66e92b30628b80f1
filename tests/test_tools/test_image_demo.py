"""tools/image_demo.py: drawn images for a small RT-DETR, and one-line errors for bad input."""
import numpy as np
import pytest
import torch
from PIL import Image

CLASSES = ('square', 'circle', 'triangle')


@pytest.fixture(scope='module')
def tool(load_tool):
    return load_tool('tools/image_demo.py')


@pytest.fixture(scope='module')
def workspace(tmp_path_factory, repo_root):
    """A few-query RT-DETR demo config and its randomly initialised weights saved as a checkpoint."""
    from mmdet.registry import MODELS
    from mmengine.config import Config
    from mmengine.registry import init_default_scope

    root = tmp_path_factory.mktemp('image_demo')
    config = root / 'tiny_rtdetr.py'
    config.write_text(
        f"_base_ = ['{repo_root / 'configs/rtdetr/rtdetr_r18vd_1xb8-demo.py'}']\n"
        "model = dict(decoder=dict(num_queries=5), denoising=dict(num_denoising=5),\n"
        "             test_cfg=dict(max_per_img=5))\n")
    init_default_scope('detr_plugin')
    torch.manual_seed(0)
    state_dict = MODELS.build(Config.fromfile(str(config)).model).state_dict()
    weights = root / 'tiny.pth'
    torch.save({'state_dict': state_dict, 'meta': {'dataset_meta': {'classes': CLASSES}}}, weights)
    return root, str(config), str(weights), state_dict


def write_gray_image(path, size=(96, 128)):
    image = np.full((*size, 3), 128, dtype=np.uint8)  # (H, W, 3), one flat colour
    Image.fromarray(image).save(path)
    return image


def test_draws_boxes_on_every_image_of_a_folder(tool, workspace, tmp_path):
    _, config, weights, _ = workspace
    images = tmp_path / 'images'
    images.mkdir()
    inputs = {name: write_gray_image(images / name) for name in ('a.png', 'b.jpg')}
    (images / 'notes.txt').write_text('not an image')
    out_dir = tmp_path / 'out'
    # Score threshold 0: every prediction of the untrained model is drawn.
    drawn = tool.main([str(images), config, '--weights', weights, '--out-dir', str(out_dir),
                       '--score-thr', '0'])
    assert drawn.skipped == []
    assert sorted(p.name for p in out_dir.iterdir()) == ['a.png', 'b.jpg']
    drawn = np.asarray(Image.open(out_dir / 'a.png').convert('RGB'))
    assert drawn.shape == inputs['a.png'].shape
    changed = np.any(drawn != inputs['a.png'], axis=-1)
    assert changed.mean() > 0.01, 'boxes and labels should change some pixels of a flat image'


def test_without_weights_warns_and_takes_classes_from_the_config(tool, workspace, tmp_path):
    _, config, _, _ = workspace
    write_gray_image(tmp_path / 'a.png')
    with pytest.warns(UserWarning, match='randomly initialised'):
        model = tool.build_model(config, None, 'cpu')
    assert tuple(model.dataset_meta['classes']) == CLASSES


def test_checkpoint_of_another_architecture_names_the_keys(tool, workspace, tmp_path):
    _, config, _, state_dict = workspace
    other = dict(state_dict)
    removed = sorted(other)[0]
    del other[removed]
    other['extra_branch.weight'] = torch.zeros(1)
    weights = tmp_path / 'other.pth'
    torch.save({'state_dict': other}, weights)
    with pytest.raises(tool.DemoError) as error:
        tool.build_model(config, str(weights), 'cpu')
    message = str(error.value)
    assert '1 missing keys' in message and removed in message
    assert '1 unexpected keys' in message and 'extra_branch.weight' in message


def test_bad_image_paths_give_clear_errors(tool, tmp_path):
    with pytest.raises(tool.DemoError, match='does not exist'):
        tool.list_images(str(tmp_path / 'missing.png'))
    with pytest.raises(tool.DemoError, match='no image files'):
        tool.list_images(str(tmp_path))


def test_command_line_error_is_one_line(repo_root, workspace, tmp_path):
    import subprocess
    import sys
    _, config, _, _ = workspace
    result = subprocess.run(
        [sys.executable, str(repo_root / 'tools/image_demo.py'), str(tmp_path / 'missing.png'),
         config, '--out-dir', str(tmp_path / 'out')], capture_output=True, text=True)
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        f"error: image path '{tmp_path / 'missing.png'}' does not exist"]


def test_a_bad_file_in_a_folder_is_skipped_and_named(tool, workspace, tmp_path, capsys):
    _, config, weights, _ = workspace
    images = tmp_path / 'images'
    images.mkdir()
    write_gray_image(images / 'a.png')
    (images / 'broken.jpg').write_bytes(b'\xff\xd8 truncated, not a JPEG')
    write_gray_image(images / 'c.png')
    out_dir = tmp_path / 'out'
    drawn = tool.main([str(images), config, '--weights', weights, '--out-dir', str(out_dir)])
    assert sorted(p.name for p in out_dir.iterdir()) == ['a.png', 'c.png']
    assert drawn.skipped == [str(images / 'broken.jpg')]
    assert capsys.readouterr().err.strip().splitlines() == [
        f"skipped 1 image(s) that cannot be read: {images / 'broken.jpg'}"]


def test_a_single_unreadable_image_is_an_error_naming_it(tool, workspace, tmp_path):
    """(the script prints a DemoError as one line 'error: ...', exit status 1: see above)"""
    _, config, weights, _ = workspace
    broken = tmp_path / 'broken.png'
    broken.write_text('not an image')
    with pytest.raises(tool.DemoError) as error:
        tool.main([str(broken), config, '--weights', weights, '--out-dir', str(tmp_path / 'out')])
    assert str(error.value) == f"cannot read image '{broken}'"
