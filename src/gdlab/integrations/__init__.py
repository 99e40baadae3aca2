"""Bridges to other tools, each behind an optional extra; importing gdlab imports none of them.

- :mod:`gdlab.integrations.tensorboard`: the run's history and findings as TensorBoard events
  (``pip install 'gdlab[tensorboard]'``);
- :mod:`gdlab.integrations.lightning`: ``Doctor``, a Lightning callback (``pip install 'gdlab[lightning]'``);
- :mod:`gdlab.integrations.transformers`: ``Doctor``, a Hugging Face ``TrainerCallback``
  (``pip install 'gdlab[transformers]'``).
"""
