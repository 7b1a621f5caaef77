"""The online loop: shoppers' interactions become labels, labels become a promoted adapter.

Owns position-debiased relevance from logged interactions (``propensity``,
``interaction_labels``), batch replay of historical logs (``replay``), the Celery application
and its tasks, registered under the names the API enqueues (``celery_app``, ``tasks``), one
online update: labels → train → gate → promote or compare (``update``, ``gate``), and the
per-phrase explanation the admin API asks a worker for (``explain``).

May import: ``trainer.training``, ``trainer.method`` and ``service``. Not the simulation or the
CLI.
"""
