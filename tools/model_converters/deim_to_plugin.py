"""Converts a DEIM-D-FINE (ShihuaHuang95/DEIM) or D-FINE checkpoint to a detr_plugin one.

    python tools/model_converters/deim_to_plugin.py SRC.pth DST.pth [--ema | --no-ema]

The same conversion as dfine_to_plugin.py (DEIM's D-FINE models carry D-FINE's names); load the
result with a config of configs/deim/.
"""
import os.path as osp
import sys

sys.path.insert(0, osp.dirname(osp.abspath(__file__)))
from dfine_to_plugin import main  # noqa: E402

if __name__ == '__main__':
    main()
