"""One training run of the rewrite policy's LoRA adapter, and its offline evaluation.

Owns what ``ospo train`` and the online update run: the run's configuration (``config``'s
``TrainConfig``, built from options by ``config_options``), training examples (``data``), the
policy model, index and device to run on (``resources``, ``device``), the base model with its
LoRA adapter (``policy``), rollouts sampled in process or by a vLLM server (``rollout``,
``served_rollouts``), the NDCG reward (``reward``), the warm start (``warmstart``), one OSPO/GRPO
step (``step``), the ``train`` driver (``train``), step timing (``phases``), the run's plan and
plots (``plan``, ``plots``), and offline evaluation of policies (``evaluate``).

May import: ``trainer.method`` and ``service`` (the serving retriever, prompt and policy client
the reward and rollouts share with serving). Not the online loop, the simulation or the CLI.
"""
