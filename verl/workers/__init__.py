"""Workers: actor, critic, rollout, reference and reward."""
