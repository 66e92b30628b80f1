"""tools/dataset_converters/deepforest_trees_to_coco.py against facts of deepforest 2.1.0's data.

The expected numbers were counted from the package's Pascal VOC files and the boxes worked out by
hand from the tiling rule in the tool's docstring. Skipped when deepforest is not installed
(``pip install --no-deps deepforest==2.1.0``) or is another version.
"""
import importlib.metadata
import importlib.util
import json

import numpy as np
import pytest
from PIL import Image

TOOL = 'tools/dataset_converters/deepforest_trees_to_coco.py'
VERSION = '2.1.0'
VAL = '2019_YELL_2_541000_4977000_image_crop'   # 1249 x 1035, a 4 x 3 grid


def installed_version():
    try:
        return importlib.metadata.version('deepforest')
    except importlib.metadata.PackageNotFoundError:
        return None


pytestmark = pytest.mark.skipif(
    installed_version() != VERSION,
    reason=f'needs deepforest {VERSION} (pip install --no-deps deepforest=={VERSION}); '
           f'found {installed_version()}')


@pytest.fixture(scope='module')
def tool(load_tool):
    return load_tool(TOOL)


@pytest.fixture(scope='module')
def converted(tool, tmp_path_factory):
    """(root, train coco dict, val coco dict) written with the default 320 px tiles."""
    root = tmp_path_factory.mktemp('deepforest_trees')
    tool.main(['--out', str(root)])
    load = lambda split: json.loads((root / 'annotations' / f'instances_{split}.json').read_text())
    return root, load('train'), load('val')


def boxes_of(coco, file_name):
    image_id = next(im['id'] for im in coco['images'] if im['file_name'] == file_name)
    return [a['bbox'] for a in coco['annotations'] if a['image_id'] == image_id]


def test_counts_and_split(converted, capsys):
    _, train, val = converted
    # crop2: 7 x 8 tiles with its 574 crowns; OSBS_029 (61) and SOAP_061 (37) whole
    assert len(train['images']) == 56 + 1 + 1
    assert len(train['annotations']) == 574 + 61 + 37
    # 279 crowns; the one centred in r0_c2 but lying mostly in its neighbours is dropped
    assert len(val['images']) == 12
    assert len(val['annotations']) == 278
    assert all(im['file_name'].startswith(VAL) for im in val['images'])
    assert not any(im['file_name'].startswith(VAL) for im in train['images'])
    for coco in (train, val):
        assert coco['categories'] == [dict(id=1, name='tree')]
        assert len({a['id'] for a in coco['annotations']}) == len(coco['annotations'])


def test_val_grid_sizes(converted):
    """Cell edges at round(k * 1249 / 4) = 0, 312, 624, 937, 1249 and 0, 345, 690, 1035."""
    root, _, val = converted
    sizes = {im['file_name']: (im['width'], im['height']) for im in val['images']}
    assert sizes == {f'{VAL}_r{r}_c{c}.png': (w, 345)
                     for r in range(3) for c, w in enumerate((312, 312, 313, 312))}
    with Image.open(root / 'val' / f'{VAL}_r2_c2.png') as img:
        assert img.size == (313, 345) and img.mode == 'RGB'


def test_known_boxes(converted):
    _, train, val = converted
    # OSBS_029 is kept whole: its first crown (203, 67, 227, 90) as COCO x, y, w, h
    osbs = boxes_of(train, 'OSBS_029_r0_c0.png')
    assert len(osbs) == 61 and osbs[0] == [203, 67, 24, 23]
    # (788, 841, 854, 905) lies inside the cell x 624..937, y 690..1035
    assert [164, 151, 66, 64] in boxes_of(val, f'{VAL}_r2_c2.png')
    # (558, 688, 601, 723): centre y 705.5 is below the edge y = 690, so it is clipped there
    assert [246, 0, 43, 33] in boxes_of(val, f'{VAL}_r2_c1.png')
    # (173, 661, 210, 701): centre y 681 is above the edge, clipped at its bottom
    assert [173, 316, 37, 29] in boxes_of(val, f'{VAL}_r1_c0.png')
    # (909, 308, 960, 370): centre (934.5, 339) in r0_c2 keeps 28 x 37 of 51 x 62: dropped,
    # neither clipped to r0_c2 nor put into r0_c3
    assert [285, 308, 28, 37] not in boxes_of(val, f'{VAL}_r0_c2.png')
    assert not [b for b in boxes_of(val, f'{VAL}_r0_c3.png') if b[1] == 308]


def test_tile_pixels_are_the_photo_crop(converted):
    root, _, _ = converted
    source = importlib.util.find_spec('deepforest').submodule_search_locations[0]
    photo = np.asarray(Image.open(f'{source}/data/{VAL}.png').convert('RGB'))
    tile = np.asarray(Image.open(root / 'val' / f'{VAL}_r2_c2.png'))
    assert np.array_equal(tile, photo[690:1035, 624:937])


def test_mmdet_reads_it(converted):
    from detr_plugin.registry import DATASETS
    root, _, val = converted
    dataset = DATASETS.build(dict(
        type='CocoDataset', data_root=str(root), ann_file='annotations/instances_val.json',
        data_prefix=dict(img='val/'), metainfo=dict(classes=('tree',)), test_mode=True,
        pipeline=[]))
    assert len(dataset) == 12
    info = dataset.get_data_info(0)
    first = [a for a in val['annotations'] if a['image_id'] == val['images'][0]['id']][0]['bbox']
    x, y, w, h = first
    assert info['instances'][0]['bbox'] == [x, y, x + w, y + h]
    assert info['instances'][0]['bbox_label'] == 0


def test_one_line_errors(tool, tmp_path, monkeypatch):
    first = r'2019_YELL_2_528000_4978000_image_crop2\.xml is missing'
    with pytest.raises(SystemExit, match=first) as err:
        tool.convert(str(tmp_path / 'out'), src=str(tmp_path))
    assert '\n' not in str(err.value)
    monkeypatch.setattr(tool.importlib.util, 'find_spec', lambda name: None)
    with pytest.raises(SystemExit, match='pip install --no-deps deepforest==2.1.0'):
        tool.convert(str(tmp_path / 'out'))
