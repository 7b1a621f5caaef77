"""The trainer: everything that learns the rewrite policy, in layers that import downwards only.

    cli/         ``ospo train|eval|simulate|propensity|replay|worker|beat`` (the ``ospo.cli``
                 entry points the service's CLI loads)
    online/      the online loop: interaction labels, the Celery worker and its tasks, one
                 update (labels → train → gate → promote), explain, log replay
    simulation/  simulated shoppers that search and click over HTTP
    training/    one training run: config, data, rollouts, reward, the OSPO/GRPO step, the warm
                 start, the ``train`` driver, offline evaluation
    method/      OSPO itself: players, Shapley/Owen credit, token advantages and the loss

``online`` and ``simulation`` are independent of each other. pyproject.toml's import-linter
contracts hold this order, and that ``service`` never imports the trainer.
"""
