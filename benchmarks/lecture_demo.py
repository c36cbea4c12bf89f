"""The lecture's two demos as one script each, the way the slides write them: the baseline that
`benchmarks/whole_command.py` times `python -m sweeplab.train experiment=lecture_*` against.

    python benchmarks/lecture_demo.py synthetic --out /tmp/lecture   # demo 1: 2000 epochs
    python benchmarks/lecture_demo.py mnist --out /tmp/lecture       # demo 2: 20 epochs

Steps 1-5 of the slides: the arrays as tensors in a TensorDataset and a DataLoader (batch 100,
shuffled), the Net of the slides (sigmoid hidden units; a sigmoid output and BCELoss for the
binary task, logits and CrossEntropyLoss for MNIST), torch.optim.Adam, the epoch loop recording
the loss and accuracy of every epoch, then the pictures the slides draw (performance vs. epoch;
for demo 1 the decision region and the hidden units), saved as PNG files, and the test accuracy.
It uses the same data as sweeplab: the synthetic task drawn the same way, MNIST from the cache
that `make data` writes. Only torch, numpy and matplotlib: no sweeplab.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn as nn  # noqa: E402
import torch.optim as optim  # noqa: E402
import torch.utils.data  # noqa: E402

QUADRILATERAL = np.array([[0.2, 0.25], [0.75, 0.15], [0.85, 0.7], [0.35, 0.85]])
MNIST_CACHE = Path(__file__).resolve().parents[1] / "data" / "mnist" / "mnist.npz"


class Net(nn.Module):
    def __init__(self, nin: int, nh: int, nout: int, output_sigmoid: bool) -> None:
        super().__init__()
        self.activation = nn.Sigmoid()
        self.Dense1 = nn.Linear(nin, nh)
        self.Dense2 = nn.Linear(nh, nout)
        self.output_sigmoid = output_sigmoid

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.activation(self.Dense1(x))
        out = self.Dense2(x)
        return self.activation(out) if self.output_sigmoid else out


def synthetic_data() -> tuple[np.ndarray, ...]:
    """sweeplab's data=synthetic (seed 0): 2000 train, 500 val, 1000 test points."""
    rng = np.random.default_rng(0)
    x = rng.uniform(0.0, 1.0, size=(3500, 2))
    corners, following = QUADRILATERAL, np.roll(QUADRILATERAL, -1, axis=0)
    rel = x[:, None, :] - corners[None]
    edges = following - corners
    cross = edges[None, :, 0] * rel[:, :, 1] - edges[None, :, 1] * rel[:, :, 0]
    y = np.all(cross >= 0, axis=1)
    y = np.where(rng.uniform(size=3500) < 0.0, ~y, y).astype(np.float32)
    return x[:2000].astype(np.float32), y[:2000], x[2500:].astype(np.float32), y[2500:]


def mnist_data() -> tuple[np.ndarray, ...]:
    """The first 50,000 official training images and the 10,000 test images, pixels in [0,1]."""
    arrays = np.load(MNIST_CACHE)
    x = arrays["train_images"][:50000].reshape(50000, -1).astype(np.float32) / 255
    x_test = arrays["test_images"].reshape(10000, -1).astype(np.float32) / 255
    return x, arrays["train_labels"][:50000].astype(np.int64), x_test, arrays["test_labels"]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("demo", choices=["synthetic", "mnist"])
    parser.add_argument("--out", type=Path, default=Path("."))
    parser.add_argument("--epochs", type=int, default=None)
    args = parser.parse_args(argv)
    binary = args.demo == "synthetic"
    X, y, X_test, y_test = synthetic_data() if binary else mnist_data()
    num_epoch = args.epochs or (2000 if binary else 20)
    nh, lr = (4, 0.01) if binary else (100, 1e-3)
    args.out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)

    # 1) dataset and dataloader
    X_torch = torch.Tensor(X)
    y_torch = torch.Tensor(y) if binary else torch.from_numpy(y)
    dataset = torch.utils.data.TensorDataset(X_torch, y_torch)
    loader = torch.utils.data.DataLoader(dataset, batch_size=100, shuffle=True)
    # 2) the network; 3) optimizer and loss criterion
    model = Net(nin=X.shape[1], nh=nh, nout=1 if binary else 10, output_sigmoid=binary)
    opt = optim.Adam(model.parameters(), lr=lr)
    criterion = nn.BCELoss() if binary else nn.CrossEntropyLoss()
    # 4) fit the network parameters
    avg_loss = np.zeros([num_epoch])
    avg_acc = np.zeros([num_epoch])
    for epoch in range(num_epoch):
        error = 0
        total = 0
        batch_loss = []
        for _batch, data in enumerate(loader):
            x_batch, y_batch = data
            if binary:
                y_batch = y_batch.view(-1, 1)
            out = model(x_batch)
            loss = criterion(out, y_batch)
            batch_loss.append(loss.item())
            opt.zero_grad()
            loss.backward()
            opt.step()
            guess = out.round() if binary else out.argmax(1)
            error += torch.sum(guess != y_batch)
            total += len(y_batch)
        acc = 100 * (1 - error / total)
        avg_loss[epoch] = np.mean(batch_loss)
        avg_acc[epoch] = acc
    # 5) apply the network: its pictures and its test accuracy
    draw_performance(avg_loss, avg_acc, args.out / "performance.png")
    if binary:
        draw_demo_pictures(model, X, y, nh, args.out)
    with torch.no_grad():
        out = model(torch.Tensor(X_test))
        guess = out.round()[:, 0] if binary else out.argmax(1)
        test_acc = (guess.numpy() == y_test).mean()
    print(f"lecture {args.demo}: {num_epoch} epochs, test accuracy {test_acc:.4f}")


def draw_performance(avg_loss: np.ndarray, avg_acc: np.ndarray, path: Path) -> None:
    fig = plt.figure(figsize=(10, 4))
    plt.subplot(1, 2, 1)
    plt.semilogy(avg_loss)
    plt.xlabel("epoch")
    plt.ylabel("loss")
    plt.subplot(1, 2, 2)
    plt.plot(avg_acc)
    plt.xlabel("epoch")
    plt.ylabel("accuracy")
    fig.savefig(path)
    plt.close(fig)


def draw_demo_pictures(model: Net, X: np.ndarray, y: np.ndarray, nh: int, out: Path) -> None:
    """The decision region and the hidden units over [0,1]^2, as the slides draw them."""
    nplot = 100
    x0plot = np.linspace(0, 1, nplot)
    x1plot = np.linspace(0, 1, nplot)
    x0mat, x1mat = np.meshgrid(x0plot, x1plot)
    Xplot = np.column_stack([x0mat.ravel(), x1mat.ravel()])
    Xplot_tensor = torch.Tensor(Xplot)
    aOplot = model(Xplot_tensor).detach().numpy()
    aOplot_mat = aOplot[:, 0].reshape((nplot, nplot))
    fig = plt.figure()
    plt.imshow(np.flipud(aOplot_mat), extent=[0, 1, 0, 1])
    plt.colorbar()
    I0 = np.where(y == 0)[0]
    I1 = np.where(y == 1)[0]
    plt.plot(X[I0, 0], X[I0, 1], "bo")
    plt.plot(X[I1, 0], X[I1, 1], "go")
    plt.xlabel("$x_0$", fontsize=16)
    plt.ylabel("$x_1$", fontsize=16)
    plt.title("aO")
    fig.savefig(out / "decision_region.png")
    plt.close(fig)

    ahid = model.activation(model.Dense1(Xplot_tensor))
    ahid_plot = ahid.detach().numpy().reshape((nplot, nplot, nh))
    state_dict = model.state_dict()
    Wo = state_dict["Dense2.weight"]
    fig = plt.figure(figsize=(10, 4))
    for i in range(nh):
        plt.subplot(1, nh, i + 1)
        im = plt.imshow(np.flipud(ahid_plot[:, :, i]), extent=[0, 1, 0, 1])
        plt.xticks([])
        plt.yticks([])
        plt.xlabel("$x_0$", fontsize=16)
        plt.ylabel("$x_1$", fontsize=16)
        plt.title(f"aH{i:d}, wO{i:d}={Wo[0, i]:4.2f}")
    fig.subplots_adjust(right=0.85)
    cbar_ax = fig.add_axes([0.9, 0.30, 0.05, 0.4])
    fig.colorbar(im, cax=cbar_ax)
    fig.savefig(out / "hidden_units.png")
    plt.close(fig)


if __name__ == "__main__":
    main(sys.argv[1:])
