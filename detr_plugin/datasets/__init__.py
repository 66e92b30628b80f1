from .coco_annotation_check import AnnotationAudit, audit_coco_dataset
from .transforms import *  # noqa: F401,F403

__all__ = ['AnnotationAudit', 'audit_coco_dataset']
