"""Forward-Forward (Hinton, "The Forward-Forward Algorithm: Some Preliminary Investigations", 2022).

Supervised FF with the label in the input. For unit l with input x_l (the RMS-normalised, detached output
of unit l-1; the label-embedded image for l = 1):

    h_l    = f_l(x_l)                                   (Linear + ReLU)
    G_l(h) = sum_j h_j^2                                (goodness)
    L_l    = softplus(theta_l - G_l(h+)) + softplus(G_l(h-) - theta_l)     (logistic loss, Hinton eq. 1)
    x_l+1  = h_l / sqrt(mean_j h_j^2)                   (RMS normalisation, no mean subtraction)

theta_l = threshold * D_l: after RMS normalisation ||x||^2 = D, so a mean-square threshold of 1 is the
matching scale (research notes, anchors_ff_mf.md section 1a: threshold and normaliser must agree).
Positive data: the image with its true label one-hot in the first num_classes inputs. Negative data: the
same image with a wrong label drawn uniformly from the *other* classes (never the true one), or, with
``negatives="hard"``, drawn in proportion to the readout's probabilities of the wrong classes.

Prediction, selectable and named in results:
- ``goodness``: for each class c, embed c and sum the goodness of every unit but the first; argmax over c
  (one pass per class, Hinton's better mode).
- ``readout``: one pass with the neutral label (1/num_classes in each label input); a linear softmax
  classifier on the normalised activities of units 2..L, trained alongside on detached inputs.

Options of loeweX/Forward-Forward, off by default (research notes, anchors_ff_mf.md section 1):
- ``peer_normalisation`` (0.03 there): each unit's loss gains weight * mean_j (mean(r) - r_j)^2, where r is
  a running mean (momentum 0.9, from 0.5) of each feature's activity on positive data, so that no feature
  stays silent or dominates;
- ``init="loewex"``: weights N(0, 1 / sqrt(out_features)), zero biases;
- its linear learning-rate cool-down over the second half is ``lr_schedule=linear_cooldown``, shared by
  every rule.

Schedule: ``interleaved`` (every unit on every batch, as loeweX/Forward-Forward) or ``greedy`` (one unit at
a time to its stopping point, then frozen). Validation loss is meaningless for FF (goodness sums are not
logits), so stop on validation accuracy. The network's last child (a class-score head) is not used: FF's
class scores come from goodness or from the readout, which the algorithm owns.

Activations: goodness is a sum of squares, which reads a unit's activity as evidence only when the activity
cannot be negative (a tanh unit at -1 would count as much as one at +1; on MNIST such a network trained to
below chance). So the units' activations must be non-negative: ReLU (Hinton's), ReLU6, Softplus or Sigmoid;
any other activation is refused.

Layer-parallel runs (localearn.parallel) split the interleaved schedule's units over processes: stage 1
embeds the labels and draws the negatives, and each stage sends its last unit's normalised output on.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .base import Algorithm, ParameterGroups
from .config import OptimizerConfig, check_choice, check_positive
from .units import units_of


@dataclasses.dataclass
class ForwardForwardConfig(OptimizerConfig):
    threshold: float = 1.0  # mean-square goodness threshold: theta_l = threshold * width of unit l
    negatives: str = "random"  # random | hard
    prediction: str = "goodness"  # goodness | readout
    schedule: str = "interleaved"  # interleaved | greedy
    readout_lr: float = 1e-3
    peer_normalisation: float = 0.0  # weight of loeweX's peer-normalisation loss (0.03 there); 0: off
    init: str = "torch"  # torch: nn.Linear's own | loewex: N(0, 1 / sqrt(out_features)), zero biases

    def __post_init__(self) -> None:
        super().__post_init__()
        check_positive("threshold", self.threshold)
        check_positive("readout_lr", self.readout_lr)
        check_positive("peer_normalisation", self.peer_normalisation, allow_zero=True)
        check_choice("init", self.init, ("torch", "loewex"))
        check_choice("negatives", self.negatives, ("random", "hard"))
        check_choice("prediction", self.prediction, ("goodness", "readout"))
        check_choice("schedule", self.schedule, ("interleaved", "greedy"))


PEER_MOMENTUM = 0.9  # loeweX's running mean of each feature's activity
PEER_START = 0.5  # and where it starts

# Activations whose output is never negative: the only ones goodness (a sum of squares) can read.
GOODNESS_ACTIVATIONS = (nn.ReLU, nn.ReLU6, nn.Softplus, nn.Sigmoid)


def rms_normalise(x: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """x / sqrt(mean(x^2)) per example, so that sum(x^2) equals the width."""
    return x / (x.pow(2).mean(1, keepdim=True).sqrt() + eps)


def ff_loss(goodness_pos: torch.Tensor, goodness_neg: torch.Tensor, theta: float) -> torch.Tensor:
    """Hinton's logistic loss: positives above theta, negatives below, averaged over the batch."""
    return (F.softplus(theta - goodness_pos) + F.softplus(goodness_neg - theta)).mean()


class ForwardForward(Algorithm):
    name = "forward_forward"
    Config = ForwardForwardConfig
    convolutional = False
    monitors = ("val_accuracy",)
    monitor_note = (
        "FF's validation loss is not meaningful (goodness sums are not logits): it stops on accuracy"
    )

    def __init__(self, net: nn.Module, num_classes: int, **kwargs: Any) -> None:
        super().__init__(net, num_classes, **kwargs)
        children = units_of(net, self.name)
        self.units = children[:-1] if len(children) > 1 else children
        linears: list[nn.Linear] = []  # the one Linear of each unit
        spatial = (nn.modules.conv._ConvNd, nn.modules.pooling._MaxPoolNd, nn.modules.pooling._AvgPoolNd)
        for i, unit in enumerate(self.units):
            bad = [type(m).__name__ for m in unit.modules() if isinstance(m, spatial)]
            found = [m for m in unit.modules() if isinstance(m, nn.Linear)]
            if bad or len(found) != 1:
                raise ValueError(
                    "forward_forward needs units of one nn.Linear and an activation (an MLP such as "
                    f"localearn.models.mlp); unit {i + 1} has "
                    f"{', '.join(bad) or f'{len(found)} Linear layers'}"
                )
            negative = [
                type(m).__name__
                for m in unit.modules()
                if type(m).__module__ == nn.modules.activation.__name__
                and not isinstance(m, GOODNESS_ACTIVATIONS)
            ]
            if negative:
                raise ValueError(
                    "forward_forward needs activations that are never negative (goodness is a sum of "
                    f"squares); unit {i + 1} has {negative[0]}. Use one of: "
                    f"{', '.join(a.__name__ for a in GOODNESS_ACTIVATIONS)} (mlp:...:relu, the default)"
                )
            linears += found
        if linears[0].in_features < num_classes:
            raise ValueError(
                f"the input has {linears[0].in_features} features, fewer than {num_classes} labels"
            )
        widths = [m.out_features for m in linears]
        if self.config.init == "loewex":
            for linear in linears:
                nn.init.normal_(linear.weight, std=linear.out_features**-0.5)
                if linear.bias is not None:
                    nn.init.zeros_(linear.bias)
        if self.config.peer_normalisation > 0:  # buffers in aux: checkpointed and restored with the rule
            self.aux["peer_means"] = nn.Module()
            for i, width in enumerate(widths):
                self.aux["peer_means"].register_buffer(
                    f"unit{i + 1}", torch.full((width,), PEER_START, device=self.device)
                )
        self.thetas = [self.config.threshold * w for w in widths]
        # Goodness and the readout use units 2..L (Hinton); a one-unit network has only unit 1.
        self.scored = list(range(1, len(self.units))) if len(self.units) > 1 else [0]
        self.readout = nn.Linear(sum(widths[i] for i in self.scored), num_classes).to(self.device)
        nn.init.zeros_(self.readout.weight)  # as loeweX: the classifier starts from zero
        nn.init.zeros_(self.readout.bias)
        self.aux["readout"] = self.readout
        self.num_stages = len(self.units) if self.config.schedule == "greedy" else 1
        self.optimizers = self.optimizers_for_stage(0)

    def optimizers_for_stage(self, stage: int) -> list[torch.optim.Optimizer]:
        units = [self.units[stage]] if self.config.schedule == "greedy" else self.units
        return [
            self.make_optimizer([p for unit in units for p in unit.parameters()]),
            self.make_optimizer(self.readout.parameters(), lr=self.config.readout_lr),
        ]

    def parameter_groups(self) -> ParameterGroups:
        # The readout learns from every unit's (detached) activity; the network's head is not used.
        return ParameterGroups(
            {f"unit{i + 1}": list(u.parameters()) for i, u in enumerate(self.units)},
            shared={"readout": list(self.readout.parameters())},
        )

    # -- the rule, in order: embed labels, run units with detached normalised inputs, local losses ---------
    def embed(self, x: torch.Tensor, labels: torch.Tensor | None) -> torch.Tensor:
        """Flatten and put a one-hot label (or the neutral label for None) in the first num_classes inputs."""
        x = x.flatten(1).clone()
        if labels is None:
            x[:, : self.num_classes] = 1.0 / self.num_classes
        else:
            x[:, : self.num_classes] = F.one_hot(labels, self.num_classes).to(x.dtype)
        return x

    def wrong_labels(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """A label other than y for every example: uniform over the others, or hard (readout's beliefs).
        Drawn from the rule's training generator, on the device."""
        if self.config.negatives == "hard":
            # The floor keeps every wrong label drawable even where the readout is sure and right.
            with torch.no_grad():
                probs = torch.softmax(self._readout_logits(x), 1) + 1e-6
            probs[torch.arange(len(y), device=y.device), y] = 0.0
            return torch.multinomial(probs, 1, generator=self.generator).squeeze(1)
        shift = torch.randint(1, self.num_classes, (len(y),), generator=self.generator, device=y.device)
        return (y + shift) % self.num_classes

    def activities(self, x: torch.Tensor, upto: int | None = None) -> list[torch.Tensor]:
        """Each unit's output (no grad), every unit fed the RMS-normalised output of the one before."""
        out, a = [], rms_normalise(x)
        with torch.no_grad():
            for unit in self.units[:upto]:
                out.append(unit(a))
                a = rms_normalise(out[-1])
        return out

    def pipeline_input(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Positives and negatives go through together: one batch of twice the size, normalised."""
        return rms_normalise(torch.cat([self.embed(x, y), self.embed(x, self.wrong_labels(x, y))]))

    def train_step(self, x: torch.Tensor, y: torch.Tensor) -> dict[str, torch.Tensor]:
        greedy = self.config.schedule == "greedy"
        trainable = range(self.stage, self.stage + 1) if greedy else range(len(self.units))
        a = self.pipeline_input(x, y)
        with torch.no_grad():  # the frozen units of a greedy schedule
            for unit in self.units[: trainable.start]:
                a = rms_normalise(unit(a))
        _, stats = self.train_units(a, y, trainable)
        stats["loss"] = self.step_loss(stats)
        # The one-pass readout learns alongside, on detached activities of the neutral-label pass, but only
        # where something uses it: a classifier trained and never used is a hidden cost (research notes 1d).
        if self.config.prediction == "readout" or self.config.negatives == "hard":
            readout_opt = self.optimizers[1]
            readout_loss = F.cross_entropy(self._readout_logits(x), y)
            readout_opt.zero_grad(set_to_none=True)
            readout_loss.backward()
            readout_opt.step()
            stats["readout_loss"] = readout_loss.detach()
        return stats

    def train_units(
        self, a: torch.Tensor, y: torch.Tensor, units: range
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Units ``units`` on ``a`` (positives, then as many negatives as ``y`` has labels)."""
        stats: dict[str, torch.Tensor] = {}
        total = 0.0
        for i in units:
            h = self.units[i](a.detach())  # the unit boundary: no gradient reaches earlier units
            goodness = h.pow(2).sum(1)
            loss = ff_loss(goodness[: len(y)], goodness[len(y) :], self.thetas[i])
            stats[f"loss_unit{i + 1}"] = loss.detach()
            if self.config.peer_normalisation > 0:
                loss = loss + self.config.peer_normalisation * self.peer_loss(i, h[: len(y)])
            total = total + loss
            a = rms_normalise(h)
        unit_opt = self.optimizers[0]
        unit_opt.zero_grad(set_to_none=True)
        total.backward()  # the graphs are cut at every unit input, so each unit gets its own gradient only
        unit_opt.step()  # units outside ``units`` have no gradient: the optimizer leaves them as they are
        return a.detach(), stats

    def step_loss(self, stats: dict[str, torch.Tensor]) -> torch.Tensor:
        """The mean of the trained units' FF losses (without peer normalisation's term)."""
        losses = [v for k, v in stats.items() if k.startswith("loss_unit")]
        return sum(losses) / len(losses)

    def parallel_refusal(self) -> str | None:
        if self.config.schedule == "greedy":
            return "schedule=greedy trains one unit at a time; layer-parallel runs need interleaved"
        if self.config.prediction == "readout" or self.config.negatives == "hard":
            return (
                "the readout (prediction=readout, or negatives=hard, which draws negatives from it) learns "
                "from every unit's activity at once; layer-parallel runs need prediction=goodness and "
                "negatives=random"
            )
        return None

    def pipeline_units(self) -> list[nn.Module]:
        """Each unit with its running peer mean (the same tensor as aux's, so loading one loads the other)."""
        holders = []
        for i, unit in enumerate(self.units):
            holder = nn.Module()
            holder.unit = unit
            if self.config.peer_normalisation > 0:
                holder.register_buffer("peer_mean", getattr(self.aux["peer_means"], f"unit{i + 1}"))
            holders.append(holder)
        return holders

    def peer_loss(self, i: int, positive_activity: torch.Tensor) -> torch.Tensor:
        """loeweX's peer normalisation of unit i: the running mean takes this batch's mean activity per
        feature (the gradient flows through this batch's share only), and the loss is the spread of the
        features' running means about their mean. Updates the running mean."""
        running = getattr(self.aux["peer_means"], f"unit{i + 1}")
        mean = PEER_MOMENTUM * running + (1 - PEER_MOMENTUM) * positive_activity.mean(0)
        running.copy_(mean.detach())
        return (mean.mean() - mean).pow(2).mean()

    def _readout_logits(self, x: torch.Tensor) -> torch.Tensor:
        acts = self.activities(self.embed(x, None))
        return self.readout(torch.cat([rms_normalise(acts[i]) for i in self.scored], 1))

    @torch.no_grad()
    def predict(self, x: torch.Tensor) -> torch.Tensor:
        if self.config.prediction == "readout":
            return self._readout_logits(x)
        # Goodness per label; while a greedy stage runs, only the units trained so far count.
        upto = self.stage + 1 if self.config.schedule == "greedy" else len(self.units)
        counted = [i for i in self.scored if i < upto] or [upto - 1]
        scores = torch.empty(len(x), self.num_classes, device=x.device)
        for c in range(self.num_classes):
            labels = torch.full((len(x),), c, dtype=torch.long, device=x.device)
            acts = self.activities(self.embed(x, labels), upto=upto)
            scores[:, c] = sum(acts[i].pow(2).sum(1) for i in counted)
        return scores

    @classmethod
    def search_space(cls, trial: Any, config: Any) -> dict[str, Any]:
        # Around loeweX's and Spyra's Adam settings (lr 1e-3 and 3e-4; readout 1e-2).
        return {
            "lr": trial.suggest_float("lr", 2e-4, 5e-3, log=True),
            "weight_decay": trial.suggest_float("weight_decay", 1e-6, 1e-3, log=True),
            "readout_lr": trial.suggest_float("readout_lr", 2e-3, 5e-2, log=True),
        }
