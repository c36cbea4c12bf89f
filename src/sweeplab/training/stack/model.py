"""Many 2-layer networks trained as one wide network: the members of a stack.

Member m is the lecture's network x -> h_m(W_H,m x + b_H,m) -> W_O,m a_H,m + b_O,m with its own
width d_H,m and activation h_m. The stack computes all of them at once: the hidden layers are
concatenated (H = the sum of the widths: one matrix product for every member) and each member's
outputs see only its own hidden units, so a step of M small networks costs about as many kernel
calls as a step of one. Small networks are overhead-bound: that is the whole point.

    layout = StackLayout(d_in=2, d_out=1, widths=(4, 8), activations=("sigmoid", "relu"))
    net = StackedNet(layout, "binary", [pieces_of_member_0, pieces_of_member_1])
    logits = net.forward(x)                     # (B, M * d_out)
    net.step_gradients(x, y, logits)            # every member's gradients, into net.grad

Every parameter and gradient lives in one flat buffer (`net.flat`, `net.grad`), so that an
optimizer updates all members with a few element-wise operations (`stack.optim`). The output
weights are kept per hidden unit (H x d_out: a unit's weights to its member's outputs), and
the output layer is computed one of two ways, whichever costs less for the stack's shape:
"dense", a block-diagonal (M*d_out x H) matrix and BLAS products, when the outputs are few
beside the inputs (M * d_out <= d_in, e.g. MNIST stacks), else "segment": each unit's
contribution, summed over its member's units (e.g. the synthetic task: d_out = 1, d_in = 2).
Members are laid out grouped by activation, so that each activation covers one contiguous range
of units; `split` and `join` take and give per-member pieces in the callers' order.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from types import ModuleType

import torch
import torch.nn.functional as F

from sweeplab.config import ACTIVATIONS
from sweeplab.training.fast.backprop import _ACTIVATION_BACKWARD, _ACTIVATION_FNS
from sweeplab.training.model import ACTIVATIONS as ACTIVATION_MODULES

Pieces = tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]  # W_H, b_H, W_O, b_O


@dataclass(frozen=True)
class StackLayout:
    """Where each member's parameters sit in the flat buffer of a stack."""

    d_in: int
    d_out: int
    widths: tuple[int, ...]  # d_H of each member, in the callers' order
    activations: tuple[str, ...]

    def __post_init__(self) -> None:
        # members grouped by activation: position p in the buffer holds member order[p]
        order = sorted(
            range(len(self.widths)), key=lambda m: ACTIVATIONS.index(self.activations[m])
        )
        starts, unit = {}, 0
        for member in order:
            starts[member] = unit
            unit += self.widths[member]
        object.__setattr__(self, "order", tuple(order))
        # member m's logits are the columns positions[m] * d_out ... + d_out of the stack's
        object.__setattr__(self, "positions", tuple(order.index(m) for m in range(len(order))))
        object.__setattr__(self, "starts", starts)

    @property
    def members(self) -> int:
        return len(self.widths)

    @property
    def units(self) -> int:
        return sum(self.widths)

    @property
    def sizes(self) -> tuple[int, int, int, int]:
        """The numbers of elements of W_H, b_H, W_O and b_O."""
        h = self.units
        return h * self.d_in, h, h * self.d_out, self.members * self.d_out

    @property
    def numel(self) -> int:
        return sum(self.sizes)

    @property
    def dense_output(self) -> bool:
        """Whether a block-diagonal output matrix costs less than per-unit sums (see above)."""
        return self.members * self.d_out <= self.d_in

    def hidden_range(self, member: int) -> slice:
        return slice(self.starts[member], self.starts[member] + self.widths[member])

    def output_range(self, member: int) -> slice:
        position = self.positions[member]
        return slice(position * self.d_out, (position + 1) * self.d_out)

    def activation_ranges(self) -> list[tuple[str, slice]]:
        """Each activation and the contiguous range of hidden units that use it."""
        ranges: list[tuple[str, slice]] = []
        for member in self.order:
            name, units = self.activations[member], self.hidden_range(member)
            if ranges and ranges[-1][0] == name:
                ranges[-1] = (name, slice(ranges[-1][1].start, units.stop))
            else:
                ranges.append((name, units))
        return ranges

    def views(self, flat: torch.Tensor) -> Pieces:
        """W_H (H, d_in), b_H (H,), W_O (H, d_out), b_O (M*d_out,) as views of `flat`. The
        weight matrices are stored input by input (d_in x H, d_out x H), so that a unit's
        neighbours sit next to it: the C++ loop runs over the units."""
        parts = flat.split(self.sizes)
        h = self.units
        w_h = parts[0].view(self.d_in, h).t()
        return w_h, parts[1], parts[2].view(self.d_out, h).t(), parts[3]

    def split(self, flat: torch.Tensor) -> list[Pieces]:
        """Each member's (W_H, b_H, W_O (d_out, d_H), b_O) as views of `flat`, callers' order."""
        w_h, b_h, w_o, b_o = self.views(flat)
        pieces = []
        for member in range(self.members):
            units, outputs = self.hidden_range(member), self.output_range(member)
            pieces.append((w_h[units], b_h[units], w_o[units].t(), b_o[outputs]))
        return pieces

    def join(self, pieces: list[Pieces]) -> torch.Tensor:
        """A flat buffer holding each member's pieces (as `split` gives them)."""
        like = pieces[0][0]
        flat = torch.empty(self.numel, dtype=like.dtype, device=like.device)
        for target, source in zip(self.split(flat), pieces, strict=True):
            for t, s in zip(target, source, strict=True):
                t.copy_(s)
        return flat

    def member_of_element(self, device: torch.device) -> torch.Tensor:
        """For every element of the flat buffer, the member it belongs to (callers' order)."""
        owner = torch.empty(self.numel, dtype=torch.long)
        for member, pieces in enumerate(self.split(owner)):
            for piece in pieces:
                piece.fill_(member)
        return owner.to(device)

    def member_starts(self) -> torch.Tensor:
        """(M + 1,): the first hidden unit of each position's member, and H."""
        starts = [self.starts[member] for member in self.order]
        return torch.tensor([*starts, self.units], dtype=torch.long)

    def unit_positions(self, device: torch.device) -> torch.Tensor:
        """(H,): the position of each hidden unit's member among the stack's outputs."""
        positions = torch.empty(self.units, dtype=torch.long)
        for member in range(self.members):
            positions[self.hidden_range(member)] = self.positions[member]
        return positions.to(device)

    def without(self, leaving: set[int]) -> StackLayout:
        """The layout of the members that stay, in their order."""
        staying = [m for m in range(self.members) if m not in leaving]
        return StackLayout(
            self.d_in,
            self.d_out,
            tuple(self.widths[m] for m in staying),
            tuple(self.activations[m] for m in staying),
        )


class StackedNet:
    """The members' parameters in one flat buffer, their forward pass and their gradients.

    `dropout` and `input_dropout` are each member's probabilities (0 = off); with any of them
    the gradients come from autograd, else from the lecture's equations (as `fast.backprop`)."""

    def __init__(
        self,
        layout: StackLayout,
        task: str,
        members: list[Pieces],
        dropout: list[float] | None = None,
        input_dropout: list[float] | None = None,
    ) -> None:
        self.layout = layout
        self.task = task
        self.flat = layout.join(members)
        self.grad = torch.zeros_like(self.flat)
        device, dtype = self.flat.device, self.flat.dtype
        self.dropout = list(dropout or [0.0] * layout.members)
        self.input_dropout = list(input_dropout or [0.0] * layout.members)
        self.autograd = any(self.dropout) or any(self.input_dropout)
        unit_dropout = torch.zeros(layout.units, dtype=dtype)
        for member, p in enumerate(self.dropout):
            unit_dropout[layout.hidden_range(member)] = p
        self._unit_dropout = unit_dropout.to(device)
        self._unit_positions = layout.unit_positions(device)
        # for the C++ loop: the members' and the activations' ranges of units, and the kinds
        self.member_starts = layout.member_starts()
        self.position_members = torch.tensor(layout.order)
        ranges = layout.activation_ranges()
        self.activation_starts = torch.tensor([u.start for _, u in ranges] + [layout.units])
        self.activation_kinds = torch.tensor([ACTIVATIONS.index(name) for name, _ in ranges])
        self._ranges = [
            (
                _ACTIVATION_FNS[ACTIVATION_MODULES[name]],
                _ACTIVATION_BACKWARD[ACTIVATION_MODULES[name]],
                units,
            )
            for name, units in layout.activation_ranges()
        ]
        if layout.dense_output:
            # where each per-unit output weight (unit, output) sits in the block-diagonal matrix
            unit = torch.arange(layout.units, device=device)[:, None]
            row = self._unit_positions[:, None] * layout.d_out + torch.arange(
                layout.d_out, device=device
            )
            self._dense_index = (row * layout.units + unit).view(-1)
            self._dense = torch.zeros(
                layout.members * layout.d_out, layout.units, dtype=dtype, device=device
            )

    def pieces(self) -> list[Pieces]:
        """Each member's (W_H, b_H, W_O, b_O), as views of the flat buffer."""
        return self.layout.split(self.flat.detach())

    def _activate(self, z_h: torch.Tensor) -> torch.Tensor:
        if len(self._ranges) == 1:
            return self._ranges[0][0](z_h)
        return torch.cat([forward(z_h[:, units]) for forward, _, units in self._ranges], 1)

    def _dense_weights(self, w_o: torch.Tensor) -> torch.Tensor:
        """The block-diagonal (M*d_out, H) output matrix made from the per-unit weights."""
        if w_o.requires_grad:  # autograd: a new matrix that the gradient flows through
            dense = torch.zeros_like(self._dense).view(-1)
            return dense.index_put((self._dense_index,), w_o.reshape(-1)).view_as(self._dense)
        self._dense.view(-1).index_copy_(0, self._dense_index, w_o.reshape(-1))
        return self._dense

    def _output(self, a_h: torch.Tensor, w_o: torch.Tensor, b_o: torch.Tensor) -> torch.Tensor:
        """(B, M*d_out) logits from the hidden activations, one of the two ways (see above)."""
        if self.layout.dense_output:
            return torch.addmm(b_o, a_h, self._dense_weights(w_o).t())
        batch, members, d_out = a_h.shape[0], self.layout.members, self.layout.d_out
        if d_out == 1:
            sums = torch.zeros(batch, members, dtype=a_h.dtype, device=a_h.device)
            return sums.index_add(1, self._unit_positions, a_h * w_o[:, 0]).add(b_o)
        sums = torch.zeros(batch, members, d_out, dtype=a_h.dtype, device=a_h.device)
        each = a_h[:, :, None] * w_o
        return sums.index_add(1, self._unit_positions, each).view(batch, -1).add(b_o)

    def forward(
        self, x: torch.Tensor, train: bool = False, loop: ModuleType | None = None
    ) -> torch.Tensor:
        """(B, M * d_out) logits; with `train`, each member's dropout applies (autograd); with
        `loop`, fast/stack_loop.cpp computes them (evaluation)."""
        if loop is not None and not train:
            logits = torch.empty(x.shape[0], self.layout.members * self.layout.d_out)
            loop.stack_logits(
                x.contiguous(),
                logits,
                self.flat,
                self.layout.d_out,
                self.member_starts,
                self.activation_starts,
                self.activation_kinds,
            )
            return logits
        w_h, b_h, w_o, b_o = self.layout.views(self.flat)
        if train and any(self.input_dropout):
            z_h = torch.cat(  # each member sees the inputs through its own dropout
                [
                    torch.addmm(b_h[units], F.dropout(x, p, training=True), w_h[units].t())
                    for p, units in self._member_units()
                ],
                1,
            )
        else:
            z_h = torch.addmm(b_h, x, w_h.t())
        a_h = self._activate(z_h)
        if train and any(self.dropout):
            keep = torch.rand_like(a_h) >= self._unit_dropout
            a_h = a_h * keep / (1 - self._unit_dropout)
        return self._output(a_h, w_o, b_o)

    def _member_units(self) -> list[tuple[float, slice]]:
        """(input dropout, hidden units) of each member, in the order of the buffer."""
        return [(self.input_dropout[m], self.layout.hidden_range(m)) for m in self.layout.order]

    def losses(self, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Each member's mean loss over the batch, (M,), in the order of the buffer (member m
        at `layout.positions[m]`)."""
        batch, members = logits.shape[0], self.layout.members
        if self.task == "binary":
            return F.binary_cross_entropy_with_logits(
                logits, y.expand(batch, members), reduction="none"
            ).mean(0)
        z = logits.view(batch, members, -1)
        if self.task == "multiclass":
            return F.cross_entropy(
                z.transpose(1, 2), y[:, None].expand(batch, members), reduction="none"
            ).mean(0)
        return (z - y[:, None, :]).square().mean((0, 2))

    def accuracies(self, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Each member's share of correct hard decisions, (M,), in the order of the buffer."""
        if self.task == "binary":
            return ((logits > 0).to(y.dtype) == y).to(logits.dtype).mean(0)
        z = logits.view(logits.shape[0], self.layout.members, -1)
        return (z.argmax(2) == y[:, None]).to(logits.dtype).mean(0)

    def step_gradients(self, x: torch.Tensor, y: torch.Tensor, logits: torch.Tensor) -> None:
        """One batch: every member's logits into `logits`, the gradients of its mean loss into
        `self.grad` (from autograd when a member drops units out, else by hand)."""
        if self.autograd:
            self.flat.requires_grad_(True)
            self.flat.grad = self.grad.zero_()
            with torch.enable_grad():
                out = self.forward(x, train=True)
                self.losses(out, y).sum().backward()
            logits.copy_(out.detach())
            self.flat.requires_grad_(False)
            return
        self._manual_gradients(x, y, logits)

    def _manual_gradients(self, x: torch.Tensor, y: torch.Tensor, logits: torch.Tensor) -> None:
        """The lecture's equations for all members at once (see fast.backprop.ManualBackprop)."""
        w_h, b_h, w_o, b_o = self.layout.views(self.flat)
        grad_w_h, grad_b_h, grad_w_o, grad_b_o = self.layout.views(self.grad)
        z_h = torch.addmm(b_h, x, w_h.t())
        a_h = self._activate(z_h)
        z_o = self._output(a_h, w_o, b_o)
        logits.copy_(z_o)
        d_zo = self._loss_gradient(z_o, y)
        d_ah = self._output_backward(d_zo, a_h, w_o, grad_w_o)
        if len(self._ranges) == 1:
            d_zh = self._ranges[0][1](d_ah, z_h, a_h)
        else:
            d_zh = torch.cat(
                [backward(d_ah[:, u], z_h[:, u], a_h[:, u]) for _, backward, u in self._ranges], 1
            )
        torch.sum(d_zo, 0, out=grad_b_o)
        torch.mm(x.t(), d_zh, out=grad_w_h.t())  # W_H is stored input by input
        torch.sum(d_zh, 0, out=grad_b_h)

    def _output_backward(
        self, d_zo: torch.Tensor, a_h: torch.Tensor, w_o: torch.Tensor, grad_w_o: torch.Tensor
    ) -> torch.Tensor:
        """dJ/dW_O into `grad_w_o`; returns dJ/dA_H (each unit hears its own member only)."""
        if self.layout.dense_output:
            dense = self._dense  # made by the forward pass of this step
            grad_dense = d_zo.t() @ a_h
            grad_w_o.copy_(grad_dense.view(-1)[self._dense_index].view_as(grad_w_o))
            return d_zo @ dense
        if self.layout.d_out == 1:
            per_unit = d_zo.index_select(1, self._unit_positions)  # (B, H)
            torch.sum(per_unit * a_h, 0, out=grad_w_o[:, 0])
            return per_unit * w_o[:, 0]
        batch = d_zo.shape[0]
        per_unit = d_zo.view(batch, self.layout.members, -1).index_select(1, self._unit_positions)
        grad_w_o.copy_(torch.einsum("bhc,bh->hc", per_unit, a_h))
        return torch.einsum("bhc,hc->bh", per_unit, w_o)

    def _loss_gradient(self, z_o: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """dJ/dZ_O of each member's mean loss: softmax - one-hot, sigmoid - y, 2(Z_O - Y)/BK."""
        batch, members = z_o.shape[0], self.layout.members
        if self.task == "binary":
            return torch.sigmoid(z_o).sub_(y).div_(batch)
        z = z_o.view(batch, members, -1)
        if self.task == "multiclass":
            index = y.view(batch, 1, 1).expand(batch, members, 1)
            minus_ones = _minus_ones((batch, members, 1), z.dtype, z.device)
            return (
                torch.softmax(z, 2).scatter_add_(2, index, minus_ones).div_(batch).view(batch, -1)
            )
        return (z - y[:, None, :]).mul_(2.0 / (batch * z.shape[2])).view(batch, -1)


@functools.lru_cache(maxsize=16)
def _minus_ones(shape: tuple[int, ...], dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """-1s, made once per shape: subtract the one-hot targets from the softmax in one scatter."""
    return torch.full(shape, -1.0, dtype=dtype, device=device)
