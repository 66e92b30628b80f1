"""audit_coco_dataset: every box of a hand-written json accounted for, by reason."""
import json

from mmdet.datasets import CocoDataset

from detr_plugin.datasets import audit_coco_dataset
from detr_plugin.datasets.coco_annotation_check import (IMAGE_FILTERED, NO_AREA, NO_IMAGE,
                                                         NOT_IN_CLASSES, OUTSIDE, TOO_SMALL,
                                                         UNKNOWN_CATEGORY)


def coco_dataset(ann_file, classes, **kwargs):
    return CocoDataset(ann_file=str(ann_file), metainfo=dict(classes=classes),
                       data_prefix=dict(img=''), pipeline=[], **kwargs)


def annotation(ann_id, image_id, category_id, bbox, area, iscrowd=0):
    return dict(id=ann_id, image_id=image_id, category_id=category_id, bbox=bbox, area=area,
                iscrowd=iscrowd)


def write_mixed_json(path):
    """Image 1 is 100 wide, 80 high; image 2 (20 x 20) is below filter_cfg's min_size of 32."""
    images = [dict(id=1, file_name='1.png', width=100, height=80),
              dict(id=2, file_name='2.png', width=20, height=20)]
    categories = [dict(id=1, name='A'), dict(id=2, name='B'), dict(id=3, name='C')]
    annotations = [
        annotation(1, 1, 1, [10, 10, 20, 20], 400),     # loaded, A
        annotation(2, 1, 1, [40, 10, 20, 20], 400),     # loaded, A
        annotation(3, 1, 2, [10, 40, 30, 30], 900),     # loaded, B
        annotation(4, 1, 1, [90, 10, 20, 20], 400),     # half outside: loaded, A
        annotation(5, 1, 1, [10, 10, 0, 20], 400),      # zero width
        annotation(6, 1, 2, [30, 30, -5, 10], 50),      # negative width
        annotation(7, 1, 1, [5, 5, 10, 0.5], 5),        # height below 1 px
        annotation(8, 1, 1, [150, 10, 20, 20], 400),    # right of the image
        annotation(9, 1, 1, [10, 90, 20, 20], 400),     # below the image
        annotation(10, 1, 9, [10, 10, 20, 20], 400),    # category id 9 does not exist
        annotation(11, 1, 3, [10, 10, 20, 20], 400),    # 'C' is not a metainfo class
        annotation(12, 1, 2, [50, 40, 20, 20], 400, iscrowd=1),  # loaded as ignored
        annotation(13, 1, 1, [60, 40, 20, 20], 0),      # area 0
        annotation(14, 2, 1, [2, 2, 10, 10], 100),      # valid, but its image is filtered out
        annotation(15, 99, 1, [2, 2, 10, 10], 100),     # image 99 does not exist
        annotation(0, 1, 2, [70, 50, 10, 10], 100),     # id 0: loaded, B
    ]
    path.write_text(json.dumps(dict(images=images, annotations=annotations,
                                    categories=categories)))


def test_mixed_boxes_are_counted_by_reason(tmp_path):
    ann_file = tmp_path / 'train.json'
    write_mixed_json(ann_file)
    dataset = coco_dataset(ann_file, ('A', 'B'),
                           filter_cfg=dict(filter_empty_gt=False, min_size=32))
    audit = audit_coco_dataset(dataset)

    assert audit.num_images == 1 and audit.num_annotations == 16
    assert audit.loaded == {'A': 3, 'B': 2}
    assert audit.ignored == 1
    assert audit.dropped == {TOO_SMALL: 3, OUTSIDE: 2, UNKNOWN_CATEGORY: 1, NOT_IN_CLASSES: 1,
                             NO_AREA: 1, IMAGE_FILTERED: 1, NO_IMAGE: 1}
    assert audit.unknown_category_ids == [9]
    assert audit.unused_categories == ['C']
    assert audit.unmatched == {} and audit.label_mismatches == []
    assert audit.zero_ids == 1


def test_case_mismatch_and_order_mismatch(tmp_path):
    ann_file = tmp_path / 'val.json'
    ann_file.write_text(json.dumps(dict(
        images=[dict(id=1, file_name='1.png', width=50, height=50)],
        categories=[dict(id=1, name='Tree'), dict(id=2, name='cat'), dict(id=3, name='dog')],
        annotations=[annotation(1, 1, 1, [0, 0, 10, 10], 100),
                     annotation(2, 1, 2, [0, 0, 10, 10], 100),
                     annotation(3, 1, 3, [0, 0, 10, 10], 100)])))
    dataset = coco_dataset(ann_file, ('dog', 'cat', 'tree'), test_mode=True)
    audit = audit_coco_dataset(dataset)
    assert audit.unmatched == {'tree': ['Tree']}
    # labels follow the json: 0 is 'cat' (id 2), 1 is 'dog' (id 3); metainfo says 'dog', 'cat'
    assert audit.label_mismatches == [(0, 'dog', 'cat'), (1, 'cat', 'dog')]
    assert audit.loaded == {'dog': 1, 'cat': 1, 'tree': 0}
    assert audit.dropped == {NOT_IN_CLASSES: 1}
