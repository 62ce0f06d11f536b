"""Proximal Policy Optimization (Schulman et al., 2017) on vectorized Mario emulators.

Read it like CleanRL's ppo_atari.py: the config, then `gae`, then `ppo_loss`, then
`PPO`: set up (device, envs, network, demonstration starts: ppo_setup.py), then in
`updates()` collect `num_steps` steps from every env with one batched forward pass
per step, compute advantages with GAE, run a few epochs of minibatch updates on the
clipped objective, and log. The loop around it, checkpoints, resume, plots and
videos are the shared ones in training.py, as for DDQN.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from mario_rl.agents.ppo_setup import (
    DemoStarts,
    Rollout,
    behaviour_clone,
    demo_data,
    learner_device,
    make_envs,
    use_bf16,
    warm_start,
)
from mario_rl.bc import FlagMemory, sil_loss
from mario_rl.checkpoint import load_optimizer, optimizer_state, prefixed, set_torch_rng, torch_rng_tensors, unprefixed
from mario_rl.envs import Preprocessing, finished_episodes
from mario_rl.errors import UserError
from mario_rl.nets import ActorCritic
from mario_rl.policy import save_policy
from mario_rl.training import Run, TrainConfig


@dataclass
class PPOConfig(TrainConfig):
    """PPO with CleanRL's Atari settings, adjusted for Mario where noted."""

    actions: str = "simple"
    """action set: right, right_only, simple or complex"""
    envs: int = 16
    """parallel emulators (grouped into one process per core when they divide evenly)"""
    num_steps: int = 128
    """steps per env in each rollout"""
    frame_skip: int = 4
    """emulator frames per decision (2: twice as many decisions, for late jumps; it must divide 16, the
    spacing of the demonstration's start states)"""
    crop_top: int = 0
    """rows cut off the top of the screen before resizing (32: the score bar, which changes every frame
    and says nothing about where to go; 0: the whole screen)"""
    env_parts: int = 0
    """the envs step in this many parts, in turns, so the learner's forward pass overlaps emulation
    (0: two when --envs is even and at least 4, else one; docs/performance.md)"""
    lr: float = 2.5e-4
    """Adam learning rate, annealed linearly to 0 when --anneal-lr"""
    anneal_lr: bool = True
    """anneal the learning rate linearly over the run"""
    gamma: float = 0.99
    """discount factor (with --reward-scale 0.01; the tutorial's 0.9 values a wait of 10 steps below a fall:
    docs/experiments.md)"""
    gae_lambda: float = 0.95
    """lambda of generalized advantage estimation"""
    num_minibatches: int = 4
    """minibatches per epoch"""
    update_epochs: int = 4
    """epochs over each rollout"""
    clip_coef: float = 0.1
    """the surrogate clipping coefficient"""
    clip_vloss: bool = True
    """clip the value loss too"""
    ent_coef: float = 0.01
    """entropy bonus coefficient"""
    ent_coef_final: float | None = None
    """None: --ent-coef throughout; else the coefficient decays linearly from --ent-coef to this at --steps"""
    target_kl: float | None = None
    """None: every epoch runs; else an update stops after the epoch whose mean approximate KL to the
    rollout's policy exceeds this"""
    vf_coef: float = 0.5
    """value loss coefficient"""
    max_grad_norm: float = 0.5
    """gradient clipping norm"""
    reward_scale: float = 0.01
    """rewards are multiplied by this (a 4-frame step can earn up to 60; 0.05 suits --gamma 0.9)"""
    micro_batch: int = 128
    """samples per forward/backward pass; a minibatch's gradient is summed over them (same update, less time)"""
    precision: str = "auto"
    """the convolutions' arithmetic: fp32, bf16 (autocast; weights, optimizer and heads stay float32) or auto
    (bf16 where the CPU computes bfloat16 natively, else fp32; docs/performance.md)"""
    demo: Path | None = None
    """a demonstration (mario-rl explore's demo.json): start episodes along it, moving back as the agent learns"""
    demo_order: str = "backward"
    """backward (near the flag first, moving back as the agent clears), uniform (anywhere along the
    demonstration) or prioritized (anywhere, more often where it clears only sometimes); docs/design.md"""
    demo_back: int = 8
    """demonstration start states (16 frames apart) the start moves back each time"""
    demo_behind: float = 0.3
    """share of the demonstration starts drawn from anywhere after the current ones (the stretches
    already learned), the rest from the current ones; 0 is Salimans and Chen's"""
    demo_retry: float = 0.25
    """share of the non-reset starts taken from the agent's own states shortly before its recent deaths
    (envs.DemoStart); 0: never"""
    demo_success: float = 0.2
    """clear rate from the current starts that moves them back (backward order)"""
    demo_stall: int = 0
    """episodes from the current starts, none from the earliest of them a clear, after which the starts
    move forward again by --demo-back (backward order; 0: never)"""
    bc_epochs: int = 0
    """epochs of behaviour cloning on the demonstration before the first PPO update (mario_rl.bc; a new run
    only); 0: PPO from a random network"""
    bc_passes: int = 2
    """perturbed passes along the demonstration in the cloning data (mario_rl.bc.demo_dataset)"""
    sil_coef: float = 0.0
    """weight of self-imitation (Oh et al. 2018) of the demonstration: after each update's PPO epochs,
    --sil-updates steps on the demonstration's samples whose return beats the value (mario_rl.bc.sil_loss);
    0: off"""
    sil_updates: int = 4
    """self-imitation gradient steps per update (with --sil-coef)"""
    sil_batch: int = 256
    """samples per self-imitation step"""
    sil_own: bool = False
    """self-imitation also draws from the agent's own episodes that reached the flag (mario_rl.bc.FlagMemory),
    as Oh et al. do; not kept in checkpoints: a resumed run starts with an empty memory"""
    sil_memory: int = 8192
    """how many of the newest samples of those episodes self-imitation keeps (--sil-own; about 28 KB each)"""
    bootstrap_truncated: bool = True
    """a truncated episode (DemoStart's frame budget) is not a death: its last reward gets gamma x the value of
    its final observation, instead of the zero that ending the episode there would give"""
    device: str = "cpu"
    """where the learner runs: cpu, cuda, or auto (cuda when PyTorch sees a GPU); the emulators run on the CPU"""
    init_policy: Path | None = None
    """a policy file (same network and action set) whose weights a new run starts from: a warm start from
    another stage's policy (mario-rl campaign); ignored on resume"""

    def validate(self) -> None:
        super().validate()
        for name in ("envs", "num_steps", "num_minibatches", "update_epochs", "micro_batch"):
            if getattr(self, name) <= 0:
                raise UserError(f"--{name.replace('_', '-')} must be positive, got {getattr(self, name)}")
        if self.frame_skip <= 0 or 16 % self.frame_skip:
            raise UserError(f"--frame-skip must divide 16 (1, 2, 4, 8 or 16), got {self.frame_skip}")
        self.preprocessing()  # checks --crop-top
        if self.env_parts < 0 or self.env_parts and self.envs % self.env_parts:
            raise UserError(f"--env-parts must divide --envs ({self.envs}), got {self.env_parts}")
        if (self.envs * self.num_steps) % self.num_minibatches:
            raise UserError("--envs x --num-steps must be divisible by --num-minibatches")
        if self.lr <= 0:
            raise UserError(f"--lr must be positive, got {self.lr}")
        if self.ent_coef < 0 or (self.ent_coef_final is not None and self.ent_coef_final < 0):
            raise UserError("--ent-coef and --ent-coef-final must be at least 0")
        if self.target_kl is not None and not self.target_kl > 0:
            raise UserError(f"--target-kl must be positive, got {self.target_kl}")
        if not 0 < self.gamma <= 1 or not 0 <= self.gae_lambda <= 1 or self.reward_scale <= 0:
            raise UserError("--gamma must be in (0, 1], --gae-lambda in [0, 1] and --reward-scale positive")
        if self.demo_stall < 0:
            raise UserError(f"--demo-stall must be >= 0, got {self.demo_stall}")
        if self.demo_back <= 0 or not 0 < self.demo_success <= 1 or not 0 <= self.demo_behind <= 1:
            raise UserError("--demo-back must be positive, --demo-success in (0, 1] and --demo-behind in [0, 1]")
        if self.bc_epochs < 0 or self.bc_passes < 0:
            raise UserError("--bc-epochs and --bc-passes must be at least 0")
        if self.bc_epochs and self.demo is None:
            raise UserError("--bc-epochs clones a demonstration: give one with --demo")
        if self.sil_coef < 0 or self.sil_updates <= 0 or self.sil_batch <= 0 or self.sil_memory <= 0:
            raise UserError("--sil-coef must be at least 0, --sil-updates, --sil-batch and --sil-memory positive")
        if self.sil_coef and self.demo is None and not self.sil_own:
            raise UserError("--sil-coef imitates a demonstration: give one with --demo (or add --sil-own)")
        if self.sil_own and not self.sil_coef:
            raise UserError("--sil-own is a source for self-imitation: give --sil-coef too")
        if not 0 <= self.demo_retry <= 1:
            raise UserError(f"--demo-retry must be in [0, 1], got {self.demo_retry}")
        if self.device not in ("auto", "cpu", "cuda"):
            raise UserError(f"--device must be auto, cpu or cuda, got {self.device!r}")
        if self.precision not in ("auto", "bf16", "fp32"):
            raise UserError(f"--precision must be auto, bf16 or fp32, got {self.precision!r}")
        if self.demo_order not in DEMO_ORDERS:
            raise UserError(f"--demo-order must be one of {', '.join(DEMO_ORDERS)}, got {self.demo_order!r}")

    def preprocessing(self) -> Preprocessing:
        """What the run's policy sees and does."""
        return Preprocessing(self.actions, frame_skip=self.frame_skip, crop_top=self.crop_top)


DEMO_ORDERS = ("backward", "uniform", "prioritized")


def truncation_bonus(
    terminated: np.ndarray, truncated: np.ndarray, final_values: torch.Tensor, gamma: float
) -> torch.Tensor:
    """What to add to the last rewards of envs whose episode ended: gamma x V(final observation) where it was
    truncated and not terminated (Mario still alive when the episode was cut), 0 elsewhere. GAE treats every
    end as terminal, so without this the value target of a living Mario is cut to zero there."""
    alive = torch.from_numpy(np.asarray(truncated & ~terminated, dtype=bool))
    return torch.where(alive, gamma * final_values, torch.zeros_like(final_values))


def gae(
    rewards: torch.Tensor,
    values: torch.Tensor,
    dones: torch.Tensor,
    next_value: torch.Tensor,
    next_done: torch.Tensor,
    gamma: float,
    lam: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalized advantage estimation over a (T, N) rollout; returns (advantages, returns).

    dones[t] says the observation at step t began a new episode (the previous one
    terminated), so nothing is bootstrapped across it.
    """
    T = rewards.shape[0]
    advantages = torch.zeros_like(rewards)
    last = torch.zeros_like(next_value)
    for t in reversed(range(T)):
        if t == T - 1:
            not_done, v_next = 1.0 - next_done, next_value
        else:
            not_done, v_next = 1.0 - dones[t + 1], values[t + 1]
        delta = rewards[t] + gamma * v_next * not_done - values[t]
        last = delta + gamma * lam * not_done * last
        advantages[t] = last
    return advantages, advantages + values


def ppo_loss(
    new_logprob: torch.Tensor, old_logprob: torch.Tensor, advantages: torch.Tensor, clip_coef: float
) -> torch.Tensor:
    """The clipped surrogate objective, as a loss: mean of max(-A r, -A clip(r, 1-e, 1+e))."""
    ratio = (new_logprob - old_logprob).exp()
    return torch.max(-advantages * ratio, -advantages * ratio.clamp(1 - clip_coef, 1 + clip_coef)).mean()


def minibatch_backward(
    agent: nn.Module,
    cfg: PPOConfig,
    obs: torch.Tensor,
    actions: torch.Tensor,
    old_logprob: torch.Tensor,
    old_value: torch.Tensor,
    returns: torch.Tensor,
    adv: torch.Tensor,
    bf16: bool = False,
    ent_coef: float | None = None,
) -> torch.Tensor:
    """Backpropagate one minibatch's PPO loss; return its [policy loss, value loss, entropy, clip fraction,
    approximate KL]. `ent_coef` (None: cfg.ent_coef) is the entropy coefficient of this update.

    The gradient is summed over micro-batches of `cfg.micro_batch` samples, each
    weighted by its share of the minibatch: the same gradient as one pass (a test
    checks it), but convolutions on a CPU run about 30% faster per sample in chunks
    of 64-128 than in one pass of 512, because the chunks stay in cache.
    """
    parts = torch.zeros(5, device=obs.device)
    ent_coef = cfg.ent_coef if ent_coef is None else ent_coef
    micro = cfg.micro_batch if obs.device.type == "cpu" else len(obs)
    for lo in range(0, len(obs), micro):
        n = min(micro, len(obs) - lo)
        chunk = slice(lo, lo + n)  # a slice, not an index tensor: no gather, no copy
        # Channels-last frames: oneDNN's convolutions run the forward and backward pass of a
        # 2,048-sample epoch about 20% faster on this CPU than on NCHW frames (the weights stay NCHW).
        # train() stores the rollout channels-last once, so this is no copy there.
        logits, value = agent(obs[chunk].contiguous(memory_format=torch.channels_last), bf16=bf16)
        # Categorical's log_prob and entropy, written out: torch.distributions checks its
        # arguments on every call, which costs more than the arithmetic at these sizes.
        logp = logits.log_softmax(1)
        logprob = logp.gather(1, actions[chunk, None])[:, 0]
        pg_loss = ppo_loss(logprob, old_logprob[chunk], adv[chunk], cfg.clip_coef)
        if cfg.clip_vloss:
            clipped = old_value[chunk] + (value - old_value[chunk]).clamp(-cfg.clip_coef, cfg.clip_coef)
            v_loss = 0.5 * torch.max((value - returns[chunk]) ** 2, (clipped - returns[chunk]) ** 2).mean()
        else:
            v_loss = 0.5 * ((value - returns[chunk]) ** 2).mean()
        entropy = -(logp.exp() * logp).sum(1).mean()
        share = n / len(obs)  # micro-batch means, weighted into the minibatch's mean
        (share * (pg_loss - ent_coef * entropy + cfg.vf_coef * v_loss)).backward()
        with torch.no_grad():
            log_ratio = logprob - old_logprob[chunk]
            clipfrac = (log_ratio.exp().sub(1).abs() > cfg.clip_coef).float().mean()
            approx_kl = (log_ratio.exp() - 1 - log_ratio).mean()  # Schulman's unbiased, always >= 0 estimator
            parts += share * torch.stack([pg_loss, v_loss, entropy, clipfrac, approx_kl])
    return parts


class PPO:
    """A PPO run as the shared loop drives it (training.Learner): envs, network, optimizer and rollout."""

    def __init__(self, cfg: PPOConfig, run: Run):
        self.cfg, self.run = cfg, run
        torch.manual_seed(cfg.seed)
        torch.set_flush_denormal(True)  # tiny gradients late in training otherwise slow the CPU down
        self.pre = cfg.preprocessing()
        self.dev = learner_device(cfg.device)
        self.bf16 = use_bf16(cfg.precision, self.dev)
        self.starts = DemoStarts(cfg, run) if cfg.demo is not None else None
        self.envs = envs = make_envs(cfg, self.pre, self.starts.demo if self.starts is not None else None)
        # Each part of the envs is stepped asynchronously (make_vec_env's parts); a plain vector env is one part.
        self.env_parts = getattr(envs, "parts", (slice(0, cfg.envs),))
        self.send = getattr(envs, "step_part_async", lambda p, a: envs.step_async(a))
        self.receive = getattr(envs, "step_part_wait", lambda p: envs.step_wait())
        n_actions, pre = int(envs.single_action_space.n), self.pre
        self.net_kwargs = {"in_channels": pre.frame_stack, "n_actions": n_actions, "frame_size": pre.frame_size}
        self.agent = ActorCritic(**self.net_kwargs).to(self.dev)
        self.optimizer = torch.optim.Adam(self.agent.parameters(), lr=cfg.lr, eps=1e-5)
        self.batch_size = cfg.envs * cfg.num_steps
        self.step = run.start_step
        print(
            f"learner on {self.dev}, convolutions in {'bfloat16' if self.bf16 else 'float32'} "
            f"(--precision {cfg.precision})",
            flush=True,
        )
        clone = cfg.bc_epochs > 0 and run.resumed_state is None
        # The demonstration's samples (a replay and perturbed passes: seconds to minutes), built once for both.
        data = demo_data(self.starts.demo, cfg) if self.starts is not None and (cfg.sil_coef or clone) else None
        if run.resumed_state is not None:
            self.load(*run.resumed_state)
        elif cfg.init_policy is not None:
            warm_start(self.agent, Path(cfg.init_policy), self.pre)
        if clone:
            behaviour_clone(self.agent, data, cfg, run)
        self.sil_data = data if cfg.sil_coef else None
        self.flag_memory = FlagMemory(cfg.envs, cfg.sil_memory, cfg.gamma) if cfg.sil_own else None

        self.rollout = Rollout.zeros(cfg.num_steps, cfg.envs, envs.single_observation_space.shape)
        self.reset_flags = deque(maxlen=20)  # clears of the latest episodes that began at a real reset
        if self.starts is not None:
            self.starts.apply(envs)
        next_obs, _ = envs.reset(seed=run.episode_seed())
        self.next_obs, self.next_done = torch.from_numpy(next_obs), torch.zeros(cfg.envs)
        # One torch thread while the emulators run: after each batched inference, idle OpenMP threads
        # spin on the cores the emulator processes need (docs/performance.md). The update, with the
        # emulators idle, uses every thread.
        self.update_threads = torch.get_num_threads()

    def annealed_lr(self, step: int) -> float:
        return self.cfg.lr * max(0.0, 1.0 - step / self.cfg.steps)

    def ent_coef(self, step: int) -> float:
        """The entropy coefficient at `step`: --ent-coef, decaying linearly to --ent-coef-final at --steps."""
        cfg = self.cfg
        if cfg.ent_coef_final is None:
            return cfg.ent_coef
        return cfg.ent_coef + (cfg.ent_coef_final - cfg.ent_coef) * min(1.0, step / cfg.steps)

    def updates(self) -> Iterator[int]:
        """Collect a rollout, update on it, log; one yield per update."""
        cfg = self.cfg
        while self.step < cfg.steps:
            if cfg.anneal_lr:
                self.optimizer.param_groups[0]["lr"] = self.annealed_lr(self.step)
            torch.set_num_threads(1)
            if self.collect():  # every part is idle now, as a call to the envs needs (priorities: new clear rates)
                self.starts.apply(self.envs)
            with torch.no_grad():
                next_value = self.agent(self.next_obs.to(self.dev), bf16=self.bf16)[1].cpu()
            torch.set_num_threads(self.update_threads)
            self.log(self.update(next_value))
            yield self.step

    def collect(self) -> bool:
        """Fill the rollout: `num_steps` steps of every env. Returns whether the demonstration starts should move."""
        cfg, r, agent = self.cfg, self.rollout, self.agent
        move_starts = False
        # Step t of each part: collect its step t-1 (sent a part ago: it ran while the learner
        # worked on the other parts), pick its actions, send them, go on to the next part.
        for t in range(cfg.num_steps + 1):
            for p, part in enumerate(self.env_parts):
                if t > 0:
                    obs, reward, terminated, truncated, info = self.receive(p)
                    r.rewards[t - 1, part] = torch.from_numpy(np.asarray(reward, np.float32)) * cfg.reward_scale
                    self.next_obs[part] = torch.from_numpy(obs)
                    # Truncation (the game clock) is rare here; treating it as an end keeps GAE simple.
                    self.next_done[part] = torch.from_numpy((terminated | truncated).astype(np.float32))
                    if cfg.bootstrap_truncated and (truncated & ~terminated).any():
                        final = (
                            np.stack([o if o is not None else obs[i] for i, o in enumerate(info["final_obs"])])
                            if "final_obs" in info
                            else obs
                        )
                        with torch.no_grad():
                            v = agent(torch.from_numpy(final).to(self.dev), bf16=self.bf16)[1].float().cpu()
                        r.rewards[t - 1, part] += truncation_bonus(terminated, truncated, v, cfg.gamma)
                    self.step += len(obs)
                    move_starts |= self.record_episodes(info)
                    if self.flag_memory is not None:
                        flags = np.zeros(len(obs), bool)
                        for i, ep in finished_episodes(info):
                            flags[i] = bool(ep["flag"])
                        scaled = np.asarray(reward, np.float32) * cfg.reward_scale
                        self.flag_memory.stepped(range(cfg.envs)[part], scaled, terminated | truncated, flags)
                if t == cfg.num_steps:
                    continue
                r.obs[t, part], r.dones[t, part] = self.next_obs[part], self.next_done[part]
                with torch.no_grad():
                    logits, value = agent(self.next_obs[part].to(self.dev), bf16=self.bf16)
                    logp = logits.log_softmax(1).cpu()
                    value = value.cpu()
                    action = torch.multinomial(logp.exp(), 1)[:, 0]
                r.actions[t, part], r.values[t, part] = action, value
                r.logprobs[t, part] = logp.gather(1, action[:, None])[:, 0]
                if self.flag_memory is not None:
                    self.flag_memory.acted(range(cfg.envs)[part], self.next_obs[part], action)
                self.send(p, action.numpy())
        return move_starts

    def record_episodes(self, info: dict) -> bool:
        """Log the episodes that just ended; returns whether the demonstration starts should move."""
        move_starts = False
        for _, ep in finished_episodes(info):
            start, flag = int(ep["start"]), int(ep["flag"])
            values = {"return": round(float(ep["r"]), 3), "length": int(ep["l"]), "x": int(ep["x"])}
            self.run.log_episode(self.step, **values, flag=flag, start=start)
            if start == 0:
                self.reset_flags.append(flag)
            if self.starts is not None:
                move_starts |= self.starts.record(start, bool(ep["flag"]))
        return move_starts

    def update(self, next_value: torch.Tensor) -> dict:
        """GAE over the rollout, then `update_epochs` epochs of minibatch steps; returns the losses."""
        cfg, r, dev = self.cfg, self.rollout, self.dev
        advantages, returns = gae(r.rewards, r.values, r.dones, next_value, self.next_done, cfg.gamma, cfg.gae_lambda)
        # Channels-last once per update rather than once per micro-batch and epoch: indexing a
        # channels-last tensor keeps its layout. With slices for micro-batches, the profile's
        # index and copy time in an update fell from about 12% to 6%.
        b_obs = r.obs.reshape(-1, *r.obs.shape[2:]).to(dev).contiguous(memory_format=torch.channels_last)
        b_actions, b_logprobs = r.actions.reshape(-1).to(dev), r.logprobs.reshape(-1).to(dev)
        b_adv, b_ret, b_val = (t.reshape(-1).to(dev) for t in (advantages, returns, r.values))
        clipfracs, kls, ent_coef, epochs = [], [], self.ent_coef(self.step), 0
        while epochs < cfg.update_epochs:
            epochs += 1
            for mb in torch.randperm(self.batch_size, device=dev).split(self.batch_size // cfg.num_minibatches):
                adv = b_adv[mb]
                adv = (adv - adv.mean()) / (adv.std() + 1e-8)  # normalized over the whole minibatch
                self.optimizer.zero_grad(set_to_none=True)
                parts = minibatch_backward(
                    self.agent,
                    cfg,
                    b_obs[mb],
                    b_actions[mb],
                    b_logprobs[mb],
                    b_val[mb],
                    b_ret[mb],
                    adv,
                    bf16=self.bf16,
                    ent_coef=ent_coef,
                )
                nn.utils.clip_grad_norm_(self.agent.parameters(), cfg.max_grad_norm)
                self.optimizer.step()
                clipfracs.append(parts[3].item())
                kls.append(parts[4].item())
            # CleanRL's early stop, after whole epochs: every sample of the rollout is used equally often.
            if cfg.target_kl is not None and np.mean(kls[-cfg.num_minibatches :]) > cfg.target_kl:
                break
        pg_loss, v_loss, entropy = parts[:3]
        return self.self_imitate() | {
            "policy_loss": pg_loss.item(),
            "value_loss": v_loss.item(),
            "entropy": entropy.item(),
            "clipfrac": float(np.mean(clipfracs)),
            "approx_kl": float(np.mean(kls[-cfg.num_minibatches :])),
            "epochs": epochs,
            "ent_coef": ent_coef,
            "lr": self.optimizer.param_groups[0]["lr"],
        }

    def self_imitate(self) -> dict:
        """--sil-coef: self-imitation steps (mario_rl.bc.sil_loss) on samples drawn evenly from the
        demonstration's and, with --sil-own, the agent's own flag episodes."""
        cfg, data, own = self.cfg, self.sil_data, self.flag_memory
        n_demo = 0 if data is None else len(data.actions)
        n_own = 0 if own is None else own.size
        if not cfg.sil_coef or n_demo + n_own == 0:
            return {}
        sums = torch.zeros(2)
        # the same draws after a resume (of the demonstration's samples; --sil-own's memory starts empty then)
        rng = torch.Generator().manual_seed(cfg.seed * 1_000_003 + self.step)
        for _ in range(cfg.sil_updates):
            idx = torch.randint(n_demo + n_own, (min(cfg.sil_batch, n_demo + n_own),), generator=rng)
            d, o = idx[idx < n_demo], idx[idx >= n_demo] - n_demo
            parts = ([(data.obs[d], data.actions[d], data.returns[d])] if len(d) else []) + (
                [(own.obs[o], own.act[o], own.ret[o])] if len(o) else []
            )
            obs, actions, returns = (torch.cat(x) for x in zip(*parts))
            loss, active = sil_loss(
                self.agent, obs.to(self.dev), actions.to(self.dev), returns.to(self.dev), bf16=self.bf16
            )
            self.optimizer.zero_grad(set_to_none=True)
            (cfg.sil_coef * loss).backward()
            nn.utils.clip_grad_norm_(self.agent.parameters(), cfg.max_grad_norm)
            self.optimizer.step()
            sums += torch.stack([loss.detach().cpu(), active.cpu()])
        stats = {"sil_loss": float(sums[0]) / cfg.sil_updates, "sil_active": float(sums[1]) / cfg.sil_updates}
        if own is not None:
            stats |= {"sil_own_samples": n_own, "sil_own_episodes": own.episodes}
        return stats

    def log(self, stats: dict) -> None:
        run, step = self.run, self.step
        run.log_scalars(step, "losses", **stats)
        run.log_scalars(step, "charts", SPS=run.progress.sps)
        demo_status = {}
        if self.starts is not None:
            flags = self.reset_flags
            demo_status = {"start": self.starts.status(), "clears from reset": f"{sum(flags)}/{len(flags)}"}
            if self.starts.curriculum is not None:
                run.log_scalars(step, "charts", demo_start_frame=self.starts.curriculum.start_frame)
        run.tick(step, episodes=run.episode, loss=stats["value_loss"], entropy=stats["entropy"], **demo_status)

    def status(self) -> dict:
        """What `train`'s after_update sees."""
        return {
            "reset_flags": list(self.reset_flags),
            "demo_done": self.starts is None or self.starts.done,
            "save_policy": lambda: self.save_policy(self.step),
        }

    # --- checkpoints, policies (training.Learner) ---

    def state(self) -> tuple[dict, dict]:
        tensors = prefixed("agent", self.agent.state_dict()) | torch_rng_tensors()
        optim = optimizer_state(self.optimizer, tensors, bf16_moments=True)
        return tensors, {"optim": optim, "curriculum": self.starts.state() if self.starts is not None else None}

    def load(self, tensors: dict, state: dict) -> None:
        self.agent.load_state_dict(unprefixed("agent", tensors))
        load_optimizer(self.optimizer, state["optim"], tensors)
        set_torch_rng(tensors)
        if self.starts is not None:
            self.starts.load(state["curriculum"])
        print(f"resumed {self.run.dir} at step {self.step:,} (episode {self.run.episode})", flush=True)
        if self.cfg.anneal_lr:
            # The decay's end is --steps, so a new total moves the learning rate at once. Said aloud
            # because it matters: 1-2 resumed at 3.45M steps with 6M instead of 4M went from 3.4e-5
            # to 1.1e-4; its clears from a real reset were 0.30, 0.33 and 0.41 per 100k steps from 3.5M
            # to 3.8M, against 0.40, 0.40 and 0.49 for the same blocks at 4.9e-5 (one run each).
            was, now = self.optimizer.param_groups[0]["lr"], self.annealed_lr(self.step)
            print(f"learning rate {was:.2e} -> {now:.2e} (linear to 0 at --steps {self.cfg.steps:,})", flush=True)

    def save_policy(self, step: int) -> Path:
        # It acts as it trained, drawing from its distribution: the clear rates seen in training are
        # those of the sampling policy, and an argmax of a still-broad distribution can stall.
        save_policy(
            self.run.policy_path,
            self.agent,
            algorithm="ppo",
            network="ActorCritic",
            network_kwargs=self.net_kwargs,
            preprocessing=self.pre,
            stage=self.cfg.stage,
            steps=step,
            extra={"act": "sample"},
        )
        return self.run.policy_path

    @torch.no_grad()
    def greedy(self, obs: np.ndarray) -> int:
        return int(self.agent(torch.from_numpy(np.asarray(obs))[None].to(self.dev))[0].argmax(1).item())

    def close(self) -> None:
        torch.set_num_threads(self.update_threads)
        self.envs.close()


def train(cfg: PPOConfig, after_update: Callable[[int, dict], bool | None] | None = None) -> Run:
    """Train PPO on one stage; resumable; returns the finished Run.

    `after_update(step, status)`, if given, is called after every update; training stops
    early when it returns True. status: "reset_flags" (clears of the latest episodes that
    began at a real reset), "demo_done" (the demonstration curriculum has reached the
    start, or there is none) and "save_policy" (writes the current policy file, returns
    its path). The benchmark times the loop with it; `mario-rl solve` evaluates with it.
    """
    cfg.algo = "ppo"
    run = Run(cfg)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    ppo = PPO(cfg, run)
    run.loop(ppo, stop=None if after_update is None else lambda step: after_update(step, ppo.status()))
    return run
