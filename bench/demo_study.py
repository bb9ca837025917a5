"""What closes the demo's gap?  The 2-peer vae-conv game of ``mnist-demo.toml`` in one process.

Issue 9 asks the demo for classifier-FID <= 60; the game reached 84-94 at 5000 steps where the
same learner trained centrally reached 46.  This script replays the demo's exchange in one
process (no bus: each step, each peer draws examples from its current model and the other
learns from them with as many of its own real images, Adam 1e-3), so that variants of the
learner and of what is exchanged can be compared quickly, at the same budget:

* ``base``: Bernoulli draws exchanged;
* ``probs``: the decoder's Bernoulli means exchanged (learnt with soft targets: the same
  expected decoder gradient with less noise, at 16 bits a pixel instead of 1);
* ``cos``: learning rate on a cosine schedule to 0;  ``lat32``: 32 latent dimensions;
* ``refN``: N 3x3 convolutions more in the decoder (``ConvVAEConfig.refine = N``);
  ``lr2``: Adam 2e-3 instead of 1e-3;
* ``hN``: N own and N received examples a step (default 64; the batch is 2N);
* ``mogK``: the prior p(z) a learnt mixture of K Gaussians (``ConvVAEConfig.prior_components``);
* ``tNN``: publish with latents drawn at temperature NN/100 (``z ~ N(0, t^2 I)``);
* ``central``: one model on all digits (the floor);
* ``emapub``: each peer publishes from an exponential moving average of its weights (decay
  0.995) instead of its current weights;  ``tail``: learning rate to 0, linearly, over the
  last quarter of the steps.

Every run also keeps moving averages of each peer's weights (decays 0.995 and 0.999); with
``--ema`` they are evaluated beside the current weights (``ema995``, ``ema999``).  Evaluation,
at every ``--eval-at`` step and at the end, is the game's: 10 000 decoder means thresholded at
0.5, classifier-FID to all test digits, class-mass TV to the equilibrium; ``--temps`` repeats
it at other prior temperatures.

Variants combine with ``-`` (``probs-ref1-lr2-h32-mog10``, the demo since session 10).

Usage: ``.venv/bin/python bench/demo_study.py VARIANT STEPS --data DATA_ROOT``
"""

from __future__ import annotations

import argparse
import math
import time
from pathlib import Path

import numpy as np
import torch

from p2pgame.data.image import ImageDataSpec, load_split
from p2pgame.eval import ClassifierFID
from p2pgame.eval.evaluator import binarize
from p2pgame.eval.images import evaluator_for
from p2pgame.models.vae import ConvVAE, ConvVAEConfig


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("variant")
    ap.add_argument("steps", type=int)
    ap.add_argument("--data", type=Path, default=Path("data"))
    ap.add_argument("--eval-at", default="", help="comma-separated steps to evaluate at too")
    ap.add_argument("--temps", default="1", help="comma-separated prior temperatures to "
                    "evaluate at (z ~ N(0, t^2 I); 1 is the model as trained)")
    ap.add_argument("--ema", action="store_true", help="evaluate the weight averages too")
    args = ap.parse_args()
    torch.set_num_threads(1)
    variant, steps = args.variant, args.steps
    central = "central" in variant
    latent = 32 if "lat32" in variant else 16
    spec = ImageDataSpec()
    model, _, (te_x, te_y) = evaluator_for(spec, args.data, 2, lambda m: None)
    fid = ClassifierFID(model, te_x, te_y)
    tr_x, tr_y = load_split(spec, args.data, "train")
    tr_y = torch.as_tensor(np.asarray(tr_y))
    x_all = binarize(torch.as_tensor(tr_x)).float().reshape(-1, 1, 28, 28)
    own = [list(range(10))] if central else [[0, 1, 2, 3, 4], [5, 6, 7, 8, 9]]
    data = [x_all[torch.isin(tr_y, torch.tensor(c))] for c in own]
    g = torch.Generator().manual_seed(0)
    refine = next((int(v[3:]) for v in variant.split("-") if v.startswith("ref")), 0)
    lr0 = 2e-3 if "lr2" in variant.split("-") else 1e-3
    mog = next((int(v[3:]) for v in variant.split("-") if v.startswith("mog")), 0)
    peers = [ConvVAE(ConvVAEConfig(latent=latent, refine=refine, prior_components=mog), seed=i)
             for i in range(len(own))]
    opts = [torch.optim.Adam(p.parameters(), lr=lr0) for p in peers]
    emas = {d: [torch.optim.swa_utils.AveragedModel(
        p, multi_avg_fn=torch.optim.swa_utils.get_ema_multi_avg_fn(d)) for p in peers]
        for d in (0.995, 0.999)}
    publishers = emas[0.995] if "emapub" in variant.split("-") else peers
    half = next((int(v[1:]) for v in variant.split("-") if v[:1] == "h" and v[1:].isdigit()),
                64)
    half = 2 * half if central else half
    eval_at = {int(s) for s in args.eval_at.split(",") if s}
    temps = [float(s) for s in args.temps.split(",")]
    pub_temp = next((int(v[1:]) / 100 for v in variant.split("-")
                     if v.startswith("t") and v[1:].isdigit()), 1.0)
    t0 = time.time()
    for t in range(steps):
        lr = lr0 * (0.5 * (1 + math.cos(math.pi * t / steps)) if "cos" in variant else 1.0)
        if "tail" in variant.split("-"):
            lr = lr0 * min(1.0, 4 * (steps - t) / steps)
        if t in eval_at:
            evaluate(variant, t, peers, emas, fid, own, central, t0, temps, args.ema)
        msgs = []
        if not central:
            for p in publishers:
                with torch.no_grad():
                    m = sample_means(getattr(p, "module", p), half, g, pub_temp)
                    msgs.append(m if "probs" in variant else torch.bernoulli(m, generator=g))
        for i, (p, o) in enumerate(zip(peers, opts, strict=True)):
            for group in o.param_groups:
                group["lr"] = lr
            idx = torch.randint(len(data[i]), (half,), generator=g)
            x = data[i][idx] if central else torch.cat([data[i][idx], msgs[1 - i]])
            o.zero_grad()
            p.loss(x, g).backward()
            o.step()
            for d in emas:
                emas[d][i].update_parameters(p)
    evaluate(variant, steps, peers, emas, fid, own, central, t0, temps, args.ema)


def sample_means(model: ConvVAE, n: int, g: torch.Generator, temp: float) -> torch.Tensor:
    """Decoder means for ``z ~ N(0, temp^2 I)`` (a mixture prior: only ``temp = 1``)."""
    if temp != 1 and model.config.prior_components:
        raise SystemExit("temperatures other than 1 are for the N(0, I) prior only")
    with torch.no_grad():
        return torch.sigmoid(model.logits(temp * model._z(n, g)))


def evaluate(variant, steps, peers, emas, fid, own, central, t0, temps, ema) -> None:
    ne = np.array([2 / 15] * 5 + [1 / 15] * 5)
    models = {"now": peers}
    if ema:
        models |= {f"ema{str(d)[2:]}": [e.module for e in m] for d, m in emas.items()}
    for (which, ps), temp in ((w, t) for w in models.items() for t in temps):
        for i, p in enumerate(ps):
            p.eval()
            images = (sample_means(p, 10000, torch.Generator().manual_seed(1), temp)
                      > 0.5).float()
            p.train()
            m = fid.evaluate(images, own[i])
            mass = np.array(m["class_mass"])
            target = np.full(10, 0.1) if central else (ne if i == 0 else ne[::-1])
            print(f"{variant} steps={steps} {which} temp={temp} peer={i} "
                  f"fid_all={m['fid_all']:.1f} "
                  f"own_mass={m['own_mass']:.3f} "
                  f"tv_to_ne={0.5 * np.abs(mass - target).sum():.3f} "
                  f"wall={time.time() - t0:.0f}s", flush=True)


if __name__ == "__main__":
    main()
