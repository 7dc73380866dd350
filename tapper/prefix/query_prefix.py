"""P_q: attention over the user's top-k past records, with a learned time and order decay."""

from __future__ import annotations

import torch
from torch import nn


class QueryPrefix(nn.Module):
    def __init__(self, hidden: int, prefix_len: int, use_time_decay: bool = True, use_order_decay: bool = True):
        super().__init__()
        self.hidden = hidden
        self.prefix_len = prefix_len
        self.use_time_decay = use_time_decay
        self.use_order_decay = use_order_decay
        self.scorer = nn.Sequential(nn.Linear(4 * hidden, hidden), nn.GELU(), nn.Linear(hidden, 1))
        self.lambda_time = nn.Parameter(torch.tensor(0.1))
        self.lambda_order = nn.Parameter(torch.tensor(0.1))
        self.proj = nn.Linear(hidden, prefix_len * hidden)

    def attention(
        self,
        z_query: torch.Tensor,  # (B, d)
        z_records: torch.Tensor,  # (B, k, d)
        mask: torch.Tensor,  # (B, k) bool: a real record in this slot
        days_back: torch.Tensor,  # (B, k) days between record and query; NaN when either date is unknown
        steps_back: torch.Tensor,  # (B, k) 1 = the record just before the query
    ) -> torch.Tensor:
        zq = z_query[:, None, :].expand_as(z_records)
        feats = torch.cat([zq, z_records, zq - z_records, zq * z_records], dim=-1)
        scores = self.scorer(feats).squeeze(-1)
        if self.use_time_decay:
            # An undated record gets no time term (order decay still applies): never a silent zero for all.
            known = ~torch.isnan(days_back)
            decay = torch.log1p(torch.where(known, days_back.clamp_min(0), torch.zeros_like(days_back)))
            scores = scores - self.lambda_time * decay
        if self.use_order_decay:
            scores = scores - self.lambda_order * torch.log1p(steps_back.clamp_min(0))
        scores = scores.masked_fill(~mask, float("-inf"))
        weights = torch.softmax(scores, dim=-1)
        return torch.nan_to_num(weights, nan=0.0)  # a row without records attends to nothing

    def forward(
        self,
        z_query: torch.Tensor,
        z_records: torch.Tensor,
        mask: torch.Tensor,
        days_back: torch.Tensor,
        steps_back: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Returns the (B, L, d) prefix and the (B, k) attention weights."""
        weights = self.attention(z_query, z_records, mask, days_back, steps_back)
        pooled = torch.einsum("bk,bkd->bd", weights, z_records)
        prefix = self.proj(pooled).view(-1, self.prefix_len, self.hidden)
        has_records = mask.any(dim=-1).to(prefix.dtype)[:, None, None]
        return prefix * has_records, weights
