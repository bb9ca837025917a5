"""The game's equilibrium (REFERENCE.md s.1) and the exponential-family players (the
``samples`` exchange, missing neighbours renormalised, x an ``expfam-*`` learner)."""

from __future__ import annotations

import numpy as np
import pytest

from p2pgame.bus.codec import Envelope, decode, encode
from p2pgame.config import ScenarioError
from p2pgame.exchange import method
from p2pgame.exchange.equilibrium import contraction_rate, solve_equilibrium
from p2pgame.exchange.inbox import Inbox
from p2pgame.exchange.mixing import Mixing, MixingConfig
from p2pgame.exchange.node import Node, PeerContext, RunHooks
from p2pgame.learners.expfam import (
    ExpFamConfig,
    ExpFamHooks,
    ExpFamLearner,
    all_moments,
    make_data,
    moments,
)
from p2pgame.scenario import resolve
from p2pgame.topology import build_schedule


def equilibrium(scenario, topology) -> np.ndarray:
    """The analytic equilibrium mean parameters of all players (n x d)."""
    return solve_equilibrium(topology.weights, all_moments(scenario))


def _two_players(alpha: float) -> np.ndarray:
    return np.array([[alpha, 1 - alpha], [1 - alpha, alpha]])


# --------------------------------------------------------------------------- closed form


@pytest.mark.parametrize("alpha, share", [(1.0, 1.0), (0.5, 2 / 3), (0.1, 1 / 1.9),
                                          (0.9, 1 / 1.1)])
def test_two_players_disjoint_classes(alpha, share):
    # Class histograms of two players owning disjoint class sets (say 0-4 vs 5-9).
    hist = np.zeros((2, 10))
    hist[0, :5] = 0.2
    hist[1, 5:] = 0.2
    mu = solve_equilibrium(_two_players(alpha), hist)
    # Each player's own-class mass is 1 / (2 - alpha) ...
    assert mu[0, :5].sum() == pytest.approx(share)
    assert mu[1, 5:].sum() == pytest.approx(share)
    assert share == pytest.approx(1 / (2 - alpha))
    # ... and its model is (pi_own + (1 - alpha) pi_other) / (2 - alpha).
    np.testing.assert_allclose(mu[0], (hist[0] + (1 - alpha) * hist[1]) / (2 - alpha))
    np.testing.assert_allclose(mu.sum(axis=1), 1.0)


def test_solution_satisfies_the_fixed_point_equation():
    rng = np.random.default_rng(0)
    n, d = 6, 5
    a = rng.random((n, n)) * (rng.random((n, n)) < 0.6)
    np.fill_diagonal(a, rng.uniform(0.1, 0.9, n))
    a /= a.sum(axis=1, keepdims=True)
    m = rng.standard_normal((n, d))
    mu = solve_equilibrium(a, m)
    diag = np.diag(a)
    off = a - np.diag(diag)
    np.testing.assert_allclose(mu, diag[:, None] * m + off @ mu, atol=1e-12)
    # A 1-d moment vector is treated as one column.
    np.testing.assert_allclose(solve_equilibrium(a, m[:, 0]), mu[:, :1])


def test_data_less_player_takes_its_neighbours_mixture():
    # Player 2 owns no data (a_22 = 0) and listens to 0 and 1 equally.
    a = np.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.5, 0.5, 0.0]])
    m = np.array([[1.0], [3.0], [1000.0]])  # player 2's row is ignored
    np.testing.assert_allclose(solve_equilibrium(a, m), [[1.0], [3.0], [2.0]])


def test_best_response_iteration_contracts_to_the_solution():
    a = np.array([[0.5, 0.25, 0.25], [0.3, 0.4, 0.3], [0.1, 0.1, 0.8]])
    m = np.array([[0.0, 1.0], [1.0, 0.0], [2.0, 2.0]])
    mu_star = solve_equilibrium(a, m)
    rate = contraction_rate(a)
    assert rate == pytest.approx(0.6) and rate < 1
    diag, off = np.diag(a), a - np.diag(np.diag(a))
    mu = np.zeros_like(m)
    err = np.abs(mu - mu_star).max()
    for _ in range(30):
        mu = diag[:, None] * m + off @ mu  # simultaneous best responses
        new = np.abs(mu - mu_star).max()
        assert new <= rate * err + 1e-12
        err = new
    assert err < 1e-6


def test_contraction_rate_values():
    assert contraction_rate(_two_players(0.5)) == pytest.approx(0.5)
    assert contraction_rate(np.eye(3)) == 0.0
    assert contraction_rate(np.array([[0.0, 1.0], [0.5, 0.5]])) == 1.0


@pytest.mark.parametrize(
    "weights",
    [
        np.array([[0.0, 1.0], [1.0, 0.0]]),  # nobody uses own data
        np.array([[1.0, 0.0, 0.0], [0.0, 0.0, 1.0], [0.0, 1.0, 0.0]]),  # 1, 2 never see data
    ],
)
def test_non_unique_equilibrium_raises(weights):
    with pytest.raises(ValueError, match="not unique"):
        solve_equilibrium(weights, np.ones((len(weights), 2)))


def test_shape_mismatch_raises():
    with pytest.raises(ValueError, match="do not match"):
        solve_equilibrium(np.eye(3), np.ones((2, 4)))
    with pytest.raises(ValueError, match="do not match"):
        solve_equilibrium(np.ones((2, 3)) / 3, np.ones((2, 4)))


# --------------------------------------------------------------------------- expfam players


def _scenario(family="bernoulli", n=2, alpha=0.5, steps=300, graph="complete", peers=(),
              **algo):
    raw = {
        "seed": 11,
        "steps": steps,
        "topology": {"n": n, "graph": graph, "weights": "self_weight", "self_weight": alpha},
        "algorithm": {"name": "expfam", "family": family, "dim": 6, "n_data": 400,
                      "batch": 256, "lr": 0.3, "lr_end": 0.01, **algo},
    }
    if peers:
        raw["peers"] = list(peers)
    return resolve(raw, "x.toml")


def _players(scenario, tmp_path) -> tuple[list[Node], object]:
    info = method(scenario)
    cls = info.peer()
    assert issubclass(cls, Node) and info.hooks() is RunHooks
    assert isinstance(RunHooks(scenario).main, ExpFamHooks)
    assert scenario.exchange == MixingConfig(kind="samples", missing="renormalise")
    sched = build_schedule(scenario.topology, scenario.steps, scenario.seed)
    out = []
    for i in range(scenario.n):
        ctx = PeerContext(i, scenario, scenario.player(i), sched, tmp_path, log=lambda m: None)
        node = cls(ctx)
        assert isinstance(node.learner, ExpFamLearner) and isinstance(node.exchange, Mixing)
        out.append(node)
    return out, sched


def _topic(scenario, i: int, space: str) -> str:
    return f"{method(scenario).spaces[space]}/{i}/{space}"


def _lockstep(players, sched, steps, through_codec=True):
    """The sync protocol without sockets: publish round s, deliver round s, train step s."""
    inboxes = [Inbox() for _ in players]
    top = sched.final()
    scenario = players[0].ctx.scenario
    for step in range(steps):
        for i, p in enumerate(players):
            for space, tensors in p.publish(step).items():
                env = Envelope(sender=i, topic=_topic(scenario, i, space), step=step,
                               tensors=tensors)
                if through_codec:
                    env = decode([bytes(f) for f in encode(env)])
                for j in top.out_neighbours(i):
                    assert players[j].check(env) is None
                    inboxes[j].put(env)
        for i, p in enumerate(players):
            p.train_step(step, inboxes[i], top)
    return inboxes


@pytest.mark.parametrize("family", ["bernoulli", "gaussian"])
def test_expfam_players_reach_the_closed_form(family, tmp_path):
    scenario = _scenario(family)
    players, sched = _players(scenario, tmp_path)
    def rel_err(p):  # Gaussian second moments are O(10): compare relative to scale
        mu, target = p.learner.mu, p.learner.target
        return float(np.max(np.abs(mu - target) / (1 + np.abs(target))))

    before = max(rel_err(p) for p in players)
    assert max(p.probe(0)["eval/ne_max_abs"] for p in players) == pytest.approx(
        max(float(np.max(np.abs(p.learner.mu - p.learner.target))) for p in players))
    inboxes = _lockstep(players, sched, scenario.steps)
    after = [rel_err(p) for p in players]
    assert max(after) < 0.03 and max(after) < before / 5
    for p in players:
        assert p.finish()["ne_max_abs"] == pytest.approx(
            np.max(np.abs(p.learner.mu - p.learner.target)))
        assert len(p.finish()["mu"]) == len(p.learner.mu)
    # The players' targets are the rows of the analytic equilibrium.
    assert scenario.learner == ExpFamConfig(kind=f"expfam-{family}", dim=6, n_data=400,
                                            batch=256, lr=0.3, lr_end=0.01)
    eq = equilibrium(scenario, sched.final())
    for i, p in enumerate(players):
        np.testing.assert_allclose(p.learner.target, eq[i])
        np.testing.assert_allclose(p.learner.mu, eq[i], atol=0.03 * (1 + np.abs(eq[i]).max()))
        # Sync lockstep: every neighbour's sample is used the step it was made.
        assert inboxes[i].staleness_summary()[1] == {"0": scenario.steps}


def test_two_bernoulli_players_own_share(tmp_path):
    """With disjoint 'features' the closed form 1/(2 - alpha) shows up in the mean parameters."""
    alpha = 0.5
    scenario = _scenario(alpha=alpha)
    cfg = ExpFamConfig(kind="expfam-bernoulli", dim=6, n_data=400, batch=256, lr=0.3,
                       lr_end=0.01)
    m = np.stack([moments(cfg, make_data(cfg, scenario.seed, i)) for i in range(2)])
    mu = solve_equilibrium(_two_players(alpha), m)
    np.testing.assert_allclose(mu[0], (m[0] + (1 - alpha) * m[1]) / (2 - alpha))
    np.testing.assert_allclose(mu[1], (m[1] + (1 - alpha) * m[0]) / (2 - alpha))


def test_no_exchange_equilibrium_is_own_data(tmp_path):
    scenario = _scenario(alpha=1.0, n=3, graph="ring")
    cfg = ExpFamConfig(kind="expfam-bernoulli", dim=6, n_data=400, batch=256, lr=0.3,
                       lr_end=0.01)
    assert scenario.learner == cfg
    eq = equilibrium(scenario, build_schedule(scenario.topology, scenario.steps,
                                              scenario.seed).final())
    for i in range(3):
        np.testing.assert_allclose(eq[i], moments(cfg, make_data(cfg, scenario.seed, i)))


def test_make_data_is_seeded_per_peer():
    cfg = ExpFamConfig(kind="expfam-bernoulli", dim=5, n_data=50)
    assert ExpFamConfig(dim=5).family == "bernoulli"  # (no kind: the default family)
    a, b = make_data(cfg, 1, 0), make_data(cfg, 1, 0)
    assert a.dtype == bool and a.shape == (50, 5)
    np.testing.assert_array_equal(a, b)
    assert (make_data(cfg, 1, 1) != a).any() and (make_data(cfg, 2, 0) != a).any()
    g = make_data(ExpFamConfig(kind="expfam-gaussian", dim=5, n_data=50), 1, 0)
    assert g.dtype == np.float32 and g.shape == (50, 5)
    assert moments(ExpFamConfig(kind="expfam-gaussian", dim=5), g).shape == (10,)


def test_player_messages_and_checks(tmp_path):
    scenario = resolve({
        "topology": {"n": 2, "graph": "complete"},
        "comm": {"samples_per_message": 17},
        "algorithm": {"name": "expfam", "dim": 6, "n_data": 40, "batch": 8},
    }, "x.toml")
    players, sched = _players(scenario, tmp_path)
    p = players[0]
    assert (p.ctx.player.publishes, p.ctx.player.learns) == (("x",), ("x",))  # the defaults
    out = p.publish(0)
    assert list(out) == ["x"] and out["x"]["x"].shape == (17, 6) and out["x"]["x"].dtype == bool
    ok = Envelope(1, "samples/1/x", 0, {"x": np.zeros((3, 6), bool)})
    assert p.check(ok) is None
    assert p.check(Envelope(1, "samples/1/y", 0, {"x": np.zeros((3, 6), bool)})) == "space"
    # Mean parameters are a space of their own, refused by a player that learns only x.
    assert p.check(Envelope(1, "params/1/mu", 0, {"mu": np.zeros((1, 6))})) == "space"
    assert p.check(Envelope(1, "samples/1/x", 0, {"x": np.zeros((3, 6), np.float32)})) == "schema"
    assert p.check(Envelope(1, "samples/1/x", 0, {"x": np.zeros((3, 5), bool)})) == "schema"
    assert p.check(Envelope(1, "samples/1/x", 0, {"z": np.zeros((3, 6), bool)})) == "schema"
    # An empty sample is acceptable on the wire and ignored by training.
    inbox = Inbox()
    inbox.put(Envelope(1, "samples/1/x", 0, {"x": np.zeros((0, 6), bool)}))
    res = p.train_step(0, inbox, sched.final())
    assert res["train/coverage"] == pytest.approx(0.5)  # only own data: the row renormalised


def test_lr_schedule(tmp_path):
    players, _ = _players(_scenario(steps=101, lr=0.2, lr_end=0.002, decay_from=0.5), tmp_path)
    p = players[0].learner
    assert p.lr_at(0) == p.lr_at(49) == 0.2
    assert p.lr_at(50) == pytest.approx(0.2)
    assert p.lr_at(100) == pytest.approx(0.002)
    assert 0.002 < p.lr_at(75) < 0.2


def test_expfam_validation_errors():
    with pytest.raises(ScenarioError, match="algorithm.family"):
        _scenario(family="poisson")
    with pytest.raises(ScenarioError, match="algorithm.dim"):
        _scenario(dim=0)
    with pytest.raises(ScenarioError, match="algorithm.decay_from"):
        _scenario(decay_from=1.5)
    with pytest.raises(ScenarioError, match="unknown key 'momentum'"):
        _scenario(momentum=0.9)
    with pytest.raises(ScenarioError, match=r"^x\.toml: "):  # errors name the file
        _scenario(dim=0)
    good = _scenario()  # a good one passes, the algorithm's own checks included
    ExpFamHooks(good).validate(build_schedule(good.topology, good.steps, good.seed))


# --------------------------------------------------------------------------- the "mu" space

MU_PEERS = (
    {"ids": [0], "publishes": ["x"], "learns": ["mu"]},
    {"ids": [1], "publishes": ["x", "mu"], "learns": ["x"]},
)


def test_mu_is_published_as_params_and_checked(tmp_path):
    scenario = _scenario(peers=MU_PEERS, steps=10)
    assert method(scenario).spaces == {"x": "samples", "mu": "params"}
    (learner, publisher), _ = _players(scenario, tmp_path)
    assert scenario.player(1).publishes == ("x", "mu")
    publisher.learner.mu = np.linspace(0.1, 0.9, 6)
    out = publisher.publish(3)
    assert list(out) == ["x", "mu"]  # in the order the scenario lists them
    mu = out["mu"]["mu"]
    assert mu.dtype == np.float64 and mu.shape == (1, 6)
    np.testing.assert_array_equal(mu[0], publisher.learner.mu)
    publisher.learner.mu[0] = 0.5  # the message holds a copy, not the live parameters
    assert mu[0, 0] == pytest.approx(0.1)
    assert learner.publish(3).keys() == {"x"}
    env = decode([bytes(f) for f in encode(Envelope(1, _topic(scenario, 1, "mu"), 3, out["mu"]))])
    assert str(env.topic) == "params/1/mu"
    assert learner.check(env) is None
    assert learner.check(Envelope(1, "samples/1/x", 3, out["x"])) == "space"  # learns mu only
    assert publisher.check(env) == "space"  # learns x only
    for bad in ({"mu": np.zeros((1, 6), np.float32)}, {"mu": np.zeros((1, 5))},
                {"m": np.zeros((1, 6))}):
        assert learner.check(Envelope(1, "params/1/mu", 3, bad)) == "schema"


@pytest.mark.parametrize("family", ["bernoulli", "gaussian"])
@pytest.mark.parametrize("learns", [["mu"], ["x", "mu"]])
def test_mu_learner_moves_exactly_toward_the_weighted_mix(tmp_path, family, learns):
    """No sampling noise: the neighbour's term is its mean parameters, as sent.

    With one private example (n_data = 1) the own batch's moments are that
    example's, so the whole update is known exactly:
    ``mu <- mu + lr (a_00 m_0 + a_01 mu_1 - mu)``.
    """
    peers = ({"ids": [0], "publishes": ["x"], "learns": learns}, MU_PEERS[1])
    scenario = _scenario(family=family, alpha=0.3, peers=peers, n_data=1, batch=16)
    (learner, publisher), sched = _players(scenario, tmp_path)
    top = sched.final()
    a = top.weights
    assert a[0, 0] == pytest.approx(0.3) and a[0, 1] == pytest.approx(0.7)
    cfg = scenario.learner
    own = moments(cfg, learner.learner.data)
    stats = len(learner.learner.mu)
    publisher.learner.mu = np.linspace(-0.4, 2.0, stats)  # anything but the learner's start
    inbox = Inbox()
    inbox.put(decode([bytes(f) for f in encode(
        Envelope(1, "params/1/mu", 0, publisher.publish(0)["mu"]))]))
    # A sample message of the same round, far from mu_1: must not be used when mu is there.
    far = (np.ones((8, cfg.dim), bool) if family == "bernoulli"
           else np.full((8, cfg.dim), 50.0, np.float32))
    inbox.put(Envelope(1, "samples/1/x", 0, {"x": far}))
    mu_1 = publisher.learner.mu.copy()
    for step in range(3):  # the same message again: the mix is the same, mu keeps moving
        before = learner.learner.mu.copy()
        res = learner.train_step(step, inbox, top)
        lr = learner.learner.lr_at(step)
        expected = before + lr * (a[0, 0] * own + a[0, 1] * mu_1 - before)
        np.testing.assert_allclose(learner.learner.mu, expected, rtol=0, atol=1e-12)
        assert res == {"train/lr": lr, "train/coverage": pytest.approx(1.0)}
        # Toward the mix: each step shrinks the distance by exactly (1 - lr).
        mix = a[0, 0] * own + a[0, 1] * mu_1
        np.testing.assert_allclose(learner.learner.mu - mix, (1 - lr) * (before - mix),
                                   atol=1e-12)
    assert inbox.staleness_summary()[1] == {"0": 1, "1": 1, "2": 1}


def test_x_and_mu_learner_falls_back_to_samples_without_mu(tmp_path):
    peers = ({"ids": [0], "publishes": ["x"], "learns": ["x", "mu"]}, MU_PEERS[1])
    scenario = _scenario(alpha=0.3, peers=peers, n_data=1, batch=16)
    (learner, _), sched = _players(scenario, tmp_path)
    top = sched.final()
    x = np.zeros((8, 6), bool)
    x[:, :3] = True
    inbox = Inbox()
    inbox.put(Envelope(1, "samples/1/x", 0, {"x": x}))
    before = learner.learner.mu.copy()
    learner.train_step(0, inbox, top)
    cfg = scenario.learner
    mix = 0.3 * moments(cfg, learner.learner.data) + 0.7 * moments(cfg, x)
    np.testing.assert_allclose(learner.learner.mu,
                               before + learner.learner.lr_at(0) * (mix - before), atol=1e-12)


def test_mu_learner_without_a_message_renormalises_to_own_data(tmp_path):
    scenario = _scenario(alpha=0.3, peers=MU_PEERS, n_data=1, batch=16)
    (learner, _), sched = _players(scenario, tmp_path)
    before = learner.learner.mu.copy()
    res = learner.train_step(0, Inbox(), sched.final())
    assert res["train/coverage"] == pytest.approx(0.3)
    own = moments(scenario.learner, learner.learner.data)
    np.testing.assert_allclose(learner.learner.mu,
                               before + learner.learner.lr_at(0) * (own - before), atol=1e-12)


@pytest.mark.parametrize("family", ["bernoulli", "gaussian"])
def test_players_exchanging_mu_reach_the_closed_form(family, tmp_path):
    """The infinite-sample limit of the game has the same equilibrium."""
    peers = ({"ids": [0, 1], "publishes": ["mu"], "learns": ["mu"]},)
    scenario = _scenario(family, peers=peers)
    players, sched = _players(scenario, tmp_path)
    inboxes = _lockstep(players, sched, scenario.steps)
    eq = equilibrium(scenario, sched.final())
    for i, p in enumerate(players):
        np.testing.assert_allclose(p.learner.target, eq[i])
        assert np.max(np.abs(p.learner.mu - eq[i]) / (1 + np.abs(eq[i]))) < 0.03
        assert inboxes[i].staleness_summary()[1] == {"0": scenario.steps}
        assert set(inboxes[i].latest) == {(1 - i, "mu")}  # no samples were exchanged


def test_learning_mu_needs_a_publisher_of_mu():
    with pytest.raises(ScenarioError, match="learns 'mu' but none of its in-neighbours"):
        _scenario(peers=({"ids": [0], "learns": ["mu"]},))
