"""Train on synthetic, test on real (TSTR): a quality measure that uses no feature network.

Classifier-FID compares the evaluator CNN's features of generated and real images, so
it says as much about that network as about the images.  TSTR asks a plainer question
(Esteban et al. 2017; Ravuri & Vinyals 2019's "classification accuracy score"): a
classifier trained only on a peer's generated images, labelled, how well does it
classify the real test set?  A model that draws only some digits, or blurs them,
scores low whatever its FID.

Labels come from the evaluator (a generator of ours draws no labels); the classifier
itself is a small MLP on pixels, trained from a fixed seed for a fixed number of epochs,
so two runs that generate the same images get the same accuracy.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

HIDDEN = 256


def tstr_classifier(n_pixels: int, n_classes: int, seed: int) -> nn.Module:
    gen = torch.Generator().manual_seed(seed % 2**63)
    model = nn.Sequential(nn.Flatten(), nn.Linear(n_pixels, HIDDEN), nn.ReLU(),
                          nn.Linear(HIDDEN, n_classes))
    with torch.no_grad():  # initialised from our own stream: no global RNG involved
        for p in model.parameters():
            bound = 1.0 / max(1, p.shape[-1]) ** 0.5 if p.dim() > 1 else 0.01
            p.uniform_(-bound, bound, generator=gen)
    return model


def tstr_accuracy(images: torch.Tensor, labels: torch.Tensor, test_images: torch.Tensor,
                  test_labels: torch.Tensor, *, n_classes: int = 10, epochs: int = 5,
                  batch: int = 128, lr: float = 1e-3, seed: int = 0) -> float:
    """Accuracy on ``(test_images, test_labels)`` of an MLP trained on ``(images,
    labels)`` (float images in [0, 1], ``[n, 1, H, W]``; labels int ``[n]``)."""
    x = images.float().reshape(len(images), -1).cpu()
    y = torch.as_tensor(labels).long().reshape(-1).cpu()
    tx = test_images.float().reshape(len(test_images), -1).cpu()
    ty = torch.as_tensor(test_labels).long().reshape(-1).cpu()
    if len(x) == 0 or len(tx) == 0:
        return float("nan")
    model = tstr_classifier(x.shape[1], n_classes, seed)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    gen = torch.Generator().manual_seed((seed + 1) % 2**63)
    model.train()
    for _ in range(epochs):
        order = torch.randperm(len(x), generator=gen)
        for k in range(0, len(x), batch):
            idx = order[k:k + batch]
            opt.zero_grad(set_to_none=True)
            F.cross_entropy(model(x[idx]), y[idx]).backward()
            opt.step()
    model.eval()
    correct = 0
    with torch.no_grad():
        for k in range(0, len(tx), 2000):
            correct += int((model(tx[k:k + 2000]).argmax(1) == ty[k:k + 2000]).sum())
    return correct / len(tx)
