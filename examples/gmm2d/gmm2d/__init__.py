"""gmm2d: an example p2pgame learner plugin (a Gaussian mixture on 2-D points).

The learner is :class:`gmm2d.learner.GMMLearner`, registered as ``gmm2d`` in the entry
point group ``p2pgame.learners`` (see ``pyproject.toml`` and ``README.md``).
"""
