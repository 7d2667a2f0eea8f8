"""Foundations every layer agrees on: settings, constants, the engine seam, languages, text
joining and the weights check. Nothing here imports another polyasr package.
"""
