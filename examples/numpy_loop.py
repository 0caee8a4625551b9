"""Record a plain numpy training loop, then read the record back.

Softmax regression on scikit-learn's bundled digits (no download) when scikit-learn is
installed, else on a synthetic problem; only numpy, h5py and recordkit are needed.

    python examples/numpy_loop.py --root records
"""

from __future__ import annotations

import argparse

import numpy as np

import recordkit as rk


def load_data(seed: int) -> tuple[np.ndarray, np.ndarray]:
    try:
        from sklearn.datasets import load_digits
    except ImportError:
        rng = np.random.default_rng(seed)
        x = rng.standard_normal((600, 64))
        return x, (x[:, :10].argmax(axis=1))
    digits = load_digits()
    return digits.data / 16.0, digits.target


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", default="records")
    parser.add_argument("--lr", type=float, default=0.5)
    parser.add_argument("--epochs", type=int, default=15)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    x, y = load_data(args.seed)
    rng = np.random.default_rng(args.seed)
    order = rng.permutation(len(x))
    split = int(0.8 * len(x))
    train, val = order[:split], order[split:]
    w = np.zeros((x.shape[1], 10), dtype=np.float32)
    b = np.zeros(10, dtype=np.float32)

    def forward(idx: np.ndarray) -> tuple[np.ndarray, float, float]:
        logits = x[idx] @ w + b
        logits -= logits.max(axis=1, keepdims=True)
        p = np.exp(logits)
        p /= p.sum(axis=1, keepdims=True)
        loss = float(-np.log(p[np.arange(len(idx)), y[idx]] + 1e-12).mean())
        return p, loss, float((p.argmax(axis=1) == y[idx]).mean())

    params = {k: v for k, v in vars(args).items() if k != "root"}
    with rk.Recorder(args.root, experiment="numpy-digits", name=f"softmax-lr{args.lr}",
                     params=params) as rec:
        for epoch in range(args.epochs):
            p, loss, acc = forward(train)
            grad = p
            grad[np.arange(len(train)), y[train]] -= 1
            grad /= len(train)
            w -= args.lr * (x[train].T @ grad).astype(np.float32)
            b -= args.lr * grad.sum(axis=0).astype(np.float32)
            _, val_loss, val_acc = forward(val)
            rec.log({"loss": loss, "accuracy": acc, "val_loss": val_loss,
                     "val_accuracy": val_acc}, epoch=epoch)
            rec.snapshot({"w": w, "b": b}, epoch=epoch)
            rec.commit()

    r = rk.load(rec.run_id, root=args.root)
    print(f"recorded {r.run_id} ({r.status}) at {r.path}")
    print(f"  params: {r.params}")
    print(f"  epochs: {len(r.epochs)}, snapshots: {r.snapshot_epochs}")
    print(f"  final val_accuracy: {r.history['val_accuracy'][-1]:.3f}")
    moved = [float(np.linalg.norm(r.weight("w")[i] - r.weight("w")[i - 1]))
             for i in range(1, len(r.snapshot_epochs))]
    print(f"  how far w moved per epoch: {[round(m, 3) for m in moved]}")


if __name__ == "__main__":
    main()
