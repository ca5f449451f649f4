"""Measurement: timers, statistics, memory, FLOPs, peaks and the environment.

``stats``, ``flops`` and ``peaks`` are torch-free; the rest import torch.
"""
