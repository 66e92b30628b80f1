"""DEIM's learning-rate schedule: quadratic warm-up, flat, cosine decay, then constant."""
import math

from mmengine.optim.scheduler.lr_scheduler import LRSchedulerMixin
from mmengine.optim.scheduler.param_scheduler import _ParamScheduler

from detr_plugin.registry import PARAM_SCHEDULERS


def flat_cosine_factor(step: int, total: int, warmup: int, flat_end: int, final: int,
                       lr_gamma: float) -> float:
    """The fraction of the base learning rate DEIM's ``flat_cosine_schedule`` gives ``step``.

    (step / warmup) ** 2 up to ``warmup``, 1 up to ``flat_end``, ``lr_gamma`` from
    ``total - final`` on, and in between a half cosine from 1 down to ``lr_gamma``. ``warmup=0``
    means no warm-up (the original divides by zero there).
    """
    if warmup > 0 and step <= warmup:
        return (step / warmup) ** 2
    if step <= flat_end:
        return 1.0
    if step >= total - final:
        return lr_gamma
    progress = (step - flat_end) / (total - flat_end - final)
    return lr_gamma + (1 - lr_gamma) * 0.5 * (1 + math.cos(math.pi * progress))


@PARAM_SCHEDULERS.register_module()
class FlatCosineLR(LRSchedulerMixin, _ParamScheduler):
    """DEIM's ``FlatCosineLRScheduler`` (Huang et al., CVPR 2025), per iteration.

    With ``f`` as :func:`flat_cosine_factor` over ``total = end - begin`` iterations, iteration
    ``k`` (0-based from ``begin``) trains at ``base_lr * f(k - 1)``: the original sets the rate
    from the index of the step just taken, after it. Iteration 0 trains at
    ``base_lr * start_factor``, the rate the original's unused LinearWarmup leaves in the
    optimizer at construction (1 / its ``warmup_duration``: 500 in the D-FINE-based configs, 2000
    in the RT-DETRv2-based ones). Each parameter group decays to its own ``base_lr * lr_gamma``.

    Written in epochs with ``by_epoch=True, convert_to_iter_based=True`` as DEIM's YAML states
    them: ``flat_end`` (its ``flat_epoch``) and ``final_steps`` (its ``no_aug_epoch``) are then
    epochs, ``warmup_iters`` (its ``warmup_iter``) stays in iterations, and ``end`` is its
    ``epoches``.

    Args:
        warmup_iters: iterations of quadratic warm-up.
        flat_end: last step of the flat phase.
        final_steps: steps at ``base_lr * lr_gamma`` at the end of the schedule.
        lr_gamma: final learning rate over the base one.
        start_factor: the very first iteration's factor.
    """

    def __init__(self, optimizer, warmup_iters: int, flat_end: int, final_steps: int,
                 lr_gamma: float = 0.5, start_factor: float = 1 / 500, begin: int = 0,
                 end: int = None, last_step: int = -1, by_epoch: bool = False,
                 verbose: bool = False) -> None:
        if by_epoch:
            raise ValueError('FlatCosineLR steps per iteration: give by_epoch=True together with '
                             'convert_to_iter_based=True (epochs), or by_epoch=False (iterations)')
        if end is None:
            raise ValueError('FlatCosineLR needs end (the last epoch or iteration of training)')
        self.warmup_iters = warmup_iters
        self.flat_end = flat_end
        self.final_steps = final_steps
        self.lr_gamma = lr_gamma
        self.start_factor = start_factor
        super().__init__(optimizer, begin=begin, end=end, last_step=last_step,
                         by_epoch=by_epoch, verbose=verbose)

    @classmethod
    def build_iter_from_epoch(cls, *args, flat_end: int, final_steps: int, begin: int = 0,
                              end: int = None, by_epoch: bool = True, epoch_length: int = None,
                              **kwargs) -> 'FlatCosineLR':
        """The scheduler with its epoch arguments in iterations (``warmup_iters`` already is)."""
        if not by_epoch or not epoch_length or end is None:
            raise ValueError('FlatCosineLR with convert_to_iter_based needs by_epoch=True, end '
                             'and the loader length')
        return cls(*args, flat_end=flat_end * epoch_length,
                   final_steps=final_steps * epoch_length, begin=begin * epoch_length,
                   end=end * epoch_length, by_epoch=False, **kwargs)

    def _get_value(self) -> list:
        if self.last_step == 0:
            factor = self.start_factor
        else:
            factor = flat_cosine_factor(self.last_step - 1, self.end - self.begin,
                                        self.warmup_iters, self.flat_end, self.final_steps,
                                        self.lr_gamma)
        return [base * factor for base in self.base_values]
