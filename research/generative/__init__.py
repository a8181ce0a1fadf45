"""Generative models and losses: DCGAN (``dcgan``) and neural style transfer (``style_transfer``).

Their runs are the tasks ``gan``, ``style_transfer`` and ``fast_style`` (``research/tasks/``).
"""
