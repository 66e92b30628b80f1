from .varifocal_loss import RTDETRVarifocalLoss, varifocal_loss

__all__ = ['RTDETRVarifocalLoss', 'varifocal_loss']
