"""Stacked trials: many small networks trained at once as one wide network.

model    the members' parameters in one flat buffer: forward, losses, gradients
optim    torch.optim's rules with a hyperparameter per member; each member's LR schedule
trainer  run_stack(groups): the loop, per-member metrics, pruning and divergence per group
"""
