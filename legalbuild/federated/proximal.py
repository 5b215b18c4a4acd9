"""FedProx's silo side: TRL's SFTTrainer with the proximal term mu/2 ||w - w_global||^2 over the
trainable (LoRA) parameters added to the loss (Li et al. 2020). mu = 0 is the plain trainer."""

from __future__ import annotations

from typing import Any


def proximal_trainer(mu: float) -> Any:
    from trl import SFTTrainer

    if mu <= 0:
        return SFTTrainer

    class ProximalSFTTrainer(SFTTrainer):
        anchor: dict[str, Any] | None = None

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            out = super().compute_loss(model, inputs, return_outputs=return_outputs, num_items_in_batch=num_items_in_batch)  # fmt: skip
            trainable = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
            if self.anchor is None:  # the global adapter this round started from
                self.anchor = {n: p.detach().clone() for n, p in trainable}
            proximal = sum(((p - self.anchor[n]) ** 2).sum() for n, p in trainable)
            loss = (out[0] if return_outputs else out) + mu / 2 * proximal
            return (loss, out[1]) if return_outputs else loss

    return ProximalSFTTrainer
