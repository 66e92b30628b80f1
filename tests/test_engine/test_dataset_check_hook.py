"""DatasetCheckHook: one summary block, one-line errors naming the file and the option."""
import json
from types import SimpleNamespace

import pytest
from mmdet.datasets import CocoDataset

from detr_plugin.engine.hooks import DatasetCheckHook


class Logger:
    def __init__(self):
        self.infos, self.warnings = [], []

    def info(self, message):
        self.infos.append(message)

    def warning(self, message):
        self.warnings.append(message)


def coco_dataset(ann_file, classes, **kwargs):
    return CocoDataset(ann_file=str(ann_file), metainfo=dict(classes=classes),
                       data_prefix=dict(img=''), pipeline=[], **kwargs)


def write_json(path, category_names, boxes, first_id=1):
    """One 64 x 64 image; ``boxes``: (category index, [x, y, w, h])."""
    path.write_text(json.dumps(dict(
        images=[dict(id=1, file_name='1.png', width=64, height=64)],
        categories=[dict(id=i + 1, name=name) for i, name in enumerate(category_names)],
        annotations=[dict(id=first_id + k, image_id=1, category_id=c + 1, bbox=box,
                          area=box[2] * box[3], iscrowd=0) for k, (c, box) in enumerate(boxes)])))
    return str(path)


def runner_with(train, val=None):
    val_loop = None if val is None else SimpleNamespace()
    return SimpleNamespace(logger=Logger(), train_dataloader=SimpleNamespace(dataset=train),
                           val_loop=val_loop, val_dataloader=SimpleNamespace(dataset=val))


def test_case_mismatched_class_stops_training_with_one_line(tmp_path):
    ann_file = write_json(tmp_path / 'trees.json', ['Tree'], [(0, [1, 1, 20, 20])] * 3)
    dataset = coco_dataset(ann_file, ('tree',), filter_cfg=dict(filter_empty_gt=False))
    assert dataset.get_data_info(0)['instances'] == []   # what mmdet loads, without a word
    with pytest.raises(ValueError) as error:
        DatasetCheckHook().before_train(runner_with(dataset))
    message = str(error.value)
    assert '\n' not in message
    assert message.startswith(f'{ann_file}: no box loaded')
    assert 'train_dataloader.dataset.metainfo.classes' in message
    assert "'tree' -> 'Tree'" in message


def test_validation_file_without_a_matching_class_stops_training(tmp_path):
    train = coco_dataset(write_json(tmp_path / 'train.json', ['tree'], [(0, [1, 1, 9, 9])]),
                         ('tree',))
    val_file = write_json(tmp_path / 'val.json', ['Tree'], [(0, [1, 1, 9, 9])])
    val = coco_dataset(val_file, ('tree',), test_mode=True)
    with pytest.raises(ValueError, match=r'val\.json: no box loaded.*val_dataloader'):
        DatasetCheckHook().before_train(runner_with(train, val))


def test_summary_block_and_warnings(tmp_path):
    boxes = [(0, [1, 1, 9, 9]), (0, [5, 5, 0, 9]), (1, [1, 1, 9, 9]), (1, [70, 1, 9, 9])]
    ann_file = write_json(tmp_path / 'train.json', ['cat', 'dog'], boxes, first_id=0)
    dataset = coco_dataset(ann_file, ('dog', 'cat'))
    runner = runner_with(dataset)
    DatasetCheckHook().before_train(runner)

    [block] = runner.logger.infos
    assert block.splitlines() == [
        f'Dataset check, train_dataloader ({ann_file}): 1 images, 2 boxes loaded of 4 '
        'annotations',
        '  boxes per class: dog: 1, cat: 1',
        '  dropped 2 boxes:',
        '    1 zero size / negative width or height (w or h < 1 px)',
        '    1 outside the image']
    zero_id, order = runner.logger.warnings
    assert zero_id.startswith(f'{ann_file}: 1 annotation(s) with id 0')
    assert "label 0 is 'cat' in the json but 'dog' in metainfo" in order


def test_forgotten_metainfo_gives_a_short_line(tmp_path):
    """Without metainfo, CocoDataset takes COCO's 80 class names: the line lists a few of them."""
    ann_file = write_json(tmp_path / 'widgets.json', ['widget'], [(0, [1, 1, 9, 9])])
    dataset = CocoDataset(ann_file=ann_file, data_prefix=dict(img=''), pipeline=[])
    with pytest.raises(ValueError) as error:
        DatasetCheckHook().before_train(runner_with(dataset))
    message = str(error.value)
    assert '\n' not in message and len(message) < 400
    assert "('person', 'bicycle'" in message and '80 names)' in message
    assert message.endswith("to its category names ('widget',)")


def test_class_matching_no_category_is_warned(tmp_path):
    boxes = [(0, [1, 1, 9, 9]), (1, [1, 1, 9, 9])]
    ann_file = write_json(tmp_path / 'pets.json', ['cat', 'dog'], boxes)
    runner = runner_with(coco_dataset(ann_file, ('cat', 'Dog')))
    DatasetCheckHook().before_train(runner)
    assert runner.logger.warnings == [
        f"{ann_file}: train_dataloader.dataset.metainfo.classes that match no json category, so no "
        "box is loaded for them: 'Dog' (closest: 'dog')"]
