from .box_overlaps import box_overlaps
from .box_transforms import cxcywh_to_xyxy, xyxy_to_cxcywh
from .hungarian_assigner import HungarianAssigner, Matches
from .match_costs import BBoxL1Cost, ClassificationCost, FocalLossCost, IoUCost, MatchCost
from .matching_union import matching_union

__all__ = [
    'HungarianAssigner', 'Matches', 'MatchCost', 'ClassificationCost', 'FocalLossCost',
    'BBoxL1Cost', 'IoUCost', 'box_overlaps', 'cxcywh_to_xyxy', 'xyxy_to_cxcywh',
    'matching_union'
]
