"""Reports, before the first iteration, what the datasets loaded from their COCO jsons."""
from typing import List, Optional

from mmdet.datasets import CocoDataset
from mmengine.dist import broadcast_object_list, get_world_size, is_main_process
from mmengine.hooks import Hook

from detr_plugin.datasets import AnnotationAudit, audit_coco_dataset
from detr_plugin.datasets.coco_annotation_check import NOT_IN_CLASSES, UNKNOWN_CATEGORY
from detr_plugin.registry import HOOKS


def coco_datasets(dataset) -> list:
    """The CocoDatasets inside ``dataset`` (itself, or those of a Concat/Repeat/... wrapper)."""
    if isinstance(dataset, CocoDataset):
        return [dataset]
    if hasattr(dataset, 'datasets'):
        return [inner for d in dataset.datasets for inner in coco_datasets(d)]
    if hasattr(dataset, 'dataset'):
        return coco_datasets(dataset.dataset)
    return []


def _counts(counts: dict) -> str:
    return ', '.join(f'{n} {what}' for what, n in counts.items())


def _per_class(loaded: dict) -> str:
    return ', '.join(f'{name}: {n}' for name, n in loaded.items())


def summary(audit: AnnotationAudit, where: str) -> str:
    """One log block: boxes per class, unmatched classes, dropped boxes by reason."""
    lines = [f'Dataset check, {where} ({audit.ann_file}): {audit.num_images} images, '
             f'{audit.num_loaded} boxes loaded of {audit.num_annotations} annotations',
             f'  boxes per class: {_per_class(audit.loaded)}']
    if audit.ignored:
        lines.append(f'  iscrowd boxes loaded as ignored (not trained on): {audit.ignored}')
    for name, closest in audit.unmatched.items():
        lines.append(f'  metainfo class {name!r} matches no json category '
                     f'(closest json names: {", ".join(map(repr, closest)) or "none"})')
    details = {UNKNOWN_CATEGORY: f' (ids {audit.unknown_category_ids})',
               NOT_IN_CLASSES: f' (json names {audit.unused_categories[:10]})'}
    if audit.dropped:
        lines.append(f'  dropped {sum(audit.dropped.values())} boxes:')
        lines += [f'    {n} {reason}{details.get(reason, "")}'
                  for reason, n in audit.dropped.items()]
    return '\n'.join(lines)


def warning_lines(audit: AnnotationAudit, where: str) -> List[str]:
    found = []
    if audit.unmatched and len(audit.unmatched) < len(audit.classes):   # all: no_box_error
        names = ', '.join(f'{name!r} (closest: {", ".join(map(repr, close)) or "none"})'
                          for name, close in audit.unmatched.items())
        found.append(f'{audit.ann_file}: {where}.dataset.metainfo.classes that match no json '
                     f'category, so no box is loaded for them: {names}')
    if audit.zero_ids:
        found.append(f'{audit.ann_file}: {audit.zero_ids} annotation(s) with id 0: pycocotools\' '
                     'COCOeval (CocoMetric with this ann_file) takes id 0 for "no match", so a '
                     'detection matching that box counts as a false positive and AP drops; '
                     'number the annotations from 1')
    if audit.label_mismatches:
        pairs = ', '.join(f'label {label} is {json!r} in the json but {name!r} in metainfo'
                          for label, name, json in audit.label_mismatches)
        found.append(f'{audit.ann_file}: labels follow the json\'s category order, not '
                     f'{where}.dataset.metainfo.classes: {pairs}; list the classes in the '
                     'json\'s order so that names (logs, drawings, checkpoints) match the boxes')
    return found


def _names(names, limit: int = 8) -> str:
    """('a', 'b', ...) with at most ``limit`` names shown."""
    if len(names) > limit:
        return f'({", ".join(map(repr, names[:limit]))}, ... {len(names)} names)'
    return repr(tuple(names))


def no_box_error(audit: AnnotationAudit, where: str) -> str:
    option = f'{where}.dataset.metainfo.classes'
    if audit.unmatched and len(audit.unmatched) == len(audit.classes):
        closest = [f'{name!r} -> {close[0]!r}' for name, close in audit.unmatched.items() if close]
        return (f'{audit.ann_file}: no box loaded: no name of {option} {_names(audit.classes)} is '
                f'a category of this file (closest: {", ".join(closest[:5]) or "none"}); set '
                f'{option} to its category names {_names(audit.unused_categories)}')
    reasons = _counts(audit.dropped) or 'the file has no annotations'
    return (f'{audit.ann_file}: no box loaded for {option} {_names(audit.classes)} ({reasons}); '
            'fix the boxes or the classes')


def check(dataset, where: str, logger, require_boxes: bool) -> Optional[str]:
    """Logs the audit of every CocoDataset in ``dataset``; returns the error line, if any."""
    for coco in coco_datasets(dataset):
        audit = audit_coco_dataset(coco)
        logger.info(summary(audit, where))
        for line in warning_lines(audit, where):
            logger.warning(line)
        if audit.num_loaded == 0 and (require_boxes or audit.num_annotations > 0):
            return no_box_error(audit, where)
    return None


@HOOKS.register_module()
class DatasetCheckHook(Hook):
    """Audits the COCO-format datasets before training or testing.

    Logs one block per annotation file (boxes loaded per class, metainfo classes that match no
    json category with the closest json names, boxes left out by reason), warns about annotation
    ids of 0 and labels whose names disagree with the json, and stops the run with one line when
    no box at all was loaded (training), or none of a file that has annotations (validation,
    testing). The main process audits; in distributed runs every rank gets its verdict.
    """

    priority = 'BELOW_NORMAL'   # after NumClassesCheckHook, which explains a string of classes

    def before_train(self, runner) -> None:
        self._check(runner, runner.train_dataloader.dataset, 'train_dataloader', True)
        if runner.val_loop is not None:
            self._check(runner, runner.val_dataloader.dataset, 'val_dataloader', False)

    def before_test(self, runner) -> None:
        self._check(runner, runner.test_dataloader.dataset, 'test_dataloader', False)

    @staticmethod
    def _check(runner, dataset, where: str, require_boxes: bool) -> None:
        error = check(dataset, where, runner.logger, require_boxes) if is_main_process() else None
        if get_world_size() > 1:
            verdict = [error]
            broadcast_object_list(verdict)
            error = verdict[0]
        if error:
            raise ValueError(error)
