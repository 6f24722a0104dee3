"""Training data: CALVIN-layout splits (ours and the real CALVIN) read through one reader.

- ``config.DataConfig``: paths, window/act_steps, image handling, augmentation, loader settings.
- ``dataset``: ``CalvinDataset`` (one sample per window, shapes in its module docstring),
  ``collate``, ``WindowSampler``, ``make_dataloader``, ``compute_normalization``.
- ``layout``: the on-disk format and its validation (``validate_split``, ``DatasetError``).
- ``packed`` / ``pack``: the memory-mapped shard format and ``roboflamingo pack``.
- ``synthetic``: tiny CALVIN-layout datasets for tests and benchmarks.

Submodules are imported explicitly (``from roboflamingo.data.dataset import CalvinDataset``) so that
``roboflamingo pack`` and the validators do not pull in torch.
"""
