# + two-stage: the encoder's top-300 proposals give the decoder's reference boxes and queries
_base_ = './deformable-detr-refine_r50_16xb2-50e_coco.py'

model = dict(as_two_stage=True)
