"""Evaluation shared by the image algorithms (the game, Diffusion GAN, centralized).

One evaluator CNN per data set is trained once by the launcher (``prepare``)
and cached under ``<data>/evaluators``; peers load it and compute
classifier-FID (all / own / other classes), the class histogram of their
generated images and, where a prediction exists, its distance to it.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from p2pgame.data.image import ImageDataSpec, load_split
from p2pgame.shared import shared


def evaluator_for(spec: ImageDataSpec, data_root: Path, epochs: int, log: Callable,
                  device: str = "cpu"):
    """The cached evaluator of the data set (trained on first use; one per process)."""
    from p2pgame.eval import get_evaluator

    tr_x, tr_y = load_split(spec, data_root, "train")
    te_x, te_y = load_split(spec, data_root, "test")

    def load():
        return get_evaluator(spec.dataset, tr_x, tr_y, te_x, te_y,
                             Path(data_root) / "evaluators", epochs=epochs, log=log,
                             device=device)

    # The loaded split tensors are shared objects: their identity pins the files' version.
    model, info = shared(("evaluator", spec.dataset, str(Path(data_root).resolve()), epochs,
                          str(device), id(tr_x), id(te_x)), load)
    return model, info, (te_x, te_y)


def prepare_evaluator(spec: ImageDataSpec, data_root: Path, epochs: int, log: Callable) -> None:
    """Launcher side: fail with one line if data is missing; train the evaluator once.

    One line per run says which evaluator scores it: get_evaluator's (loaded from its
    cache file, or trained and saved, after its training lines), or this one when the
    process holds it already (a sweep's later runs)."""
    said: list[str] = []

    def say(line: str) -> None:
        said.append(line)
        log(line)

    _, info, _ = evaluator_for(spec, data_root, epochs, say)
    if not said:
        log(f"evaluator {info['path']} (test accuracy {info['test_accuracy']:.4f}; "
            "loaded already)")


class ImageEvaluation:
    """Peer side: classifier-FID and class mass of generated images."""

    def __init__(self, spec: ImageDataSpec, data_root: Path, epochs: int, own_classes: list[int],
                 device: Any = "cpu", binarize_test: bool = True) -> None:
        self.spec = spec
        self.data_root = Path(data_root)
        self.epochs = epochs
        self.own_classes = list(own_classes)
        self.device = device
        self.binarize_test = binarize_test  # False for grey-level generators (GANs)
        self._fid = None
        self._test_images = None
        self.info: dict[str, Any] = {}

    def tool(self):
        if self._fid is None:
            from p2pgame.eval import ClassifierFID

            model, self.info, (te_x, te_y) = evaluator_for(
                self.spec, self.data_root, self.epochs, lambda m: None, device=self.device)
            # The test features are the same for every peer of the process: computed once.
            self._fid = shared(("classifier-fid", id(model), id(te_x), self.binarize_test),
                               lambda: ClassifierFID(model, te_x, te_y,
                                                     binarize_test=self.binarize_test))
            self._test_images = te_x
        return self._fid

    def metrics(self, images) -> dict[str, Any]:
        """fid_all, fid_own, fid_other, class_mass, own_mass, unseen_mass, own_classes."""
        m = self.tool().evaluate(images, self.own_classes)
        unseen = [c for c in range(len(m["class_mass"])) if c not in self.own_classes]
        m["unseen_mass"] = float(sum(m["class_mass"][c] for c in unseen))
        m["own_classes"] = self.own_classes
        m["evaluator_test_accuracy"] = self.info.get("test_accuracy")
        return m

    def tstr(self, images, seed: int = 0) -> float:
        """Train on synthetic, test on real (eval/tstr.py): an MLP trained on ``images``,
        labelled by the evaluator, scored on the real test set (thresholded as the
        evaluator's, for binary generators)."""
        from p2pgame.eval.evaluator import binarize, predict, to_model_input
        from p2pgame.eval.tstr import tstr_accuracy

        fid = self.tool()
        model = fid.evaluator
        x = to_model_input(images)
        labels = predict(model, x)
        real = self._test_images
        real = binarize(real) if self.binarize_test else to_model_input(real)
        return tstr_accuracy(x, labels, to_model_input(real), torch.as_tensor(fid.test_labels),
                             n_classes=fid.n_classes, seed=seed)

    def standard_fid(self, images, weights_path: str | Path) -> float:
        """Inception FID (pytorch-fid's network, weights from a local file) to the test set."""
        from p2pgame.eval import standard_fid
        from p2pgame.eval.evaluator import binarize

        self.tool()
        real = self._test_images
        real = binarize(real) if self.binarize_test else real.float() / 255.0
        return standard_fid(images, real, weights_path, device=self.device)
