"""Post-training objectives: each a fused Rust op (forward + backward) that returns its loss as a
differentiable ``Tensor`` and, where there is something to log, a dict of plain floats (or detached
tensors)::

    import nanofrontier as nf
    loss, m = nf.rl.dpo_loss(pol_c, pol_r, ref_c, ref_r, beta=0.1)
    loss.backward()          # gradients reach pol_c and pol_r only
    m["margin"], m["accuracy"]

Per-pair inputs are (B,); per-token inputs are (B, T) with a 0/1 ``mask`` of the same shape. Only the
policy's own outputs get gradients: reference and old log-probs, advantages, returns and masks are read as
constants. Each function's docstring names the paper its variant comes from.

- reward model: ``reward_loss`` (Bradley–Terry, margin, reward centring)
- DPO: ``dpo_loss`` (sigmoid / cDPO, ipo, hinge)
- PPO: ``ppo_policy_loss``, ``ppo_value_loss``, ``gae``, ``kl_penalty`` (k1, k3), ``entropy_from_logits``,
  and the KL coefficient controllers ``AdaptiveKLController`` / ``FixedKLController``
- GRPO: ``grpo_advantages`` (group / batch / none), ``rloo_advantages``, ``grpo_loss`` (grpo, bnpo,
  dr_grpo, dapo; clip-higher; k3 KL)

Around them: ``pack`` and ``sequence_logprobs`` (right-padded prompt + completion rows and their
log-probs, :mod:`.sequences`), ``RewardModel`` / ``ValueModel`` (a scalar head on a model's trunk,
:mod:`.heads`), and ``Diagnostics`` / ``TrainingWarning`` (plain-word warnings for a run gone wrong,
:mod:`.diagnostics`), and the offline trainers ``SFTTrainer``, ``RewardTrainer``, ``DPOTrainer`` on
``nf.train.Trainer`` (:mod:`.trainers`); ``RayRollouts``: GRPO / PPO rollouts on Ray actors, the same
run as in-process (:mod:`.ray_rollouts`, ``pip install 'nanofrontier[ray]'``).
"""

from .._core import (
    dpo_loss,
    entropy_from_logits,
    gae,
    grpo_advantages,
    grpo_loss,
    kl_penalty,
    ppo_policy_loss,
    ppo_value_loss,
    reward_loss,
    rloo_advantages,
)
from . import diagnostics
from .diagnostics import Diagnostics, TrainingWarning
from .heads import RewardModel, ValueModel
from .kl_control import AdaptiveKLController, FixedKLController
from .sequences import Packed, pack, sequence_logprobs
from .trainers import DPOTrainer, RewardTrainer, SFTTrainer, ShuffledIndices

# online RL: rollouts and the two trainers that learn from them
from .grpo_trainer import GRPOTrainer
from .ppo_trainer import PPOTrainer
from .rollout import Rollout, rollout
from .ray_rollouts import RayRollouts  # imports Ray only when its workers start

# rule rewards (plain functions for GRPOTrainer)
from . import rewards
from .rewards import correctness_reward, countdown_reward, format_reward, lenient_format_reward

__all__ = [
    "AdaptiveKLController",
    "DPOTrainer",
    "Diagnostics",
    "FixedKLController",
    "GRPOTrainer",
    "PPOTrainer",
    "RayRollouts",
    "Rollout",
    "rollout",
    "Packed",
    "RewardModel",
    "RewardTrainer",
    "SFTTrainer",
    "ShuffledIndices",
    "TrainingWarning",
    "ValueModel",
    "diagnostics",
    "dpo_loss",
    "entropy_from_logits",
    "gae",
    "grpo_advantages",
    "grpo_loss",
    "kl_penalty",
    "pack",
    "ppo_policy_loss",
    "ppo_value_loss",
    "reward_loss",
    "rloo_advantages",
    "rewards",
    "correctness_reward",
    "countdown_reward",
    "format_reward",
    "lenient_format_reward",
    "sequence_logprobs",
]
