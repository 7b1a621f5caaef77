"""The trainer's commands, added to the service's ``ospo`` app through the ``ospo.cli`` entry
points (pyproject.toml), so ``service`` never imports the trainer.

Owns ``ospo train`` and ``ospo eval`` (``training``), ``ospo simulate`` and ``ospo propensity``
(``simulate``), ``ospo replay`` (``replay``) and ``ospo worker`` / ``ospo beat`` (``workers``).
Each module's ``register(app)`` adds its commands.

May import: every other trainer package and ``service``; nothing imports it.
"""
