"""The training loop: one shared loop for plain and distilled training (the distiller is just the model).

``model_func(model, batch_dict) -> (loss, tb_dict, disp_dict)`` runs one forward pass; ``tb_dict`` holds
scalar loss terms (distillation terms are prefixed ``kd_``). Only rank 0 shows progress bars, writes
tensorboard scalars and saves checkpoints.
"""
import math
import os

import torch
import tqdm

from pcdet.utils import checkpoint_utils

KD_PREFIX = "kd_"
DIAG_PREFIX = "diag_"  # distillation diagnostics (gradient norms, statistics): shown with the kd terms, not losses


class NonFiniteLossError(FloatingPointError):
    """The loss (or gradient norm) became NaN/inf; the message names the iteration, epoch and terms."""


def _scalar(value):
    if torch.is_tensor(value):
        if value.numel() != 1:
            return None
        return float(value.detach().float().item())
    if isinstance(value, (int, float)):
        return float(value)
    return None


def check_loss_finite(loss, tb_dict, cur_it, cur_epoch):
    """Raise NonFiniteLossError when ``loss`` is NaN/inf, naming the tb_dict terms that are not finite."""
    value = _scalar(loss)
    if value is not None and math.isfinite(value):
        return
    bad = {}
    for key, term in (tb_dict or {}).items():
        term_value = _scalar(term)
        if term_value is not None and not math.isfinite(term_value):
            bad[key] = term_value
    terms = ", ".join(f"{k}={v}" for k, v in bad.items()) if bad else "no tb_dict term is non-finite"
    raise NonFiniteLossError(
        f"non-finite loss {value} at iteration {cur_it} (epoch {cur_epoch}); offending terms: {terms}. "
        f"Training stopped before the optimizer step; no checkpoint was written from this state."
    )


def split_terms(tb_dict):
    """``(detection_terms, kd_terms)`` as float dicts; non-scalar entries are dropped."""
    det, kd = {}, {}
    for key, term in (tb_dict or {}).items():
        value = _scalar(term)
        if value is None:
            continue
        (kd if key.startswith((KD_PREFIX, DIAG_PREFIX)) else det)[key] = value
    return det, kd


def _fmt(terms):
    return {k: f"{v:.4g}" for k, v in terms.items()}


def train_one_epoch(model, optimizer, train_loader, model_func, lr_scheduler, accumulated_iter, optim_cfg, rank,
                    tbar, total_it_each_epoch, dataloader_iter, tb_log=None, leave_pbar=False, cur_epoch=0,
                    scaler=None, use_amp=False, device_type="cpu", skip_iters=0, ckpt_save_dir=None,
                    ckpt_save_iter_interval=0, amp_dtype=torch.float16):
    """Run ``total_it_each_epoch - skip_iters`` optimizer steps; return the updated ``accumulated_iter``.

    ``skip_iters`` batches are drawn and discarded first (resuming from a mid-epoch ``latest_model.pth``).
    Every ``ckpt_save_iter_interval`` steps (0: never) rank 0 writes ``latest_model.pth`` atomically.
    """
    if scaler is None:
        scaler = torch.amp.GradScaler(device_type, enabled=use_amp and amp_dtype == torch.float16)
    pbar = None
    kd_bar = None
    if rank == 0:
        pbar = tqdm.tqdm(total=total_it_each_epoch, initial=skip_iters, leave=leave_pbar, desc="train",
                         dynamic_ncols=True)
    try:
        for _ in range(skip_iters):
            next(dataloader_iter)
        grad_clip = optim_cfg.get("GRAD_NORM_CLIP", None)
        model.train()
        for _ in range(skip_iters, total_it_each_epoch):
            try:
                batch = next(dataloader_iter)
            except StopIteration as exc:
                raise RuntimeError(
                    f"the train dataloader ran out after {accumulated_iter} iterations in epoch {cur_epoch}; "
                    f"expected {total_it_each_epoch} per epoch"
                ) from exc
            lr_scheduler.step(accumulated_iter)
            cur_lr = optimizer.param_groups[0]["lr"]
            optimizer.zero_grad(set_to_none=True)
            with torch.autocast(device_type=device_type, dtype=amp_dtype, enabled=use_amp):
                loss, tb_dict, disp_dict = model_func(model, batch)
            check_loss_finite(loss, tb_dict, accumulated_iter, cur_epoch)
            scaler.scale(loss).backward()
            if grad_clip is not None:
                scaler.unscale_(optimizer)
                grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), float(grad_clip))
                if not use_amp and not torch.isfinite(grad_norm):
                    raise NonFiniteLossError(
                        f"non-finite gradient norm {float(grad_norm)} at iteration {accumulated_iter} "
                        f"(epoch {cur_epoch}) with finite loss {float(loss)}; no optimizer step was taken"
                    )
            scaler.step(optimizer)
            scaler.update()
            accumulated_iter += 1

            if rank == 0:
                loss_value = float(loss.detach().item())
                det_terms, kd_terms = split_terms(tb_dict)
                postfix = {"loss": f"{loss_value:.4g}", "lr": f"{cur_lr:.3g}"}
                postfix.update(_fmt(det_terms))
                postfix.update({k: v for k, v in (disp_dict or {}).items() if k not in postfix})
                pbar.set_postfix(postfix, refresh=False)
                pbar.update()
                if kd_terms:
                    if kd_bar is None:
                        kd_bar = tqdm.tqdm(total=0, leave=leave_pbar, bar_format="{desc}", dynamic_ncols=True)
                    kd_bar.set_description_str(
                        "  kd: " + "  ".join(f"{k}={v}" for k, v in _fmt(kd_terms).items()), refresh=True
                    )
                if tbar is not None:
                    tbar.set_postfix({"total_it": accumulated_iter})
                    tbar.refresh()
                if tb_log is not None:
                    tb_log.add_scalar("train/loss", loss_value, accumulated_iter)
                    tb_log.add_scalar("meta_data/learning_rate", cur_lr, accumulated_iter)
                    for key, value in {**det_terms, **kd_terms}.items():
                        tb_log.add_scalar("train/" + key, value, accumulated_iter)
                save_latest = ckpt_save_iter_interval and accumulated_iter % ckpt_save_iter_interval == 0
                if ckpt_save_dir is not None and save_latest:
                    checkpoint_utils.save_checkpoint(
                        checkpoint_utils.checkpoint_state(model, optimizer, cur_epoch, accumulated_iter,
                                                          total_it_each_epoch),
                        os.path.join(str(ckpt_save_dir), checkpoint_utils.LATEST_NAME),
                    )
    finally:
        if pbar is not None:
            pbar.close()
        if kd_bar is not None:
            kd_bar.close()
    return accumulated_iter


def train_model(model, optimizer, train_loader, model_func, lr_scheduler, optim_cfg, start_epoch, total_epochs,
                start_iter, rank, tb_log, ckpt_save_dir, train_sampler=None, ckpt_save_interval=1,
                max_ckpt_save_num=50, total_it_each_epoch=None, use_amp=False, device_type="cpu",
                ckpt_save_iter_interval=0, logger=None, amp_dtype=torch.float16):
    """Train epochs ``start_epoch .. total_epochs - 1``; rank 0 writes ``checkpoint_epoch_N.pth`` after epoch N
    (every ``ckpt_save_interval`` epochs and always after the last), keeping the newest ``max_ckpt_save_num``.

    ``start_iter`` is the global step to continue from; when it lies inside ``start_epoch`` (a mid-epoch
    ``latest_model.pth``) the batches already trained in that epoch are skipped. Returns the final step count.
    """
    if total_it_each_epoch is None:
        total_it_each_epoch = len(train_loader)
    if total_it_each_epoch <= 0:
        raise ValueError(f"train_model: nothing to train, {total_it_each_epoch} iterations per epoch")
    accumulated_iter = start_iter
    # loss scaling only for fp16; bf16 has fp32's exponent range
    scaler = torch.amp.GradScaler(device_type, enabled=use_amp and amp_dtype == torch.float16)
    tbar = None
    if rank == 0:
        tbar = tqdm.trange(start_epoch, total_epochs, desc="epochs", dynamic_ncols=True, leave=True)
    try:
        for cur_epoch in range(start_epoch, total_epochs):
            if train_sampler is not None and hasattr(train_sampler, "set_epoch"):
                train_sampler.set_epoch(cur_epoch)
            skip_iters = min(max(accumulated_iter - cur_epoch * total_it_each_epoch, 0), total_it_each_epoch)
            accumulated_iter = train_one_epoch(
                model, optimizer, train_loader, model_func, lr_scheduler=lr_scheduler,
                accumulated_iter=accumulated_iter, optim_cfg=optim_cfg, rank=rank, tbar=tbar,
                total_it_each_epoch=total_it_each_epoch, dataloader_iter=iter(train_loader), tb_log=tb_log,
                leave_pbar=(cur_epoch + 1 == total_epochs), cur_epoch=cur_epoch, scaler=scaler, use_amp=use_amp,
                device_type=device_type, amp_dtype=amp_dtype, skip_iters=skip_iters, ckpt_save_dir=ckpt_save_dir,
                ckpt_save_iter_interval=ckpt_save_iter_interval,
            )
            trained_epoch = cur_epoch + 1
            if rank == 0 and (trained_epoch % ckpt_save_interval == 0 or trained_epoch == total_epochs):
                path = checkpoint_utils.save_checkpoint(
                    checkpoint_utils.checkpoint_state(model, optimizer, trained_epoch, accumulated_iter,
                                                      total_it_each_epoch),
                    os.path.join(str(ckpt_save_dir), f"{checkpoint_utils.CKPT_PREFIX}{trained_epoch}.pth"),
                )
                checkpoint_utils.prune_checkpoints(ckpt_save_dir, max_ckpt_save_num)
                if logger is not None:
                    logger.info(f"saved {path} (epoch {trained_epoch}, iteration {accumulated_iter})")
            target = model.module if hasattr(model, "module") else model
            if rank == 0 and hasattr(target, "on_epoch_end"):
                target.on_epoch_end(trained_epoch, tb_log)  # e.g. the distiller's diagnostics, after the save
            if tbar is not None:
                tbar.update()
    finally:
        if tbar is not None:
            tbar.close()
    return accumulated_iter


def resume_state(ckpt_dir, explicit_ckpt=None, logger=None):
    """Checkpoint path to resume from: ``explicit_ckpt`` when given, else the most advanced complete one in
    ``ckpt_dir`` (None when there is none; unreadable ones are skipped with a warning on ``logger``)."""
    if explicit_ckpt:
        return str(explicit_ckpt)
    if ckpt_dir is None or not os.path.isdir(str(ckpt_dir)):
        return None
    return checkpoint_utils.find_resume_checkpoint(ckpt_dir, logger=logger)


def experiment_output_dir(cfg_file, extra_tag, output_root):
    """``output_root/<cfg path under cfgs/, without .yaml>/<extra_tag>`` (OpenPCDet's layout).

    A config outside any ``cfgs`` folder maps to ``output_root/<file stem>/<extra_tag>``.
    """
    path = os.path.abspath(str(cfg_file))
    parts = path.split(os.sep)
    stem = os.path.splitext(parts[-1])[0]
    group = []
    if "cfgs" in parts[:-1]:
        last = len(parts) - 2 - parts[:-1][::-1].index("cfgs")
        group = parts[last + 1:-1]
    return os.path.join(str(output_root), *group, stem, extra_tag)
