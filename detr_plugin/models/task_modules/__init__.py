from .box_overlaps import box_overlaps
from .hungarian_assigner import HungarianAssigner, Matches
from .match_costs import BBoxL1Cost, ClassificationCost, FocalLossCost, IoUCost, MatchCost
from .matching_union import matching_union

__all__ = [
    'HungarianAssigner', 'Matches', 'MatchCost', 'ClassificationCost', 'FocalLossCost',
    'BBoxL1Cost', 'IoUCost', 'box_overlaps', 'matching_union'
]
