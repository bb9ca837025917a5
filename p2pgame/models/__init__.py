"""Model registry: ``MODELS`` maps a name to a factory ``(**overrides) -> model``.

Add new entries with ``MODELS["name"] = factory``. :func:`make_model` looks a name up and
passes keyword overrides through to the factory.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

from p2pgame.models.dcgan import GAN, GAN_CONV_CONFIG, GAN_MLP_CONFIG, DCGANConfig
from p2pgame.models.hvae import CONV_CONFIG, HVAE, MLP_CONFIG, HVAEConfig, SymmetricLearner
from p2pgame.models.joint import JointConfig, JointCX, JointLearner
from p2pgame.models.vae import ConvVAE, ConvVAEConfig, VAELearner


def _hvae_factory(base: HVAEConfig) -> Callable[..., HVAE]:
    def factory(*, seed: int | None = None, **overrides: Any) -> HVAE:
        known = {f.name for f in dataclasses.fields(HVAEConfig)}
        unknown = sorted(set(overrides) - known)
        if unknown:
            raise ValueError(
                f"unknown HVAEConfig field(s) {unknown}; known fields: {sorted(known)}"
            )
        return HVAE(dataclasses.replace(base, **overrides), seed=seed)

    return factory


def _gan_factory(base: DCGANConfig) -> Callable[..., GAN]:
    def factory(*, seed: int | None = None, **overrides: Any) -> GAN:
        known = {f.name for f in dataclasses.fields(DCGANConfig)}
        unknown = sorted(set(overrides) - known)
        if unknown:
            raise ValueError(
                f"unknown DCGANConfig field(s) {unknown}; known fields: {sorted(known)}"
            )
        return GAN(dataclasses.replace(base, **overrides), seed=seed)

    return factory


def _vae_factory(*, seed: int | None = None, lr_p: float | None = None,
                 lr_q: float | None = None, **overrides: Any) -> ConvVAE:
    # lr_p / lr_q: the game's "lr" for HVAEs; a VAE has one learning rate.
    if lr_p is not None:
        overrides["lr"] = lr_p
    return ConvVAE(ConvVAEConfig(**overrides), seed=seed)


def _joint_factory(*, seed: int | None = None, lr_p: float | None = None,
                   lr_q: float | None = None, **overrides: Any) -> JointCX:
    if lr_p is not None:
        overrides["lr"] = lr_p
    return JointCX(JointConfig(**overrides), seed=seed)


MODELS: dict[str, Callable[..., Any]] = {
    "hvae-mlp": _hvae_factory(MLP_CONFIG),
    "hvae-conv": _hvae_factory(CONV_CONFIG),
    "dcgan-mlp": _gan_factory(GAN_MLP_CONFIG),
    "dcgan-conv": _gan_factory(GAN_CONV_CONFIG),
    "vae-conv": _vae_factory,
    "joint-cx": _joint_factory,
}


# The configurations behind the registered HVAEs, for what can be known without building one.
HVAE_CONFIGS: dict[str, HVAEConfig] = {"hvae-mlp": MLP_CONFIG, "hvae-conv": CONV_CONFIG}


def make_model(name: str, **overrides: Any) -> Any:
    """Build the registered model ``name``; ``overrides`` go to its factory.

    For HVAE entries the overrides are :class:`HVAEConfig` fields plus ``seed``.
    Raises ``KeyError`` (listing the known names) for an unknown name.
    """
    try:
        factory = MODELS[name]
    except KeyError:
        raise KeyError(f"unknown model {name!r}; known models: {sorted(MODELS)}") from None
    return factory(**overrides)


__all__ = ["HVAE_CONFIGS", "MODELS", "make_model", "ConvVAE", "ConvVAEConfig", "VAELearner",
           "HVAE", "HVAEConfig", "SymmetricLearner", "GAN", "DCGANConfig", "JointConfig",
           "JointCX", "JointLearner"]
