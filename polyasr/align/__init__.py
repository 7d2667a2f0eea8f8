"""Forced alignment: audio (and optionally its transcript) to timed sentences with word
times. No FastAPI in here; ``polyasr_align`` at the top of the repository is its public
face.
"""
