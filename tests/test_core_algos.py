"""verl.core_algos against values computed by hand (arithmetic in the comments)."""

import math

import numpy as np
import pytest
import torch

from verl import core_algos as ca

A = pytest.approx


def outcome(scores, lengths, T=4):
    """Rewards [B, T] with each score on the last valid token, and the mask."""
    B = len(scores)
    rewards, mask = torch.zeros(B, T), torch.zeros(B, T)
    for i, (s, n) in enumerate(zip(scores, lengths)):
        mask[i, :n] = 1
        rewards[i, n - 1] = s
    return rewards, mask


# ------------------------------------------------------------------------------------------------ advantages


def test_grpo_groups_and_singleton():
    # group a: [1, 0] -> mean .5, unbiased std sqrt((.25+.25)/1) = .70711 -> +-.5/.70711 = +-.70711
    # group b: [1, 0, .5] -> mean .5, var (.25+.25+0)/2 = .25, std .5 -> [1, -1, 0]
    # group c: [2] alone -> mean 0, std 1 -> 2
    rewards, mask = outcome([1, 0, 1, 0, 0.5, 2], [2, 4, 1, 3, 2, 4])
    index = np.array(["a", "a", "b", "b", "b", "c"], dtype=object)
    adv, ret = ca.compute_grpo_outcome_advantage(rewards, mask, index, eps=0.0)
    expected = [0.70711, -0.70711, 1.0, -1.0, 0.0, 2.0]
    for i, e in enumerate(expected):
        assert adv[i][mask[i] == 1].tolist() == A([e] * int(mask[i].sum()), abs=1e-4)
        assert adv[i][mask[i] == 0].abs().sum() == 0  # padding gets no advantage
    assert torch.equal(adv, ret)
    # integer uids given as a tensor group the same way
    adv_t, _ = ca.compute_grpo_outcome_advantage(rewards, mask, torch.tensor([0, 0, 1, 1, 1, 2]), eps=0.0)
    assert torch.allclose(adv, adv_t)


def test_grpo_eps_and_equal_scores():
    # all-equal group: std 0 -> (1-1)/(0+1e-6) = 0, no NaN
    rewards, mask = outcome([1, 1], [1, 1])
    adv, _ = ca.compute_grpo_outcome_advantage(rewards, mask, np.array([0, 0]))
    assert torch.all(adv == 0)


def test_rloo():
    # a: [1, 0] -> 1 - 0 = 1, 0 - 1 = -1
    # b: [1, 0, .5] -> 1 - (0+.5)/2 = .75; 0 - 1.5/2 = -.75; .5 - 1/2 = 0
    # c: [2] alone -> no baseline -> 2
    rewards, mask = outcome([1, 0, 1, 0, 0.5, 2], [1, 1, 1, 1, 1, 1])
    adv, ret = ca.compute_rloo_outcome_advantage(rewards, mask, np.array([0, 0, 1, 1, 1, 2]))
    assert adv[:, 0].tolist() == A([1, -1, 0.75, -0.75, 0, 2])
    assert adv[:, 1:].abs().sum() == 0


def test_reinforce_plus_plus():
    # gamma .5. row0 r=[0,0,1] -> G=[.25,.5,1]; row1 r=[0,2,0] mask [1,1,0] -> G=[1,2,(pad)0]
    # valid G: .25 .5 1 1 2: mean .95; dev -.7 -.45 .05 .05 1.05; sq sum 1.8; unbiased var .45; std .670820
    rewards = torch.tensor([[0.0, 0, 1], [0, 2, 0]])
    mask = torch.tensor([[1.0, 1, 1], [1, 1, 0]])
    adv, ret = ca.compute_reinforce_plus_plus_outcome_advantage(rewards, mask, gamma=0.5)
    assert ret.tolist() == [A([0.25, 0.5, 1.0]), A([1.0, 2.0, 0.0])]
    s = math.sqrt(0.45)
    assert adv[0].tolist() == A([-0.7 / s, -0.45 / s, 0.05 / s], abs=1e-5)
    assert adv[1].tolist() == A([0.05 / s, 1.05 / s, 0.0], abs=1e-5)


def test_gae_gamma_lambda_one():
    # r=[0,0,1], V=[.5,.2,.4]: delta2 = 1-.4 = .6, A2=.6; delta1 = 0+.4-.2 = .2, A1=.8; delta0 = .2-.5 = -.3, A0=.5
    # returns = A + V = [1, 1, 1]; whiten [.5,.8,.6]: mean .63333, unbiased std .152753
    rewards = torch.tensor([[0.0, 0, 1]])
    values = torch.tensor([[0.5, 0.2, 0.4]])
    mask = torch.ones(1, 3)
    adv, ret = ca.compute_gae_advantage_return(rewards, mask, values=values, gamma=1.0, lam=1.0)
    assert ret[0].tolist() == A([1.0, 1.0, 1.0])
    m, s = (0.5 + 0.8 + 0.6) / 3, 0.152753
    assert adv[0].tolist() == A([(0.5 - m) / s, (0.8 - m) / s, (0.6 - m) / s], abs=1e-4)


def test_gae_discount_and_padding():
    # gamma=lam=.5, r=[0,1,pad], V=[.2,.4,9(pad, ignored)]
    # t1: delta = 1 + .5*0 - .4 = .6 -> A1 = .6 ; t0: delta = 0 + .5*.4 - .2 = 0 -> A0 = 0 + .25*.6 = .15
    # returns = [.35, 1.0, 0]; whiten [.15, .6] -> [-.70711, .70711]
    rewards = torch.tensor([[0.0, 1, 0]])
    values = torch.tensor([[0.2, 0.4, 9.0]])
    mask = torch.tensor([[1.0, 1, 0]])
    adv, ret = ca.compute_gae_advantage_return(rewards, mask, values=values, gamma=0.5, lam=0.5)
    assert ret[0].tolist() == A([0.35, 1.0, 0.0])
    assert adv[0].tolist() == A([-0.70711, 0.70711, 0.0], abs=1e-4)


def test_compute_advantage_dispatch_and_errors():
    rewards, mask = outcome([1, 0], [2, 2])
    idx = np.array([0, 0])
    a1, _ = ca.compute_advantage("grpo", rewards, mask, index=idx)
    a2, _ = ca.compute_grpo_outcome_advantage(rewards, mask, idx)
    assert torch.equal(a1, a2)
    assert set(ca.ADV_ESTIMATORS) == {"grpo", "rloo", "reinforce_plus_plus", "gae"}
    with pytest.raises(ValueError, match="unknown advantage estimator"):
        ca.compute_advantage("ppo", rewards, mask)
    with pytest.raises(ValueError, match="index"):
        ca.compute_advantage("rloo", rewards, mask)
    with pytest.raises(ValueError, match="values"):
        ca.compute_advantage("gae", rewards, mask)
    ca.compute_advantage("gae", rewards, mask, values=torch.zeros_like(rewards))
    ca.compute_advantage("reinforce_plus_plus", rewards, mask, gamma=0.9)



@pytest.fixture
def registered():
    """Registry entries a test adds, removed afterwards (the registries are module-level)."""
    added = []
    yield added
    for registry, name in added:
        registry.pop(name, None)


def test_estimator_registered_in_a_test_is_usable_by_name(registered):
    from verl.config import load_config
    from verl.trainer.main import config_help

    @ca.register_adv_estimator("score_minus_half", needs=("values",))
    def score_minus_half(token_level_rewards, response_mask, index=None, values=None, gamma=1.0, lam=1.0):
        adv = (token_level_rewards.sum(-1, keepdim=True) - 0.5) * response_mask
        return adv, adv + values

    registered.append((ca.ADV_ESTIMATORS, "score_minus_half"))
    rewards, mask = outcome([1, 0], [2, 1])
    adv, ret = ca.compute_advantage("score_minus_half", rewards, mask, values=torch.ones_like(rewards))
    assert adv.tolist() == [[0.5, 0.5, 0, 0], [-0.5, 0, 0, 0]] and ret[0, 0].item() == 1.5
    with pytest.raises(ValueError, match="values"):
        ca.compute_advantage("score_minus_half", rewards, mask)
    cfg = load_config(overrides=["algorithm.adv_estimator=score_minus_half"])
    assert cfg.use_critic  # it reads values: the trainer runs a critic
    assert any("score_minus_half" in line for line in config_help() if "algorithm.adv_estimator" in line)
    with pytest.raises(ValueError, match="already registered"):
        ca.register_adv_estimator("grpo")(score_minus_half)
    with pytest.raises(ValueError, match="choose one of .*score_minus_half"):
        load_config(overrides=["algorithm.adv_estimator=score_minus_halve"])


def test_kl_penalty_and_agg_mode_registered_in_a_test(registered):
    from verl.config import load_config

    ca.register_kl_penalty("twice_k1")(lambda d: 2 * d)
    ca.register_loss_agg_mode("token-sum")(lambda loss, mask: (loss * mask).sum())
    registered += [(ca.KL_PENALTIES, "twice_k1"), (ca.LOSS_AGG_MODES, "token-sum")]
    lp, ref = torch.tensor([[math.log(0.5)]]), torch.tensor([[math.log(0.25)]])
    assert ca.compute_kl(lp, ref, "twice_k1").item() == A(2 * math.log(2), abs=1e-6)
    assert ca.agg_loss(torch.tensor([[1.0, 2, 3]]), torch.tensor([[1, 1, 0]]), "token-sum").item() == 3.0
    cfg = load_config(overrides=["algorithm.kl_penalty=twice_k1", "worker.actor.loss_agg_mode=token-sum"])
    assert cfg.algorithm.kl_penalty == "twice_k1"
    with pytest.raises(ValueError, match="worker.critic.loss_agg_mode"):
        load_config(overrides=["worker.critic.loss_agg_mode=sum"])


# ------------------------------------------------------------------------------------------------ losses


def test_agg_loss_modes():
    loss = torch.tensor([[1.0, 2, 3], [4, 5, 6]])
    mask = torch.tensor([[1.0, 1, 0], [1, 0, 0]])
    assert ca.agg_loss(loss, mask, "token-mean").item() == A((1 + 2 + 4) / 3)  # 7/3
    assert ca.agg_loss(loss, mask, "seq-mean-token-sum").item() == A((3 + 4) / 2)  # 3.5
    assert ca.agg_loss(loss, mask, "seq-mean-token-mean").item() == A((1.5 + 4) / 2)  # 2.75
    with pytest.raises(ValueError, match="token-mean"):
        ca.agg_loss(loss, mask, "sum")


def test_policy_loss_branches():
    # clip low .2, high .3, dual 3; one token per branch:
    # t0 A=+1 r=1.1 unclipped:  max(-1.1, -1.1)            = -1.1
    # t1 A=+1 r=1.5 clipped hi: max(-1.5, -1.3)            = -1.3
    # t2 A=-1 r=0.5 clipped lo: max(0.5, 0.8)=.8, min(.8,3) = 0.8
    # t3 A=-1 r=4.0 dual clip:  max(4, 1.3)=4,  min(4, 3)  = 3.0
    # token-mean = (-1.1 - 1.3 + .8 + 3) / 4 = 0.35
    ratio = torch.tensor([[1.1, 1.5, 0.5, 4.0]])
    adv = torch.tensor([[1.0, 1.0, -1.0, -1.0]])
    old = torch.full((1, 4), -2.0)
    logp = (old + ratio.log()).requires_grad_(True)
    mask = torch.ones(1, 4)
    loss, m = ca.compute_policy_loss(old, logp, adv, mask, 0.2, 0.3, 3.0)
    assert loss.item() == A(0.35, abs=1e-5)
    assert m["pg_clipfrac_higher"] == A(0.25)
    assert m["pg_clipfrac_lower"] == A(0.25)
    assert m["pg_clipfrac_dual"] == A(0.25)
    # ppo_kl = mean(old - new) = -(ln1.1 + ln1.5 + ln.5 + ln4) / 4 = -1.193922/4
    assert m["ppo_kl"] == A(-0.2984805, abs=1e-5)
    loss.backward()
    # only the unclipped token has a gradient: d(-A r)/d logp = -A r / 4 = -1.1/4
    assert logp.grad[0].tolist() == A([-0.275, 0.0, 0.0, 0.0], abs=1e-6)


def test_policy_loss_pessimistic_side_and_mask():
    # A=+1 r=.5: max(-.5, -.8) = -.5 (no clip: the unclipped term is the pessimistic one)
    # A=-1 r=1.2: max(1.2, 1.2) = 1.2, min(1.2, 3) = 1.2 ; third token masked out
    # token-mean = (-.5 + 1.2) / 2 = .35
    ratio = torch.tensor([[0.5, 1.2, 100.0]])
    adv = torch.tensor([[1.0, -1.0, -1.0]])
    old = torch.zeros(1, 3)
    mask = torch.tensor([[1.0, 1, 0]])
    loss, m = ca.compute_policy_loss(old, ratio.log(), adv, mask)
    assert loss.item() == A(0.35, abs=1e-5)
    assert m["pg_clipfrac_higher"] == m["pg_clipfrac_lower"] == m["pg_clipfrac_dual"] == 0.0
    # seq-mean-token-sum of the same: (-.5 + 1.2) / 1 sequence = .7
    loss2, _ = ca.compute_policy_loss(old, ratio.log(), adv, mask, loss_agg_mode="seq-mean-token-sum")
    assert loss2.item() == A(0.7, abs=1e-5)
    with pytest.raises(ValueError, match="clip_ratio_dual"):
        ca.compute_policy_loss(old, ratio.log(), adv, mask, clip_ratio_dual=1.0)


def test_value_loss():
    # clip .5. t0: v=1 V=0 R=0 -> vclip=.5: l1=1, l2=.25 -> 1 (not clipped)
    #          t1: v=2 V=0 R=3 -> vclip=.5: l1=1, l2=6.25 -> 6.25 (clipped)
    # loss = .5 * (1 + 6.25)/2 = 1.8125 ; clipfrac .5 ; vpred_mean 1.5
    vpreds = torch.tensor([[1.0, 2.0]])
    values = torch.tensor([[0.0, 0.0]])
    returns = torch.tensor([[0.0, 3.0]])
    loss, m = ca.compute_value_loss(vpreds, returns, values, torch.ones(1, 2), cliprange_value=0.5)
    assert loss.item() == A(1.8125)
    assert m == {"vf_clipfrac": A(0.5), "vpred_mean": A(1.5)}


# ------------------------------------------------------------------------------------------------ KL


@pytest.mark.parametrize(
    "name, pos, neg",
    [
        # d = ln .5 - ln .25 = ln 2 = .693147 (pos) and -ln 2 (neg)
        ("kl", 0.693147, -0.693147),
        ("abs", 0.693147, 0.693147),
        ("mse", 0.240227, 0.240227),  # .5 * .693147^2
        # k3 = exp(-d) + d - 1: .5 + .693147 - 1 = .193147 ; 2 - .693147 - 1 = .306853
        ("low_var_kl", 0.193147, 0.306853),
    ],
)
def test_kl_estimators(name, pos, neg):
    lp, ref = torch.tensor([[math.log(0.5)]]), torch.tensor([[math.log(0.25)]])
    assert ca.compute_kl(lp, ref, name).item() == A(pos, abs=1e-5)
    assert ca.compute_kl(ref, lp, name).item() == A(neg, abs=1e-5)


def test_low_var_kl_clamped_and_unknown():
    # d = -30 -> -d clamped to 20 -> exp(20) - 20 - 1 clamped to 10
    assert ca.compute_kl(torch.tensor([[-30.0]]), torch.tensor([[0.0]]), "low_var_kl").item() == 10.0
    with pytest.raises(ValueError, match="low_var_kl"):
        ca.compute_kl(torch.zeros(1, 1), torch.zeros(1, 1), "full")


def test_apply_kl_penalty():
    # k1 = .1 everywhere, coef .5 -> subtract .05 on valid tokens
    scores = torch.tensor([[0.0, 0, 1], [0, 1, 0]])
    mask = torch.tensor([[1.0, 1, 1], [1, 1, 0]])
    lp = torch.full((2, 3), -1.0)
    ref = lp - 0.1
    rewards, m = ca.apply_kl_penalty(scores, lp, ref, mask, kl_coef=0.5, kl_penalty="kl")
    assert rewards.tolist() == [A([-0.05, -0.05, 0.95]), A([-0.05, 0.95, 0.0])]
    assert m["kl"] == A(0.1) and m["kl_coef"] == 0.5


def test_kl_controllers():
    fixed = ca.FixedKLController(0.1)
    fixed.update(5.0, 10)
    assert fixed.value == 0.1
    ctl = ca.AdaptiveKLController(init_kl_coef=0.1, target_kl=1.0, horizon=10)
    ctl.update(current_kl=1.5, n_steps=5)  # error clip(.5) = .2 -> x(1 + .2*5/10) = 1.1 -> .11
    assert ctl.value == A(0.11)
    ctl.update(current_kl=0.0, n_steps=10)  # error clip(-1) = -.2 -> x .8 -> .088
    assert ctl.value == A(0.088)


# ------------------------------------------------------------------------------------------------ misc


def test_entropy_and_masked_stats():
    # [0,0] -> ln 2 ; [0, ln 3] -> p=[.25,.75] -> .25*ln4 + .75*ln(4/3) = .562335
    logits = torch.tensor([[[0.0, 0.0], [0.0, math.log(3)]]])
    assert ca.compute_entropy_from_logits(logits)[0].tolist() == A([math.log(2), 0.562335], abs=1e-5)
    v = torch.tensor([[1.0, 2, 3], [4, 100, 100]])
    mask = torch.tensor([[1.0, 1, 1], [1, 0, 0]])
    assert ca.masked_mean(v, mask).item() == A(2.5)  # (1+2+3+4)/4
    assert ca.masked_mean(v, mask, dim=-1).tolist() == A([2.0, 4.0])
    # whiten [1,2,3,4]: mean 2.5, unbiased var 5/3
    w = ca.masked_whiten(v, mask)
    assert w[0].tolist() == A([(x - 2.5) / math.sqrt(5 / 3) for x in (1, 2, 3)], abs=1e-5)


def test_group_signal_share_counts_groups_whose_rewards_differ():
    # groups: a = [1, 1] (no signal), b = [0, 0.5] (signal), c = [0.3] (singleton: no signal),
    # d = [0, 0, 1e-9] (below tol)
    scores = [1.0, 1.0, 0.0, 0.5, 0.3, 0.0, 0.0, 1e-9]
    index = np.array(["a", "a", "b", "b", "c", "d", "d", "d"], dtype=object)
    assert ca.group_signal_share(scores, index) == pytest.approx(1 / 4)
    assert ca.group_signal_share(torch.tensor([0.0, 1.0, 1.0, 1.0]), [0, 0, 1, 1]) == pytest.approx(0.5)
    assert ca.group_signal_share([], []) == 0.0
    with pytest.raises(ValueError, match="index has 1 entries"):
        ca.group_signal_share([0.0, 1.0], ["a"])
