"""The scoring core: reward models over shared scoring strategies.

- ``reward_model``: the ``RewardModel`` interface the server uses (torch-free), and the work units it plans.
- ``core``: what every strategy needs (the models' sides: backbone, reader, context; device; budget).
- ``padded``, ``prefix``, ``packing``: the strategies (right-padded batches, a group's prompt run once,
  packed rows without padding); ``strategies`` chooses one per model and plans a batch as one forward plan.
- ``engine``: the implicit reward model (policy and reference log-probs, full or LoRA mode);
  ``classifier``: a sequence-classification reward model with a one-logit head.
- ``logprobs``: pure tensor math; ``templating``: which tokens are scored; ``batching``: pure planning.
- ``loading``: loads models named by folder or hub id and checks that a pair fits together.
"""
