"""RowAdam: Adam for tables whose rows each belong to one user (TAP-PER's P_u).

A row gets gradient only on the steps whose batch holds its user. torch's Adam keeps one step count per
tensor, so a row's bias correction follows the global step: a user sampled on step 1 and again on step
500 has its second update corrected as if it were its 500th, and a user's update size depends on how
often the sampler happened to draw it. Momentum is worse still: Adam keeps moving a row on steps without
its user, by its stale first moment.

Here every row has its own step count and moments, and a step touches only the rows that got gradient:
for each row it is exactly the Adam update that row would get if it were trained alone on its own
batches. The learning rate comes from the param group, so the usual schedulers apply.
"""

from __future__ import annotations

import torch


class RowAdam(torch.optim.Optimizer):
    def __init__(self, params, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8):
        if lr < 0:
            raise ValueError(f"RowAdam: lr must be >= 0, got {lr}")
        super().__init__(params, {"lr": lr, "betas": betas, "eps": eps})

    @torch.no_grad()
    def step(self, closure=None):
        loss = None if closure is None else closure()
        for group in self.param_groups:
            beta1, beta2 = group["betas"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                table = p.view(-1, p.shape[-1]) if p.dim() > 1 else p.view(1, -1)
                grad = p.grad.view_as(table)
                state = self.state[p]
                if not state:
                    state["step"] = torch.zeros(table.shape[0], dtype=torch.float32, device=p.device)
                    state["exp_avg"] = torch.zeros_like(table, dtype=torch.float32)
                    state["exp_avg_sq"] = torch.zeros_like(table, dtype=torch.float32)
                # Rows outside the batch have an exactly zero gradient row: they are left as they are.
                rows = grad.ne(0).any(dim=1).nonzero().squeeze(1)
                if rows.numel() == 0:
                    continue
                g = grad.index_select(0, rows).float()
                step = state["step"].index_select(0, rows) + 1
                m = state["exp_avg"].index_select(0, rows).mul_(beta1).add_(g, alpha=1 - beta1)
                v = state["exp_avg_sq"].index_select(0, rows).mul_(beta2).addcmul_(g, g, value=1 - beta2)
                state["step"].index_copy_(0, rows, step)
                state["exp_avg"].index_copy_(0, rows, m)
                state["exp_avg_sq"].index_copy_(0, rows, v)
                m_hat = m / (1 - beta1 ** step)[:, None]
                v_hat = v / (1 - beta2 ** step)[:, None]
                update = group["lr"] * m_hat / (v_hat.sqrt() + group["eps"])
                table.index_copy_(0, rows, table.index_select(0, rows) - update.to(table.dtype))
        return loss
