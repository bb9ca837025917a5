"""Evaluation of generated digits: evaluator CNN, classifier-FID, Inception FID."""

from .evaluator import DigitClassifier, binarize, get_evaluator, load_evaluator, predict
from .inception import load_fid_inception, standard_fid
from .metrics import (
    ClassifierFID,
    class_histogram,
    evaluate_images,
    frechet_distance,
    grid_png,
    save_grid,
    total_variation,
)

__all__ = [
    "ClassifierFID",
    "DigitClassifier",
    "binarize",
    "class_histogram",
    "evaluate_images",
    "frechet_distance",
    "get_evaluator",
    "grid_png",
    "load_evaluator",
    "load_fid_inception",
    "predict",
    "save_grid",
    "standard_fid",
    "total_variation",
]
