"""What a COCO json loses on its way into mmdet's ``CocoDataset``, box by box, and why.

``CocoDataset`` keeps a box only if its category's name is one of ``metainfo['classes']``, its
width and height are at least 1 px, it overlaps the image, its ``area`` is positive and it has no
``ignore`` flag; ``iscrowd`` boxes are kept with ``ignore_flag=1`` (not trained on), and
``filter_cfg`` can leave whole images out. It says nothing about what it left out, so a class
name that differs from the json's (``'tree'`` vs ``'Tree'``) silently trains on no box at all.
``audit_coco_dataset`` re-reads the json, gives every left-out box its reason, and counts the
boxes the built dataset actually holds per class.
"""
import difflib
import json
from collections import Counter
from typing import Dict, List, NamedTuple, Optional, Tuple

from mmengine.fileio import get_local_path

# Why a box of the json is not in the dataset, in the order they are tested.
NO_IMAGE = 'image_id not in images'
UNKNOWN_CATEGORY = 'unknown category id'
NOT_IN_CLASSES = 'category not in metainfo classes'
IGNORE_FLAG = "'ignore' set"
TOO_SMALL = 'zero size / negative width or height (w or h < 1 px)'
OUTSIDE = 'outside the image'
NO_AREA = "'area' <= 0"
IMAGE_FILTERED = 'image left out by filter_cfg'
REASONS = (NO_IMAGE, UNKNOWN_CATEGORY, NOT_IN_CLASSES, IGNORE_FLAG, TOO_SMALL, OUTSIDE, NO_AREA,
           IMAGE_FILTERED)


class AnnotationAudit(NamedTuple):
    ann_file: str
    classes: Tuple[str, ...]                 # metainfo classes, in label order
    num_images: int                          # images the dataset holds (after filter_cfg)
    num_annotations: int                     # annotations in the json
    loaded: Dict[str, int]                   # class -> boxes loaded to train on (every class)
    ignored: int                             # iscrowd boxes loaded with ignore_flag=1
    dropped: Dict[str, int]                  # reason -> boxes left out (reasons with boxes only)
    unknown_category_ids: List[int]          # category ids of annotations that no category has
    unused_categories: List[str]             # json category names that are not metainfo classes
    unmatched: Dict[str, List[str]]          # metainfo class matching no json category -> closest
    label_mismatches: List[Tuple[int, str, str]]  # (label, metainfo name, json name) that differ
    zero_ids: int                            # annotations whose id is 0

    @property
    def num_loaded(self) -> int:
        return sum(self.loaded.values())


def closest_names(name: str, candidates: List[str], n: int = 3) -> List[str]:
    """The candidates most similar to ``name`` ignoring case (difflib), best first."""
    by_lower = {c.lower(): c for c in candidates}
    return [by_lower[c] for c in difflib.get_close_matches(name.lower(), list(by_lower), n=n)]


def drop_reason(ann: dict, image: Optional[dict], category_ids: set,
                class_category_ids: set) -> Optional[str]:
    """Why CocoDataset leaves ``ann`` out (None: it keeps it). Same rules as its
    ``parse_data_info``; a box failing several is given the first reason of the module's list."""
    if image is None:
        return NO_IMAGE
    if ann['category_id'] not in category_ids:
        return UNKNOWN_CATEGORY
    if ann['category_id'] not in class_category_ids:
        return NOT_IN_CLASSES
    if ann.get('ignore', False):
        return IGNORE_FLAG
    x, y, w, h = ann['bbox']
    if w < 1 or h < 1:
        return TOO_SMALL
    if min(x + w, image['width']) <= max(x, 0) or min(y + h, image['height']) <= max(y, 0):
        return OUTSIDE
    if ann['area'] <= 0:
        return NO_AREA
    return None


def audit_coco_dataset(dataset) -> AnnotationAudit:
    """Audits a built (mmdet) ``CocoDataset``: its json re-read, its data list counted."""
    classes = tuple(dataset.metainfo['classes'])
    with get_local_path(dataset.ann_file, backend_args=dataset.backend_args) as path:
        with open(path) as f:
            coco = json.load(f)
    categories = coco.get('categories', [])
    annotations = coco.get('annotations', [])
    images = {image['id']: image for image in coco.get('images', [])}
    json_names = [c['name'] for c in categories]
    # CocoDataset's labels follow the json's category order, whatever the order of the classes
    class_categories = [c for c in categories if c['name'] in classes]
    category_ids = {c['id'] for c in categories}
    class_category_ids = {c['id'] for c in class_categories}

    loaded, ignored, kept_images = Counter(), 0, set()
    for index in range(len(dataset)):
        info = dataset.get_data_info(index)
        kept_images.add(info['img_id'])
        for instance in info['instances']:
            if instance.get('ignore_flag', 0):
                ignored += 1
            else:
                loaded[instance['bbox_label']] += 1

    dropped, unknown_ids = Counter(), set()
    for ann in annotations:
        reason = drop_reason(ann, images.get(ann['image_id']), category_ids, class_category_ids)
        if reason is None and ann['image_id'] not in kept_images:
            reason = IMAGE_FILTERED
        if reason == UNKNOWN_CATEGORY:
            unknown_ids.add(ann['category_id'])
        if reason is not None:
            dropped[reason] += 1

    return AnnotationAudit(
        ann_file=str(dataset.ann_file), classes=classes, num_images=len(dataset),
        num_annotations=len(annotations),
        loaded={name: loaded[label] for label, name in enumerate(classes)}, ignored=ignored,
        dropped={reason: dropped[reason] for reason in REASONS if dropped[reason]},
        unknown_category_ids=sorted(unknown_ids),
        unused_categories=[n for n in json_names if n not in classes],
        unmatched={name: closest_names(name, json_names) for name in classes
                   if name not in json_names},
        label_mismatches=[(label, classes[label] if label < len(classes) else '(none)', c['name'])
                          for label, c in enumerate(class_categories)
                          if label >= len(classes) or c['name'] != classes[label]],
        zero_ids=sum(1 for ann in annotations if ann.get('id') == 0))
