"""The two engines, the only code that knows MLX or torch: ``mlx`` (mlx-qwen3-asr and
mlx-audio) and ``cuda`` (qwen-asr, with its fast static-cache decode loop). Only the
entry points (``server.py``, ``cuda/server.py``) pick one.
"""
