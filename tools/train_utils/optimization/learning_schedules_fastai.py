"""Learning-rate schedules driven by the global optimizer step (OpenPCDet's ``lr_scheduler.step(it)`` call).

Each schedule computes the learning rate (and for one-cycle the momentum) as a pure function of the step, so a
resumed run that restores the step count continues on exactly the same curve; no scheduler state is saved.
"""
import math


def annealing_cos(start, end, pct):
    """Cosine interpolation from ``start`` (pct 0) to ``end`` (pct 1)."""
    return end + (start - end) / 2.0 * (math.cos(math.pi * pct) + 1.0)


class StepScheduler:
    """Base class: ``step(it)`` writes ``lr_at(it)`` (and momentum when defined) into every param group."""

    def __init__(self, optimizer, total_steps, last_step=-1):
        if total_steps <= 0:
            raise ValueError(f"{type(self).__name__}: total_steps must be positive, got {total_steps}")
        self.optimizer = optimizer
        self.total_steps = int(total_steps)
        self.last_step = last_step
        self.step(max(last_step, 0))

    def lr_at(self, step):
        raise NotImplementedError

    def mom_at(self, step):
        return None

    def get_lr(self):
        return [group["lr"] for group in self.optimizer.param_groups]

    def step(self, step=None, epoch=None):
        step = self.last_step + 1 if step is None else int(step)
        self.last_step = step
        lr = self.lr_at(step)
        mom = self.mom_at(step)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
            if mom is not None:
                set_momentum(group, mom)


def set_momentum(group, mom):
    """Momentum of SGD, or beta1 of the Adam family."""
    if "betas" in group:
        group["betas"] = (mom, group["betas"][1])
    elif "momentum" in group:
        group["momentum"] = mom


class OneCycle(StepScheduler):
    """fastai one-cycle: lr rises (cosine) from ``lr_max / div_factor`` to ``lr_max`` over ``pct_start`` of the
    steps, then falls (cosine) to ``lr_max / div_factor / 1e4``; momentum moves ``moms[0] -> moms[1] -> moms[0]``.
    """

    def __init__(self, optimizer, total_steps, lr_max, moms, div_factor, pct_start, last_step=-1):
        if not 0.0 < pct_start < 1.0:
            raise ValueError(f"OneCycle: PCT_START must be in (0, 1), got {pct_start}")
        self.lr_max = float(lr_max)
        self.moms = (float(moms[0]), float(moms[1]))
        self.div_factor = float(div_factor)
        self.pct_start = float(pct_start)
        self.warm_steps = max(int(total_steps * pct_start), 1)
        super().__init__(optimizer, total_steps, last_step)

    def _phase(self, step):
        if step <= self.warm_steps:
            return 0, step / self.warm_steps
        rest = max(self.total_steps - self.warm_steps, 1)
        return 1, min((step - self.warm_steps) / rest, 1.0)

    def lr_at(self, step):
        low = self.lr_max / self.div_factor
        phase, pct = self._phase(step)
        if phase == 0:
            return annealing_cos(low, self.lr_max, pct)
        return annealing_cos(self.lr_max, low / 1e4, pct)

    def mom_at(self, step):
        phase, pct = self._phase(step)
        if phase == 0:
            return annealing_cos(self.moms[0], self.moms[1], pct)
        return annealing_cos(self.moms[1], self.moms[0], pct)


class CosineWithWarmup(StepScheduler):
    """Cosine decay from ``lr`` to ``max(lr_clip, 0)`` over all steps, after an optional warm-up.

    Warm-up: over ``warmup_steps`` the lr rises (cosine) from ``lr / div_factor`` to the decayed value.
    """

    def __init__(self, optimizer, total_steps, lr, lr_clip=0.0, warmup_steps=0, div_factor=10.0, last_step=-1):
        self.base_lr = float(lr)
        self.lr_clip = float(lr_clip)
        self.warmup_steps = int(warmup_steps)
        self.div_factor = float(div_factor)
        super().__init__(optimizer, total_steps, last_step)

    def _decayed(self, step):
        pct = min(step / self.total_steps, 1.0)
        return annealing_cos(self.base_lr, self.lr_clip, pct)

    def lr_at(self, step):
        lr = self._decayed(step)
        if step < self.warmup_steps:
            return annealing_cos(self.base_lr / self.div_factor, lr, step / self.warmup_steps)
        return lr


class StepDecay(StepScheduler):
    """OpenPCDet's step decay: lr is multiplied by ``lr_decay`` at each epoch in ``decay_step_list`` and never
    falls under ``lr_clip``; optional cosine warm-up as in ``CosineWithWarmup``.
    """

    def __init__(self, optimizer, total_steps, steps_per_epoch, lr, decay_step_list, lr_decay, lr_clip,
                 warmup_steps=0, div_factor=10.0, last_step=-1):
        self.base_lr = float(lr)
        self.steps_per_epoch = int(steps_per_epoch)
        self.decay_steps = [int(e) * self.steps_per_epoch for e in decay_step_list]
        self.lr_decay = float(lr_decay)
        self.lr_clip = float(lr_clip)
        self.warmup_steps = int(warmup_steps)
        self.div_factor = float(div_factor)
        super().__init__(optimizer, total_steps, last_step)

    def _decayed(self, step):
        factor = 1.0
        for decay_step in self.decay_steps:
            if step >= decay_step:
                factor *= self.lr_decay
        return max(self.base_lr * factor, self.lr_clip)

    def lr_at(self, step):
        lr = self._decayed(step)
        if step < self.warmup_steps:
            return annealing_cos(self.base_lr / self.div_factor, lr, step / self.warmup_steps)
        return lr
