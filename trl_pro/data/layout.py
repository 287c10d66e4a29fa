"""Which scored tokens belong to which candidate of which prompt, in rank order.

The layout is explicit so the loss core does not rely on tensor shapes: a batch can mix ranking lengths, and a
shared-prompt forward (each prompt computed once for all of its candidates) only has to produce the same layout.
"""

from dataclasses import dataclass

import torch


@dataclass
class RankingLayout:
    """Compressed (CSR-style) description of a batch of rankings.

    Attributes:
        token_offsets: [C + 1] int64. The scored tokens of candidate c are rows `token_offsets[c]:token_offsets[c+1]`
            of the flat token tensors (hidden states, targets); every candidate has at least one token.
        ranking_offsets: [B + 1] int64. The candidates of prompt b are `ranking_offsets[b]:ranking_offsets[b+1]`,
            ordered best to worst; every ranking has at least two candidates.
        sft_candidate: [B] int64, the (global) candidate whose NLL is the SFT term of prompt b.
    """

    token_offsets: torch.Tensor
    ranking_offsets: torch.Tensor
    sft_candidate: torch.Tensor

    @property
    def num_prompts(self) -> int:
        return self.ranking_offsets.numel() - 1

    @property
    def num_candidates(self) -> int:
        return self.token_offsets.numel() - 1

    def token_counts(self) -> torch.Tensor:
        """[C] number of scored tokens of each candidate."""
        return self.token_offsets[1:] - self.token_offsets[:-1]

    def ranking_lengths(self) -> torch.Tensor:
        """[B] number of candidates of each prompt."""
        return self.ranking_offsets[1:] - self.ranking_offsets[:-1]

    def token_candidate(self) -> torch.Tensor:
        """[T] candidate index of each scored token."""
        counts = self.token_counts()
        return torch.repeat_interleave(torch.arange(counts.numel(), device=counts.device), counts)

    def padded_index(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Index [B, n_max] into the candidate dimension and its mask (False for padding), for `to_padded`."""
        lengths = self.ranking_lengths()
        n_max = int(lengths.max()) if lengths.numel() else 0
        rank = torch.arange(n_max, device=lengths.device)
        mask = rank[None, :] < lengths[:, None]
        index = (self.ranking_offsets[:-1, None] + rank[None, :]).masked_fill(~mask, 0)
        return index, mask

    def to_padded(self, per_candidate: torch.Tensor, fill: float = 0.0) -> tuple[torch.Tensor, torch.Tensor]:
        """[C, ...] per-candidate values -> ([B, n_max, ...] in rank order, [B, n_max] candidate mask)."""
        index, mask = self.padded_index()
        padded = per_candidate[index]
        shape = mask.shape + (1,) * (padded.dim() - 2)
        return padded.masked_fill(~mask.view(shape), fill), mask

    def to(self, device: torch.device | str) -> "RankingLayout":
        return RankingLayout(
            self.token_offsets.to(device), self.ranking_offsets.to(device), self.sft_candidate.to(device)
        )
